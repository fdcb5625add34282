"""fastgrad.nn against the seed's notebook cells and the lecture's training loop (reference.py)."""
import random

import pytest

from fastgrad import MLP, Layer, Module, Neuron, Value, reference

SEED = 1337


def build(module_class, *args, seed=SEED):
    random.seed(seed)
    return module_class(*args)


def test_neuron_cell():
    x = [2.0, 5.0]
    fg, ref = build(Neuron, 2), build(reference.Neuron, 2)
    out = fg(x)
    assert type(out) is Value
    assert out.data == ref(x).data
    assert out._op == "tanh"


def test_layer_cell():
    x = [3.0, 5.0]
    fg, ref = build(Layer, 2, 3), build(reference.Layer, 2, 3)
    outs = fg(x)
    assert type(outs) is list and len(outs) == 3
    assert [o.data for o in outs] == [o.data for o in ref(x)]


def test_mlp_cell():
    x = [3.0, 5.0, -2.0]
    fg, ref = build(MLP, 3, [4, 4, 1]), build(reference.MLP, 3, [4, 4, 1])
    out = fg(x)
    assert type(out) is Value                # the last layer has one neuron: a Value, not a list
    assert out.data == ref(x).data


@pytest.mark.parametrize("seed", range(5))
def test_outputs_equal_the_references_for_any_seed(seed):
    x = [3.0, 5.0, -2.0]
    fg, ref = build(MLP, 3, [4, 4, 1], seed=seed), build(reference.MLP, 3, [4, 4, 1], seed=seed)
    assert fg(x).data == ref(x).data


def test_values_as_inputs():
    # The lecture feeds Values as well as floats; the neuron must build the same numbers.
    fg, ref = build(Neuron, 3), build(reference.Neuron, 3)
    assert fg([Value(1.0), 2.0, Value(-0.5)]).data == ref([reference.Value(1.0), 2.0, reference.Value(-0.5)]).data


@pytest.mark.parametrize("make, count", [
    (lambda: Neuron(2), 3),
    (lambda: Layer(2, 3), 9),
    (lambda: MLP(3, [4, 4, 1]), 4 * 4 + 4 * 5 + 1 * 5),
])
def test_parameters_are_the_draws_in_order(make, count):
    # Each neuron draws its weights, then its bias, neuron by neuron, layer by layer: parameters()
    # lists them in that order, so it must give back the draws themselves.
    random.seed(SEED)
    draws = [random.uniform(-1, 1) for _ in range(count)]
    random.seed(SEED)
    params = make().parameters()
    assert [p.data for p in params] == draws
    assert all(type(p) is Value for p in params)
    assert len(set(params)) == count


def test_attributes_as_in_the_seed():
    n = build(Neuron, 3)
    assert len(n.w) == 3 and type(n.b) is Value and n.parameters() == n.w + [n.b]
    layer = build(Layer, 3, 2)
    assert len(layer.neurons) == 2 and all(isinstance(n, Neuron) for n in layer.neurons)
    mlp = build(MLP, 3, [4, 4, 1])
    assert [len(layer.neurons) for layer in mlp.layers] == [4, 4, 1]
    assert [len(layer.neurons[0].w) for layer in mlp.layers] == [3, 4, 4]
    assert all(isinstance(m, Module) for m in (n, layer, mlp))


def test_reprs():
    assert repr(Neuron(2)) == "TanhNeuron(2)"
    assert repr(Layer(2, 3)) == "Layer of [TanhNeuron(2), TanhNeuron(2), TanhNeuron(2)]"
    assert repr(MLP(3, [2, 1])) == "MLP of [Layer of [TanhNeuron(3), TanhNeuron(3)], Layer of [TanhNeuron(2)]]"


def test_zero_grad():
    mlp = build(MLP, 3, [4, 4, 1])
    mlp([3.0, 5.0, -2.0]).backward()
    assert all(p.grad != 0.0 for p in mlp.parameters())
    mlp.zero_grad()
    assert all(p.grad == 0.0 for p in mlp.parameters())
    assert Module().parameters() == []


def test_backward_through_the_mlp_matches_the_reference():
    x = [3.0, 5.0, -2.0]
    fg, ref = build(MLP, 3, [4, 4, 1]), build(reference.MLP, 3, [4, 4, 1])
    fg(x).backward()
    ref(x).backward()
    for p, q in zip(fg.parameters(), ref.parameters()):
        assert p.grad == pytest.approx(q.grad, rel=1e-12, abs=1e-15)


XS = [[2.0, 3.0, -1.0], [3.0, -1.0, 0.5], [0.5, 1.0, 1.0], [1.0, 1.0, -1.0]]
YS = [1.0, -1.0, -1.0, 1.0]


def lecture_training(mlp_class, steps=20, learning_rate=0.05):
    """The lecture's loop: squared-error loss over 4 samples, zero_grad, backward, a step down the grad."""
    model = build(mlp_class, 3, [4, 4, 1])
    losses = []
    for _ in range(steps):
        ypred = [model(x) for x in XS]
        loss = sum((yout - ygt) ** 2 for ygt, yout in zip(YS, ypred))
        model.zero_grad()
        loss.backward()
        for p in model.parameters():
            p.data += -learning_rate * p.grad
        losses.append(loss.data)
    return losses


def test_training_loop_follows_the_references_loss_curve():
    fg_losses, ref_losses = lecture_training(MLP), lecture_training(reference.MLP)
    assert fg_losses[0] == ref_losses[0]          # same network, same forward: the same bits
    assert fg_losses == pytest.approx(ref_losses, rel=1e-9, abs=0)
    assert fg_losses[-1] < 0.5 * fg_losses[0]     # and it learns, as in the lecture
