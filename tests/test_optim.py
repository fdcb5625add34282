"""fastgrad.optim against torch.optim in float64 and against the published update formulas in plain Python:
100 training steps on a quadratic and on micrograd's moons MLP, every option; its argument checks, its
parameters, and state dicts that resume training bit for bit, in this process and in a fresh one."""
import copy
import gc
import math
import pickle
import random
import struct
import sys

import pytest

import fastgrad
import fastgrad.micrograd.nn as micrograd_nn
import fastgrad.nn
from fastgrad import Value, moons, optim
from support import run_python

# The same formulas, possibly rounded differently at a step or two: parameters agree within 1e-12 of
# themselves, or of 1 (the scale of the weights) for one that passes near 0 on its way.
REL = 1e-12

# (optimizer, options): every option of each optimizer, alone and together
CONFIGS = [
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.05, momentum=0.9)),
    ("SGD", dict(lr=0.05, momentum=0.9, dampening=0.3)),
    ("SGD", dict(lr=0.05, momentum=0.8, nesterov=True)),
    ("SGD", dict(lr=0.05, weight_decay=0.1)),
    ("SGD", dict(lr=0.05, momentum=0.9, dampening=0.1, weight_decay=0.01)),
    ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01)),
    ("Adam", dict()),
    ("Adam", dict(lr=0.02, betas=(0.8, 0.99), eps=1e-6)),
    ("Adam", dict(lr=0.02, weight_decay=0.1)),
    ("Adam", dict(lr=0.02, betas=(0.0, 0.5), eps=1e-3, weight_decay=0.01)),
    ("AdamW", dict()),
    ("AdamW", dict(lr=0.02, weight_decay=0.1)),
    ("AdamW", dict(lr=0.02, betas=(0.5, 0.9), eps=1e-6, weight_decay=0.3)),
]
CONFIG_IDS = [f"{name}({', '.join(f'{k}={v}' for k, v in options.items())})" for name, options in CONFIGS]
# torch.optim steps 0-d tensors one at a time, ~30 µs each for Adam: on the MLP, the configurations that
# have every option of each optimizer (the quadratic has them all).
MLP_TORCH_CONFIGS = [5, 6, 10, 13]


# ---------------------------------------------------------------------------------------------------
# Problems: parameters, and a function that builds the loss from them

def quadratic():
    """A tilted bowl: sum of a_i (x_i - c_i)^2 plus a cross term, its minimum away from the start."""
    params = [Value(x) for x in (1.5, -2.0, 0.3, 4.0, -0.7)]
    scales, centres = (1.0, 3.0, 0.5, 2.0, 10.0), (0.0, 1.0, -2.0, 0.5, 0.25)

    def loss():
        terms = [a * (x - c) ** 2 for a, x, c in zip(scales, params, centres)]
        return sum(terms[1:], terms[0]) + params[0] * params[1]
    return params, loss


def moons_model(seed=3):
    """micrograd's moons classifier, MLP(2, [16, 16, 1]), and its loss on 20 points: the demo's SVM loss
    with L2."""
    random.seed(seed)
    model = micrograd_nn.MLP(2, [16, 16, 1])
    X, y = moons.make_moons(20, noise=0.1, seed=1)
    return model, lambda: moons.svm_loss(model, Value, X, y)[0]


def moons_mlp():
    model, loss_of = moons_model()
    return model.parameters(), loss_of


PROBLEMS = {"quadratic": quadratic, "moons MLP": moons_mlp}


def train(problem, name, options, oracle_class, steps=100):
    """Train with fastgrad.optim, giving the oracle the same grads at each step; compare after each step."""
    params, loss_of = problem()
    optimizer = getattr(optim, name)(params, **options)
    oracle = oracle_class(name, [p.data for p in params], options)
    for step in range(steps):
        loss = loss_of()
        optimizer.zero_grad()
        loss.backward()
        grads = [p.grad for p in params]
        optimizer.step()
        oracle.step(grads)
        assert [p.grad for p in params] == grads, "step() changed a grad"
        for i, (p, expected) in enumerate(zip(params, oracle.data())):
            assert math.isclose(p.data, expected, rel_tol=REL, abs_tol=REL), (step, i, p.data, expected)
    return params


# ---------------------------------------------------------------------------------------------------
# Oracle 1: the published formulas in plain Python (torch.optim's documented algorithms)

class PlainOptimizer:
    def __init__(self, name, data, options):
        self.values = list(data)
        self.step = getattr(self, name.lower())
        self.options = {**DEFAULTS[name], **options}
        self.buf = None
        self.m = self.v = [0.0] * len(data)
        self.t = 0

    def data(self):
        return self.values

    def sgd(self, grads):
        lr, momentum, dampening, decay, nesterov = (self.options[k] for k in (
            "lr", "momentum", "dampening", "weight_decay", "nesterov"))
        buf = []
        for i, g in enumerate(grads):
            g = g + decay * self.values[i]
            if momentum:
                b = g if self.buf is None else momentum * self.buf[i] + (1 - dampening) * g
                buf.append(b)
                g = g + momentum * b if nesterov else b
            self.values[i] = self.values[i] - lr * g
        self.buf = buf or None

    def adam(self, grads, decoupled=False):
        lr, (beta1, beta2), eps, decay = (self.options[k] for k in ("lr", "betas", "eps", "weight_decay"))
        self.t += 1
        m, v = [], []
        for i, g in enumerate(grads):
            x = self.values[i]
            if decoupled:
                x = x * (1 - lr * decay)
            else:
                g = g + decay * x
            m.append(beta1 * self.m[i] + (1 - beta1) * g)
            v.append(beta2 * self.v[i] + (1 - beta2) * g * g)
            m_hat, v_hat = m[i] / (1 - beta1 ** self.t), v[i] / (1 - beta2 ** self.t)
            self.values[i] = x - lr * m_hat / (math.sqrt(v_hat) + eps)
        self.m, self.v = m, v

    def adamw(self, grads):
        self.adam(grads, decoupled=True)


DEFAULTS = {
    "SGD": dict(momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False),
    "Adam": dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0),
    "AdamW": dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2),
}


@pytest.mark.parametrize("problem", PROBLEMS, ids=list(PROBLEMS))
@pytest.mark.parametrize("name, options", CONFIGS, ids=CONFIG_IDS)
def test_matches_the_published_formulas(problem, name, options):
    train(PROBLEMS[problem], name, options, PlainOptimizer)


# ---------------------------------------------------------------------------------------------------
# Oracle 2: torch.optim itself, in float64

class TorchOptimizer:
    def __init__(self, name, data, options):
        import torch
        self.torch = torch
        self.tensors = [torch.tensor(x, dtype=torch.float64, requires_grad=True) for x in data]
        self.optimizer = getattr(torch.optim, name)(self.tensors, foreach=False, **options)

    def step(self, grads):
        for tensor, g in zip(self.tensors, grads):
            tensor.grad = self.torch.tensor(g, dtype=self.torch.float64)
        self.optimizer.step()

    def data(self):
        return [tensor.item() for tensor in self.tensors]


def needs_torch():
    pytest.importorskip("torch", reason="PyTorch is not installed: the cross-check against torch.optim is skipped")


@pytest.mark.parametrize("name, options", CONFIGS, ids=CONFIG_IDS)
def test_matches_torch_on_the_quadratic(name, options):
    needs_torch()
    train(quadratic, name, options, TorchOptimizer)


@pytest.mark.parametrize("name, options", [CONFIGS[i] for i in MLP_TORCH_CONFIGS],
                         ids=[CONFIG_IDS[i] for i in MLP_TORCH_CONFIGS])
def test_matches_torch_on_the_moons_mlp(name, options):
    needs_torch()
    train(moons_mlp, name, options, TorchOptimizer)


def test_training_with_adam_and_a_loss_learns_the_moons():
    params, loss_of = moons_mlp()
    optimizer = optim.Adam(params, lr=0.05)
    first = None
    for _ in range(60):
        loss = loss_of()
        first = loss.data if first is None else first
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.data < 0.5 * first


def test_the_readmes_loop_with_sgd_and_mse_takes_the_lectures_steps():
    """The quickstart: SGD(lr=0.2) on the mean squared error is the lecture's lr=0.05 on the summed one."""
    xs = [[2.0, 3.0, -1.0], [3.0, -1.0, 0.5], [0.5, 1.0, 1.0], [1.0, 1.0, -1.0]]
    ys = [1.0, -1.0, -1.0, 1.0]
    random.seed(1)
    lecture = fastgrad.nn.MLP(3, [4, 4, 1])
    random.seed(1)
    model = fastgrad.nn.MLP(3, [4, 4, 1])
    optimizer = optim.SGD(model.parameters(), lr=0.2)
    for _ in range(20):
        ypred = [lecture(x) for x in xs]
        loss = sum((yout - ygt) ** 2 for ygt, yout in zip(ys, ypred))
        lecture.zero_grad()
        loss.backward()
        for p in lecture.parameters():
            p.data += -0.05 * p.grad
        mse = fastgrad.losses.mse([model(x) for x in xs], ys)
        optimizer.zero_grad()
        mse.backward()
        optimizer.step()
        assert mse.data * 4 == loss.data
    assert bits(model.parameters()) == bits(lecture.parameters())


def test_eps_zero_and_a_zero_gradient_give_nan_as_in_torch():
    # 0 / (0 + 0): IEEE division, not an exception halfway through the parameters.
    params = [Value(1.0), Value(2.0)]
    params[1].grad = 1.0
    optim.Adam(params, eps=0.0).step()
    assert math.isnan(params[0].data) and params[1].data == pytest.approx(2.0 - 1e-3)


# ---------------------------------------------------------------------------------------------------
# zero_grad, step, the parameters, hyper-parameters

def test_zero_grad_zeroes_every_grad_and_nothing_else():
    random.seed(1)
    model = fastgrad.nn.MLP(3, [4, 4, 1])
    model([1.0, -2.0, 0.5]).backward()
    data = [p.data for p in model.parameters()]
    assert all(p.grad != 0.0 for p in model.parameters())
    optim.SGD(model.parameters(), lr=0.1).zero_grad()
    assert all(p.grad == 0.0 and math.copysign(1, p.grad) == 1 for p in model.parameters())
    assert [p.data for p in model.parameters()] == data


def test_step_with_a_closure_returns_its_loss():
    params, loss_of = quadratic()
    optimizer = optim.SGD(params, lr=0.01)

    def closure():
        optimizer.zero_grad()
        loss = loss_of()
        loss.backward()
        return loss
    first = optimizer.step(closure)
    assert type(first) is Value
    assert optimizer.step(closure).data < first.data
    assert optimizer.step() is None


def test_lr_is_an_attribute_a_schedule_can_set():
    params, loss_of = quadratic()
    twin_params, twin_loss_of = quadratic()
    optimizer = optim.SGD(params, lr=0.1, momentum=0.5)
    oracle = PlainOptimizer("SGD", [p.data for p in twin_params], dict(lr=0.1, momentum=0.5))
    for k in range(20):
        optimizer.lr = oracle.options["lr"] = 0.1 * (1 - k / 20)
        loss = loss_of()
        optimizer.zero_grad()
        loss.backward()
        oracle.step([p.grad for p in params])
        optimizer.step()
    assert [p.data for p in params] == pytest.approx(oracle.data(), rel=REL, abs=REL)


def test_params_are_kept_alive_and_given_back_in_order():
    random.seed(1)
    model = micrograd_nn.MLP(2, [3, 1])
    params = model.parameters()
    before = [sys.getrefcount(p) for p in params]
    optimizer = optim.SGD(iter(params), lr=0.5)      # any iterable, a generator too
    assert [sys.getrefcount(p) for p in params] == [n + 1 for n in before]
    assert type(optimizer.params) is tuple and all(a is b for a, b in zip(optimizer.params, params))
    del model, params
    gc.collect()
    for p in optimizer.params:
        p.grad = 2.0
    optimizer.step()
    assert all(p.grad == 2.0 for p in optimizer.params)
    del optimizer
    gc.collect()


@pytest.mark.parametrize("copy_of", [lambda obj: pickle.loads(pickle.dumps(obj)), copy.deepcopy],
                         ids=["pickle", "deepcopy"])
def test_a_model_and_its_optimizer_copy_together(copy_of):
    model, loss_of = moons_model()
    optimizer = optim.Adam(model.parameters(), lr=0.02)
    train_steps(optimizer, loss_of, 0, 3, 0.02)
    twin_model, twin = copy_of((model, optimizer))
    assert all(p is q for p, q in zip(twin.params, twin_model.parameters()))
    assert twin.state_dict() == optimizer.state_dict()
    X, y = moons.make_moons(20, noise=0.1, seed=1)
    train_steps(optimizer, loss_of, 3, 3, 0.02)
    train_steps(twin, lambda: moons.svm_loss(twin_model, Value, X, y)[0], 3, 3, 0.02)
    assert bits(twin_model.parameters()) == bits(model.parameters())


def test_repr_names_the_optimizer_and_its_settings():
    optimizer = optim.AdamW([Value(1.0)], lr=0.5)
    assert repr(optimizer) == "AdamW(1 parameters, lr=0.5, betas=(0.9, 0.999), eps=1e-08, weight_decay=0.01)"
    assert isinstance(optimizer, optim.Adam) and isinstance(optimizer, optim.Optimizer)


# ---------------------------------------------------------------------------------------------------
# Bad arguments: torch's checks and meaning; the parameters are left as they were

BAD_OPTIONS = [
    ("SGD", dict(lr=-0.1), "Invalid learning rate: -0.1"),
    ("SGD", dict(lr=math.nan), "Invalid learning rate: nan"),
    ("SGD", dict(lr=0.1, momentum=-0.5), "Invalid momentum value: -0.5"),
    ("SGD", dict(lr=0.1, weight_decay=-1), "Invalid weight_decay value: -1.0"),
    ("SGD", dict(lr=0.1, nesterov=True), "Nesterov momentum requires a momentum and zero dampening"),
    ("SGD", dict(lr=0.1, momentum=0.9, dampening=0.1, nesterov=True), "Nesterov momentum requires"),
    ("Adam", dict(lr=-1e-3), "Invalid learning rate: -0.001"),
    ("Adam", dict(eps=-1e-8), "Invalid epsilon value: -1e-08"),
    ("Adam", dict(betas=(1.0, 0.999)), "Invalid beta parameter at index 0: 1.0"),
    ("Adam", dict(betas=(-0.1, 0.999)), "Invalid beta parameter at index 0: -0.1"),
    ("Adam", dict(betas=(0.9, 1.5)), "Invalid beta parameter at index 1: 1.5"),
    ("Adam", dict(weight_decay=-0.01), "Invalid weight_decay value: -0.01"),
    ("AdamW", dict(betas=(0.9, math.nan)), "Invalid beta parameter at index 1: nan"),
    ("AdamW", dict(lr=-1.0), "Invalid learning rate: -1.0"),
]


@pytest.mark.parametrize("name, options, message", BAD_OPTIONS, ids=[str(o) for _, o, _ in BAD_OPTIONS])
def test_bad_hyperparameters_are_a_value_error(name, options, message):
    p = Value(1.0)
    p.grad = 0.5
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(").replace(".", r"\.")):
        getattr(optim, name)([p], **options)
    assert (p.data, p.grad) == (1.0, 0.5)


# torch.optim.SGD checks `lr < 0`, which nan passes; fastgrad refuses a nan learning rate everywhere, as
# torch.optim.Adam does.
REFUSED_BY_TORCH_TOO = [case for case in BAD_OPTIONS if case[0] != "SGD" or not math.isnan(case[1]["lr"])]


@pytest.mark.parametrize("name, options, message", REFUSED_BY_TORCH_TOO,
                         ids=[str(o) for _, o, _ in REFUSED_BY_TORCH_TOO])
def test_torch_refuses_the_same_hyperparameters(name, options, message):
    needs_torch()
    import torch
    with pytest.raises(ValueError):
        getattr(torch.optim, name)([torch.zeros((), dtype=torch.float64, requires_grad=True)], **options)


@pytest.mark.parametrize("name, options, fragment", [
    ("SGD", dict(lr="0.1"), "lr must be a real number, not 'str'"),
    ("SGD", dict(lr=0.1, momentum=None), "momentum must be a real number, not 'NoneType'"),
    ("SGD", dict(lr=0.1, nesterov="yes"), "nesterov must be True or False"),
    ("Adam", dict(betas=0.9), "betas must be a pair of numbers"),
    ("Adam", dict(betas=(0.9, 0.99, 0.999)), "betas must be a pair of numbers"),
    ("Adam", dict(betas=(0.9, "0.999")), "betas must be a real number, not 'str'"),
    ("AdamW", dict(eps=True), "eps must be a real number, not 'bool'"),
])
def test_hyperparameters_of_the_wrong_type_are_a_type_error(name, options, fragment):
    with pytest.raises(TypeError, match=fragment.replace("(", r"\(")):
        getattr(optim, name)([Value(1.0)], **options)


def test_sgd_needs_a_learning_rate():
    with pytest.raises(TypeError, match="lr"):
        optim.SGD([Value(1.0)])


def micrograd_value():
    micrograd_engine = pytest.importorskip("micrograd.engine")
    return micrograd_engine.Value(1.0)


@pytest.mark.parametrize("make_params, error, message", [
    (lambda: 3, TypeError, "params must be an iterable of Values, such as model.parameters(), not 'int'"),
    (lambda: Value(1.0), TypeError, "not a single Value"),
    (lambda: [Value(1.0), "w"], TypeError, "optimizer can only optimize Values, but params[1] is 'str'"),
    (lambda: [Value(1.0), 2.0], TypeError, "params[1] is 'float'"),
    (lambda: [micrograd_value()], TypeError, "params[0] is 'micrograd.engine.Value'"),
    (lambda: [{"params": [Value(1.0)]}], TypeError, "parameter groups are not supported"),
    (lambda: [Value(1.0) * Value(2.0)], ValueError, "can't optimize a non-leaf Value: params[0] was made by '*'"),
    (lambda: [Value(1.0, (Value(2.0),), "mine")], ValueError, "can't optimize a non-leaf Value"),
    (lambda: [], ValueError, "optimizer got an empty parameter list"),
    (lambda: iter([]), ValueError, "optimizer got an empty parameter list"),
], ids=["int", "a Value", "str", "float", "micrograd", "group", "non-leaf", "hand-made non-leaf", "empty", "empty iter"])
@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW"])
def test_bad_params(name, make_params, error, message):
    with pytest.raises(error) as raised:
        getattr(optim, name)(make_params(), lr=0.1)
    assert message in str(raised.value)


def test_a_parameter_given_twice_is_refused():
    a, b = Value(1.0), Value(2.0)
    with pytest.raises(ValueError, match=r"params\[2\] is the same Value as params\[0\]"):
        optim.Adam([a, b, a])


# ---------------------------------------------------------------------------------------------------
# State dicts

RESUMABLE = [
    ("SGD", dict(lr=0.05, momentum=0.9, dampening=0.1, weight_decay=1e-3)),
    ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True)),
    ("Adam", dict(lr=0.02, weight_decay=1e-3)),
    ("AdamW", dict(lr=0.02, betas=(0.8, 0.99))),
]
RESUMABLE_IDS = [f"{name} {i}" for i, (name, _) in enumerate(RESUMABLE)]


def train_steps(optimizer, loss_of, first, count, base_lr):
    """Steps first .. first + count - 1 of a run whose learning rate falls with the step number."""
    for k in range(first, first + count):
        optimizer.lr = base_lr * (1 - k / 200)
        loss = loss_of()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def bits(params):
    return [struct.pack("<d", p.data).hex() for p in params]


@pytest.mark.parametrize("name, options", RESUMABLE, ids=RESUMABLE_IDS)
def test_resume_from_state_dicts_in_this_process_is_bit_identical(name, options, tmp_path):
    model, loss_of = moons_model()
    optimizer = getattr(optim, name)(model.parameters(), **options)
    train_steps(optimizer, loss_of, 0, 30, options["lr"])
    saved = {"model": model.state_dict(), "optim": optimizer.state_dict(), "step": 30}
    fastgrad.save(saved, tmp_path / "run.json")
    train_steps(optimizer, loss_of, 30, 30, options["lr"])
    straight = bits(model.parameters())

    # Another model (other weights) and an optimizer with other settings, both overwritten by the load.
    resumed_model, resumed_loss_of = moons_model(seed=99)
    resumed = getattr(optim, name)(resumed_model.parameters(), lr=0.5)
    loaded = fastgrad.load(tmp_path / "run.json")
    resumed_model.load_state_dict(loaded["model"])
    resumed.load_state_dict(loaded["optim"])
    assert loaded == saved and resumed.state_dict() == saved["optim"]
    train_steps(resumed, resumed_loss_of, loaded["step"], 30, options["lr"])
    assert bits(resumed_model.parameters()) == straight


RUN_IN_A_FRESH_INTERPRETER = """
    import random, struct
    import fastgrad
    from fastgrad import Value, moons, optim
    from fastgrad.micrograd.nn import MLP

    for i, (name, options) in enumerate({configs!r}):
        random.seed({seed})
        model = MLP(2, [16, 16, 1])
        X, y = moons.make_moons(20, noise=0.1, seed=1)
        optimizer = getattr(optim, name)(model.parameters(), **options)
        first = 0
        if {resume!r}:
            saved = fastgrad.load(f"run{{i}}.json")
            model.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optim"])
            first = saved["step"]
        for k in range(first, {until}):
            optimizer.lr = options["lr"] * (1 - k / 200)
            loss, _ = moons.svm_loss(model, Value, X, y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if {save!r}:
            fastgrad.save({{"model": model.state_dict(), "optim": optimizer.state_dict(), "step": {until}}},
                          f"run{{i}}.json")
        with open(f"{out}{{i}}.txt", "w") as f:
            f.write(" ".join(struct.pack("<d", p.data).hex() for p in model.parameters()))
    print("ok")
"""


def test_resume_in_a_fresh_interpreter_is_bit_identical(tmp_path):
    """The issue's check: 50 steps, save, load in a new process, 50 more; against 100 steps straight."""
    def run(**settings):
        run_python(RUN_IN_A_FRESH_INTERPRETER.format(configs=RESUMABLE, **settings), tmp_path)
    run(seed=3, resume=False, until=50, save=True, out="first")
    run(seed=99, resume=True, until=100, save=False, out="resumed")
    run(seed=3, resume=False, until=100, save=False, out="straight")
    for i in range(len(RESUMABLE)):
        straight = (tmp_path / f"straight{i}.txt").read_text()
        assert (tmp_path / f"resumed{i}.txt").read_text() == straight, RESUMABLE_IDS[i]
        assert (tmp_path / f"first{i}.txt").read_text() != straight


def test_state_dict_fields():
    params = [Value(1.0), Value(-2.0)]
    for p in params:
        p.grad = 0.5
    sgd = optim.SGD(params, lr=0.1, momentum=0.9)
    assert sgd.state_dict() == {"optimizer": "SGD", "parameters": 2, "lr": 0.1, "momentum": 0.9, "dampening": 0.0,
                                "weight_decay": 0.0, "nesterov": False, "momentum_buffer": None}
    sgd.step()
    assert sgd.state_dict()["momentum_buffer"] == [0.5, 0.5]
    adam = optim.Adam(params, betas=(0.5, 0.75))
    assert adam.state_dict() == {"optimizer": "Adam", "parameters": 2, "lr": 1e-3, "betas": [0.5, 0.75], "eps": 1e-8,
                                 "weight_decay": 0.0, "step_count": 0, "exp_avg": [0.0, 0.0],
                                 "exp_avg_sq": [0.0, 0.0]}
    adam.step()
    state = adam.state_dict()
    assert state["step_count"] == 1 and state["exp_avg"] == [0.25, 0.25] and state["exp_avg_sq"] == [0.0625, 0.0625]
    assert optim.AdamW(params).state_dict()["optimizer"] == "AdamW"


def test_state_dict_is_a_copy():
    params, loss_of = quadratic()
    optimizer = optim.Adam(params, lr=0.1)
    loss_of().backward()
    optimizer.step()
    state = optimizer.state_dict()
    kept = repr(state)
    state["exp_avg"][0] = 1e9
    assert optimizer.state_dict()["exp_avg"][0] != 1e9
    optimizer.step()
    state["exp_avg"][0] = optimizer.state_dict()["exp_avg"][0] = None
    assert repr(optimizer.state_dict()) != kept


def valid_state(name):
    params = [Value(1.0), Value(2.0), Value(3.0)]
    for p in params:
        p.grad = 1.0
    optimizer = getattr(optim, name)(params, lr=0.1, **({"momentum": 0.9} if name == "SGD" else {}))
    optimizer.step()
    return optimizer.state_dict()


def changed(state, **fields):
    return {**state, **fields}


def without(state, key):
    return {k: v for k, v in state.items() if k != key}


BAD_STATES = [
    ("SGD", lambda s: [1, 2], TypeError, "state must be a dict, such as SGD.state_dict(), not 'list'"),
    ("SGD", lambda s: changed(s, optimizer="Adam"), ValueError, "state is Adam's, not SGD's"),
    ("SGD", lambda s: without(s, "optimizer"), ValueError, "no optimizer's state dict"),
    ("SGD", lambda s: without(s, "momentum"), ValueError, "missing 'momentum'"),
    ("SGD", lambda s: changed(s, extra=1), ValueError, "unexpected 'extra'"),
    ("SGD", lambda s: changed(s, parameters=4), ValueError, "state is for 4 parameters, this SGD has 3"),
    ("SGD", lambda s: changed(s, parameters="3"), TypeError, "state['parameters'] must be an int"),
    ("SGD", lambda s: changed(s, lr="0.1"), TypeError, "state['lr'] must be a real number, not 'str'"),
    ("SGD", lambda s: changed(s, lr=-0.1), ValueError, "Invalid learning rate: -0.1 in state"),
    ("SGD", lambda s: changed(s, nesterov=1), TypeError, "state['nesterov'] must be True or False"),
    ("SGD", lambda s: changed(s, dampening=0.5, nesterov=True), ValueError, "Nesterov momentum requires"),
    ("SGD", lambda s: changed(s, momentum_buffer=[1.0, 2.0]), ValueError,
     "state['momentum_buffer'] has 2 numbers, one per parameter is 3"),
    ("SGD", lambda s: changed(s, momentum_buffer=[1.0, "2", 3.0]), TypeError,
     "state['momentum_buffer'][1] must be a real number, not 'str'"),
    ("SGD", lambda s: changed(s, momentum_buffer={"a": 1}), TypeError, "must be a list of 3 numbers, not 'dict'"),
    ("Adam", lambda s: changed(s, optimizer="AdamW"), ValueError, "state is AdamW's, not Adam's"),
    ("Adam", lambda s: changed(s, betas=[0.9]), TypeError, "state['betas'] must be a pair of numbers"),
    ("Adam", lambda s: changed(s, betas=[0.9, 1.0]), ValueError, "Invalid beta parameter at index 1: 1.0 in state"),
    ("Adam", lambda s: changed(s, step_count=-1), ValueError, "state['step_count'] must be 0 or more, not -1"),
    ("Adam", lambda s: changed(s, step_count=1.0), TypeError, "state['step_count'] must be an int, not 'float'"),
    ("Adam", lambda s: changed(s, step_count=True), TypeError, "state['step_count'] must be an int, not 'bool'"),
    ("Adam", lambda s: changed(s, exp_avg=None, eps=1e-3), TypeError,
     "state['exp_avg'] must be a list of 3 numbers, not 'NoneType'"),
    ("Adam", lambda s: changed(s, exp_avg_sq=[0.0, 0.0, None]), TypeError, "state['exp_avg_sq'][2]"),
    ("AdamW", lambda s: changed(s, weight_decay=math.nan), ValueError, "Invalid weight_decay value: nan in state"),
    # step() adds 1 to the count in a 64-bit int: the largest count it can take is 2**63 - 2
    ("Adam", lambda s: changed(s, step_count=2**63 - 1), ValueError, "state['step_count'] is beyond what step()"),
    ("AdamW", lambda s: changed(s, step_count=2**63), ValueError, "state['step_count'] is beyond what step()"),
    # no step makes v negative, and a negative v makes the next step nan (sqrt)
    ("Adam", lambda s: changed(s, exp_avg_sq=[0.0, -1e-300, 0.0]), ValueError,
     "state['exp_avg_sq'][1] must be 0 or more"),
    # ints beyond a float (fastgrad.load reads a 400-digit JSON number as an int, as json does)
    ("SGD", lambda s: changed(s, lr=10**400), ValueError, "state['lr'] is beyond a float's range"),
    ("Adam", lambda s: changed(s, betas=[0.9, -10**400]), ValueError, "state['betas'] is beyond a float's range"),
    ("SGD", lambda s: changed(s, momentum_buffer=[1.0, 10**400, 3.0]), ValueError,
     "state['momentum_buffer'][1] is beyond a float's range"),
    ("Adam", lambda s: changed(s, exp_avg=[0.0, 0.0, -10**400]), ValueError,
     "state['exp_avg'][2] is beyond a float's range"),
]


@pytest.mark.parametrize("name, mutate, error, message", BAD_STATES, ids=[m for *_, m in BAD_STATES])
def test_bad_state_dicts_are_refused_and_change_nothing(name, mutate, error, message):
    state = valid_state(name)
    params = [Value(-1.0), Value(-2.0), Value(-3.0)]
    optimizer = getattr(optim, name)(params, lr=0.3)
    before = optimizer.state_dict()
    with pytest.raises(error) as raised:
        optimizer.load_state_dict(mutate(state))
    assert message in str(raised.value)
    assert optimizer.state_dict() == before
    assert [p.data for p in params] == [-1.0, -2.0, -3.0]


def test_a_400_digit_number_in_a_saved_state_is_a_value_error_naming_its_field(tmp_path):
    state = valid_state("Adam")
    state["eps"] = 10**400                   # what a hand-edited file holds: JSON has no limit on digits
    fastgrad.save(state, tmp_path / "optim.json")
    loaded = fastgrad.load(tmp_path / "optim.json")
    assert loaded["eps"] == 10**400
    optimizer = optim.Adam([Value(1.0), Value(2.0), Value(3.0)])
    with pytest.raises(ValueError, match=r"state\['eps'\] is beyond a float's range"):
        optimizer.load_state_dict(loaded)


def test_the_largest_step_count_loads_and_takes_one_step_then_stops_without_changing_anything():
    params = [Value(1.0)]
    params[0].grad = 0.5
    adam = optim.Adam(params, lr=0.1)
    state = adam.state_dict()
    state.update(step_count=2**63 - 2, exp_avg=[0.25], exp_avg_sq=[0.125])
    adam.load_state_dict(state)
    adam.step()
    # torch's formula at t = 2**63 - 1, where beta**t is 0: m and v move once, bias corrections are 1
    m, v = 0.9 * 0.25 + 0.1 * 0.5, 0.999 * 0.125 + (1 - 0.999) * 0.5 * 0.5
    assert adam.step_count == 2**63 - 1
    assert params[0].data == 1.0 - 0.1 * (m / (math.sqrt(v) + 1e-8))
    before = adam.state_dict()
    with pytest.raises(OverflowError):
        adam.step()
    assert adam.state_dict() == before and params[0].data == 1.0 - 0.1 * (m / (math.sqrt(v) + 1e-8))


@pytest.mark.parametrize("name", ["SGD", "Adam"])
def test_a_step_that_raises_changes_nothing_so_the_next_is_a_first_step(name):
    """A failed first SGD step with momentum used to leave a zero momentum buffer behind (and Adam's count one
    step ahead): the next step then took momentum * 0 + (1 - dampening) * g instead of torch's first b = g."""
    params = [Value(1.0), Value(-2.0)]
    for p, g in zip(params, [0.5, -3.0]):
        p.grad = g
    optimizer = optim.SGD(params, lr=0.1, momentum=0.9, dampening=0.5) if name == "SGD" else optim.Adam(params, lr=0.1)
    before = optimizer.state_dict()
    optimizer.lr = "0.1"                     # hyper-parameters are plain attributes: the step itself refuses it
    with pytest.raises(TypeError):
        optimizer.step()
    optimizer.lr = 0.1
    assert optimizer.state_dict() == before and [p.data for p in params] == [1.0, -2.0]
    optimizer.step()
    if name == "SGD":                        # torch: the first step's buffer is the gradient itself
        assert optimizer.momentum_buffer.tolist() == [0.5, -3.0]
        assert [p.data for p in params] == [1.0 - 0.1 * 0.5, -2.0 - 0.1 * -3.0]
    else:
        assert optimizer.step_count == 1
