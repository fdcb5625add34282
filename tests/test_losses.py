"""fastgrad.losses against PyTorch in float64, closed forms and central finite differences; exact at logits of
+-1000; bad batches refused with a message a user can act on."""
import math
import random

import numpy as np
import pytest

from fastgrad import Value, losses, moons
from fastgrad.micrograd.nn import MLP

REL = 1e-12


def fastgrad_result(loss, first, second):
    """The loss's value and the grads of its first argument, from fastgrad (second: targets or a class)."""
    leaves = [Value(x) for x in first]
    out = loss(leaves, second)
    assert type(out) is Value
    out.backward()
    return out.data, [leaf.grad for leaf in leaves]


def sigmoid(x):
    return 1 / (1 + math.exp(-x)) if x >= 0 else math.exp(x) / (1 + math.exp(x))


def softmax(xs):
    top = max(xs)
    exps = [math.exp(x - top) for x in xs]
    return [e / math.fsum(exps) for e in exps]


# name: (loss, closed form of (value, grads of the first argument), the same loss in torch)
def closed_mse(preds, targets):
    n = len(preds)
    return math.fsum((p - t) ** 2 for p, t in zip(preds, targets)) / n, [2 * (p - t) / n for p, t in zip(preds, targets)]


def closed_hinge(scores, labels):
    n = len(scores)
    value = math.fsum(max(0.0, 1 - y * s) for s, y in zip(scores, labels)) / n
    return value, [-y / n if 1 - y * s > 0 else 0.0 for s, y in zip(scores, labels)]


def closed_bce(logits, targets):
    # -t log(sigmoid(x)) - (1 - t) log(1 - sigmoid(x)), with log(sigmoid(x)) = -log1p(exp(-x)) for x >= 0
    def log_sigmoid(x):
        return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))
    n = len(logits)
    value = math.fsum(-t * log_sigmoid(x) - (1 - t) * log_sigmoid(-x) for x, t in zip(logits, targets)) / n
    return value, [(sigmoid(x) - t) / n for x, t in zip(logits, targets)]


def closed_cross_entropy(logits, target):
    top = max(logits)
    value = math.log(math.fsum(math.exp(x - top) for x in logits)) - (logits[target] - top)
    return value, [p - (i == target) for i, p in enumerate(softmax(logits))]


def torch_functions():
    torch = pytest.importorskip("torch", reason="PyTorch is not installed: the cross-check is skipped")
    F = torch.nn.functional

    def tensor(xs):
        return torch.tensor(xs, dtype=torch.float64)
    return torch, {
        "mse": lambda x, t: F.mse_loss(x, tensor(t)),
        "hinge": lambda s, y: torch.clamp(1 - tensor(y) * s, min=0).mean(),
        "bce": lambda x, t: F.binary_cross_entropy_with_logits(x, tensor(t)),
        "cross_entropy": lambda x, t: F.cross_entropy(x.unsqueeze(0), torch.tensor([t])),
    }


LOSSES = {
    "mse": (losses.mse, closed_mse),
    "hinge": (losses.hinge, closed_hinge),
    "bce": (losses.binary_cross_entropy_with_logits, closed_bce),
    "cross_entropy": (losses.cross_entropy, closed_cross_entropy),
}


def batches(name, count=25, seed=0):
    """(first, second) argument pairs for a loss: moderate numbers, then large ones."""
    rng = random.Random(seed)
    out = []
    for k in range(count):
        scale = [1.0, 5.0, 40.0, 1000.0][k % 4]
        n = rng.randint(1, 6)
        xs = [rng.uniform(-scale, scale) for _ in range(n)]
        if name == "cross_entropy":
            out.append((xs, rng.randrange(n)))
        elif name == "hinge":
            out.append((xs, [rng.choice([-1, 1]) for _ in range(n)]))
        elif name == "bce":
            out.append((xs, [rng.choice([0.0, 1.0, rng.random()]) for _ in range(n)]))
        else:
            out.append((xs, [rng.uniform(-scale, scale) for _ in range(n)]))
    return out


def tolerance(name, first):
    """Absolute slack on the value: softplus(x) - x*t (binary cross-entropy) loses about 1e-16 * |x| when the
    two nearly cancel, as its docstring says; the others are relative only."""
    return 1e-15 * max(1.0, max(abs(x) for x in first)) if name == "bce" else 0.0


def assert_agree(name, first, result, expected):
    (value, grads), (expected_value, expected_grads) = result, expected
    assert math.isclose(value, expected_value, rel_tol=REL, abs_tol=tolerance(name, first)), (value, expected_value)
    for i, (g, e) in enumerate(zip(grads, expected_grads)):
        assert math.isclose(g, e, rel_tol=REL, abs_tol=1e-15), (i, g, e)


@pytest.mark.parametrize("name", LOSSES)
def test_matches_the_closed_forms(name):
    loss, closed = LOSSES[name]
    for first, second in batches(name):
        assert_agree(name, first, fastgrad_result(loss, first, second), closed(first, second))


@pytest.mark.parametrize("name", LOSSES)
def test_matches_torch(name):
    torch, torch_losses = torch_functions()
    loss, _ = LOSSES[name]
    for first, second in batches(name, seed=1):
        x = torch.tensor(first, dtype=torch.float64, requires_grad=True)
        out = torch_losses[name](x, second)
        out.backward()
        assert_agree(name, first, fastgrad_result(loss, first, second), (out.item(), x.grad.tolist()))


def central_difference(f, xs, i):
    h = 1e-6 * max(1.0, abs(xs[i]))
    up, down = list(xs), list(xs)
    up[i] += h
    down[i] -= h
    return (f(up) - f(down)) / (2 * h)


@pytest.mark.parametrize("name", LOSSES)
def test_grads_match_finite_differences(name):
    loss, _ = LOSSES[name]
    for first, second in batches(name, count=12, seed=2)[:12:4] + batches(name, count=12, seed=3)[1:12:4]:
        _, grads = fastgrad_result(loss, first, second)
        for i in range(len(first)):
            estimate = central_difference(lambda xs: loss(xs, second).data, first, i)
            assert grads[i] == pytest.approx(estimate, rel=1e-5, abs=1e-6), (first, second, i)


def test_targets_that_are_values_get_grads():
    preds, targets = [Value(1.0), Value(-2.0)], [Value(0.5), Value(1.0)]
    losses.mse(preds, targets).backward()
    assert [t.grad for t in targets] == [-0.5, 3.0]
    logits, probabilities = [Value(0.0)], [Value(0.25)]
    losses.binary_cross_entropy_with_logits(logits, probabilities).backward()
    assert probabilities[0].grad == 0.0 and logits[0].grad == 0.25    # d/dt = -x, d/dx = sigmoid(x) - t


def test_numbers_are_accepted_where_values_are():
    assert losses.mse([1.0, 2], [0, np.float64(0.0)]).data == 2.5
    assert losses.cross_entropy([0.0, 0.0], np.int64(1)).data == math.log(2)


# ---------------------------------------------------------------------------------------------------
# Large logits: no overflow, exact values and grads

def test_binary_cross_entropy_at_logits_of_1000():
    value, grads = fastgrad_result(losses.binary_cross_entropy_with_logits, [1000.0, -1000.0, 1000.0, -1000.0],
                                   [1.0, 0.0, 0.0, 1.0])
    assert value == 500.0                        # 0, 0, 1000 and 1000, averaged
    assert grads == [0.0, 0.0, 0.25, -0.25]      # (sigmoid(x) - t) / 4


@pytest.mark.parametrize("target, value, grads", [
    (0, 0.0, [0.0, 0.0, 0.0]),
    (1, 1000.0, [1.0, -1.0, 0.0]),
    (2, 2000.0, [1.0, 0.0, -1.0]),
])
def test_cross_entropy_at_logits_of_1000(target, value, grads):
    assert fastgrad_result(losses.cross_entropy, [1000.0, 0.0, -1000.0], target) == (value, grads)


def test_cross_entropy_at_equal_huge_logits():
    assert fastgrad_result(losses.cross_entropy, [1000.0, 1000.0], 0) == (math.log(2), [-0.5, 0.5])
    value, grads = fastgrad_result(losses.cross_entropy, [-1000.0] * 3, 2)
    assert value == pytest.approx(math.log(3), rel=1e-15) and grads == pytest.approx([1 / 3, 1 / 3, -2 / 3])


def test_hinge_is_micrograds_max_margin_loss():
    random.seed(5)
    model = MLP(2, [8, 8, 1])
    X, y = moons.make_moons(30, noise=0.1, seed=2)
    demo_loss, _ = moons.svm_loss(model, Value, X, y, alpha=0.0)
    scores = [model([Value(a) for a in row]) for row in X]
    assert losses.hinge(scores, y).data == pytest.approx(demo_loss.data, rel=1e-15)


# ---------------------------------------------------------------------------------------------------
# Bad batches

BATCH_LOSSES = [losses.mse, losses.hinge, losses.binary_cross_entropy_with_logits]


@pytest.mark.parametrize("loss", BATCH_LOSSES, ids=lambda f: f.__name__)
@pytest.mark.parametrize("first, second, error, fragment", [
    ([], [], ValueError, "empty batch"),
    ([Value(1.0)], [1.0, 0.0], ValueError, "1 {first} but 2 {second}: one each per sample"),
    ([Value(1.0), Value(2.0)], [1.0], ValueError, "2 {first} but 1 {second}"),
    (Value(1.0), [1.0], TypeError, "{first} must be a sequence of Values, not 'fastgrad.engine.Value'"),
    ([Value(1.0)], 1.0, TypeError, "{second} must be a sequence, not 'float'"),
    ([Value(1.0), "a"], [1.0, 0.0], TypeError, "{first}[1] must be a Value or a real number, not 'str'"),
    ([Value(1.0)], [None], TypeError, "{second}[0] must be a real number or a Value, not 'NoneType'"),
    ([Value(1.0)], [True], TypeError, "{second}[0] must be a real number or a Value, not 'bool'"),
], ids=["empty", "fewer preds", "fewer targets", "a Value", "a number", "str pred", "None target", "bool target"])
def test_bad_batches(loss, first, second, error, fragment):
    names = {losses.mse: ("preds", "targets"), losses.hinge: ("scores", "labels"),
             losses.binary_cross_entropy_with_logits: ("logits", "targets")}[loss]
    with pytest.raises(error) as raised:
        loss(first, second)
    assert fragment.format(first=names[0], second=names[1]) in str(raised.value)


@pytest.mark.parametrize("logits, target, error, fragment", [
    ([], 0, ValueError, "cross_entropy needs at least one logit"),
    ([Value(1.0), Value(2.0)], 2, ValueError, "target 2 is not a class index for 2 logits (0 to 1)"),
    ([Value(1.0), Value(2.0)], -1, ValueError, "target -1 is not a class index"),
    ([Value(1.0), Value(2.0)], 1.0, TypeError, "target must be a class index (an int), not 'float'"),
    ([Value(1.0), Value(2.0)], True, TypeError, "not 'bool'"),
    ([Value(1.0), "x"], 0, TypeError, "logits[1] must be a Value or a real number, not 'str'"),
    (Value(1.0), 0, TypeError, "logits must be a sequence of Values, not 'fastgrad.engine.Value'"),
])
def test_bad_cross_entropy_arguments(logits, target, error, fragment):
    with pytest.raises(error) as raised:
        losses.cross_entropy(logits, target)
    assert fragment in str(raised.value)
