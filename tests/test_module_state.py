"""Module.named_parameters, state_dict and load_state_dict: names that say where each number lives, for
fastgrad.nn, fastgrad.micrograd.nn and a Module of the user's own; loading that checks everything first."""
import math
import random
import struct
from decimal import Decimal
from fractions import Fraction

import numpy as np
import pytest

import fastgrad
import fastgrad.micrograd.nn as micrograd_nn
import fastgrad.nn as seed_nn
from fastgrad import Value
from fastgrad.nn import IncompatibleKeys, Module


def expected_names(nin, nouts):
    """The names of MLP(nin, nouts)'s parameters, written out: each neuron's weights, then its bias."""
    sizes = [nin] + list(nouts)
    return [f"layers.{i}.neurons.{j}.{part}"
            for i in range(len(nouts)) for j in range(sizes[i + 1])
            for part in [f"w.{k}" for k in range(sizes[i])] + ["b"]]


@pytest.mark.parametrize("nn", [seed_nn, micrograd_nn], ids=["fastgrad.nn", "fastgrad.micrograd.nn"])
def test_names_of_the_built_in_classes(nn):
    random.seed(1)
    model = nn.MLP(2, [16, 16, 1])
    named = model.named_parameters()
    assert [name for name, _ in named] == expected_names(2, [16, 16, 1])
    assert len(named) == 337
    params = model.parameters()
    assert all(p is q for (_, p), q in zip(named, params))
    assert dict(named)["layers.0.neurons.3.w.1"] is model.layers[0].neurons[3].w[1]
    assert dict(named)["layers.0.neurons.3.b"] is model.layers[0].neurons[3].b
    neuron = nn.Neuron(3)
    assert neuron.named_parameters() == [("w.0", neuron.w[0]), ("w.1", neuron.w[1]), ("w.2", neuron.w[2]),
                                         ("b", neuron.b)]
    layer = nn.Layer(2, 2)
    assert [name for name, _ in layer.named_parameters()] == ["neurons.0.w.0", "neurons.0.w.1", "neurons.0.b",
                                                               "neurons.1.w.0", "neurons.1.w.1", "neurons.1.b"]


class Custom(Module):
    """A user's module: a nested list of weights, a submodule, a dict of layers, a shared Value, a cycle,
    a cached output (not a parameter) and parameters() in an order of its own."""

    def __init__(self):
        self.table = [[Value(1.0), Value(2.0)], [Value(3.0)]]
        self.head = seed_nn.Neuron(2)
        self.blocks = {"first": seed_nn.Layer(2, 1), 7: seed_nn.Neuron(1)}
        self.scale = Value(0.5)
        self.alias = self.scale
        self.parent = self
        self.out = self.scale * 2

    def parameters(self):
        return [self.scale] + self.head.parameters() + [v for row in self.table for v in row] \
            + self.blocks["first"].parameters()


def test_names_of_a_module_of_ones_own():
    model = Custom()
    named = model.named_parameters()
    assert [name for name, _ in named] == [
        "scale", "head.w.0", "head.w.1", "head.b", "table.0.0", "table.0.1", "table.1.0",
        "blocks.first.neurons.0.w.0", "blocks.first.neurons.0.w.1", "blocks.first.neurons.0.b"]
    assert all(p is q for (_, p), q in zip(named, model.parameters()))


def test_a_parameter_listed_twice_is_named_once():
    class Twice(Module):
        def __init__(self):
            self.w = Value(1.0)

        def parameters(self):
            return [self.w, self.w]
    model = Twice()
    assert model.named_parameters() == [("w", model.w)]


def test_a_parameter_no_attribute_leads_to_has_no_name():
    class Hidden(Module):
        def parameters(self):
            return [Value(1.0)]
    with pytest.raises(ValueError, match=r"Hidden.parameters\(\)\[0\] .* is in no attribute of the module"):
        Hidden().named_parameters()


def test_state_dict_is_the_data_in_order():
    random.seed(2)
    model = micrograd_nn.MLP(3, [4, 1])
    state = model.state_dict()
    assert list(state) == expected_names(3, [4, 1])
    assert list(state.values()) == [p.data for p in model.parameters()]
    assert all(type(x) is float for x in state.values())
    model.parameters()[0].data = 99.0
    assert state["layers.0.neurons.0.w.0"] != 99.0


def bits(model):
    return [struct.pack("<d", p.data) for p in model.parameters()]


def test_load_state_dict_makes_the_same_model():
    random.seed(3)
    model = micrograd_nn.MLP(2, [16, 16, 1])
    model.parameters()[5].data = math.nan
    model.parameters()[6].data = -0.0
    random.seed(4)
    other = micrograd_nn.MLP(2, [16, 16, 1])
    assert other.load_state_dict(model.state_dict()) == IncompatibleKeys([], [])
    assert bits(other) == bits(model)


def test_save_and_load_a_model(tmp_path):
    random.seed(3)
    model = seed_nn.MLP(3, [4, 4, 1])
    fastgrad.save(model.state_dict(), tmp_path / "model.json")
    random.seed(8)
    other = seed_nn.MLP(3, [4, 4, 1])
    other.load_state_dict(fastgrad.load(tmp_path / "model.json"))
    assert bits(other) == bits(model)
    assert other([1.0, 2.0, 3.0]).data == model([1.0, 2.0, 3.0]).data


def model_and_state():
    random.seed(5)
    model = micrograd_nn.MLP(2, [3, 1])
    state = {name: float(i) for i, name in enumerate(expected_names(2, [3, 1]))}
    return model, state


def test_strict_load_names_what_is_missing_and_unexpected_and_changes_nothing():
    model, state = model_and_state()
    before = bits(model)
    del state["layers.1.neurons.0.b"], state["layers.0.neurons.2.w.1"]
    state["layers.2.neurons.0.b"] = 1.0
    with pytest.raises(KeyError) as raised:
        model.load_state_dict(state)
    message = str(raised.value)
    assert "missing 'layers.0.neurons.2.w.1', 'layers.1.neurons.0.b'" in message
    assert "unexpected 'layers.2.neurons.0.b'" in message
    assert bits(model) == before


def test_a_long_list_of_missing_names_is_cut_short():
    model, _ = model_and_state()
    with pytest.raises(KeyError, match="missing 'layers.0.neurons.0.w.0', .* and 3 more"):
        model.load_state_dict({})


def test_load_without_strict_loads_what_matches():
    model, state = model_and_state()
    del state["layers.1.neurons.0.b"]
    state["extra"] = 1.0
    result = model.load_state_dict(state, strict=False)
    assert result == IncompatibleKeys(missing_keys=["layers.1.neurons.0.b"], unexpected_keys=["extra"])
    assert result.missing_keys == ["layers.1.neurons.0.b"]
    assert [p.data for p in model.parameters()][:-1] == [float(i) for i in range(12)]
    assert model.parameters()[-1].data == 0.0        # micrograd's bias, as it was


@pytest.mark.parametrize("bad, error, message", [
    ("1.0", TypeError, "state['layers.0.neurons.1.b'] must be a real number, not 'str'"),
    (None, TypeError, "not 'NoneType'"),
    (True, TypeError, "not 'bool'"),
    (Value(1.0), TypeError, "not 'fastgrad.engine.Value'"),
    (10 ** 400, OverflowError, "state['layers.0.neurons.1.b'] = 1000"),
    (Decimal("sNaN"), ValueError, "state['layers.0.neurons.1.b'] = Decimal('sNaN'): cannot convert signaling NaN"),
])
def test_a_value_that_is_not_a_real_number_changes_nothing(bad, error, message):
    model, state = model_and_state()
    before = bits(model)
    state["layers.0.neurons.1.b"] = bad
    with pytest.raises(error) as raised:
        model.load_state_dict(state)
    assert message in str(raised.value)
    assert bits(model) == before


@pytest.mark.parametrize("number", [Decimal("0.1"), Decimal("-1e400"), Fraction(1, 3), np.float32(0.1), np.int64(-7),
                                    np.float64(2.5), np.array(0.25)], ids=repr)
def test_what_value_data_takes_loads_as_value_data_takes_it(number):
    """Value.data takes any number with __float__ or __index__ (Decimal is no numbers.Real, but Value takes it)."""
    model, state = model_and_state()
    state["layers.0.neurons.0.w.1"] = number
    model.load_state_dict(state)
    expected = Value(1.0)
    expected.data = number
    assert struct.pack("<d", model.parameters()[1].data) == struct.pack("<d", expected.data)
    assert expected.data == float(number)


def test_numbers_of_any_real_kind_are_loaded_as_floats():
    model, state = model_and_state()
    state["layers.0.neurons.0.w.0"] = np.float32(0.5)
    state["layers.0.neurons.0.w.1"] = 3
    state["layers.0.neurons.0.b"] = math.inf
    model.load_state_dict(state)
    assert [p.data for p in model.parameters()][:3] == [0.5, 3.0, math.inf]


@pytest.mark.parametrize("state", [[1.0, 2.0], None, "state.json"])
def test_a_state_that_is_not_a_dict_is_a_type_error(state):
    model, _ = model_and_state()
    with pytest.raises(TypeError, match="state must be a dict of name -> number"):
        model.load_state_dict(state)
