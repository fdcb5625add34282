"""Fuzzing: random graphs from random ops on extreme numbers, fastgrad against the pure-Python reference.

Wherever the reference (tests/reference.py) computes a step, fastgrad gives the same data bit for bit and
grads within 1e-9 of the terms' sizes; wherever the reference raises, fastgrad raises the same type and
its graph stays as it was; and nothing crashes. The comparison is test_engine's `check_recipe`; what is
new here are the numbers: zeros of both signs, subnormals, the largest doubles, inf, nan, negative bases,
exponents far out of range, ints beyond a double.
"""
import math
import os
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from support import check_recipe, recipe_strategy, run_python

LARGEST = sys.float_info.max
SMALLEST_NORMAL = sys.float_info.min
EXTREME_FLOATS = [0.0, -0.0, 5e-324, -5e-324, SMALLEST_NORMAL, -SMALLEST_NORMAL, 1e-300, 1e-8, 1e16, 1e300,
                  -1e300, LARGEST, -LARGEST, math.inf, -math.inf, math.nan, 1.0, -1.0, 0.5, -0.5, 2.0, -2.0,
                  -8.0, 709.78, 710.0, -745.2, -746.0, 1 / 3]
# Exponents that overflow, underflow, or are fractional (a negative base then has no real power).
EXTREME_EXPONENTS = [1e308, -1e308, 1075, -1075, 1024, 1023.5, 0.5, -0.5, 1 / 3, 3, -3, 0, 2**53, 10**400]

leaf_numbers = st.one_of(st.sampled_from(EXTREME_FLOATS), st.floats(), st.floats(-3, 3))
operand_numbers = st.one_of(st.sampled_from(EXTREME_FLOATS + EXTREME_EXPONENTS), st.floats(),
                            st.integers(-2000, 2000))
recipes = recipe_strategy(leaf_numbers, operand_numbers, max_leaves=4, max_steps=12)

TESTS = os.path.dirname(os.path.abspath(__file__))      # for a fresh interpreter to import this module
FUZZ_SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])


@settings(max_examples=300, **FUZZ_SETTINGS)
@given(recipes)
def test_extreme_random_graphs_agree_with_the_reference(recipe):
    check_recipe(recipe)


def fuzz(examples):
    """Run `examples` random recipes through check_recipe; return how many ran."""
    ran = []

    @settings(max_examples=examples, database=None, **FUZZ_SETTINGS)
    @given(recipes)
    def one(recipe):
        ran.append(1)
        check_recipe(recipe)

    one()
    return len(ran)


def fuzz_in_a_fresh_interpreter(examples, tmp_path):
    # A crash of the engine ends that interpreter, and fails this test, instead of ending pytest.
    return int(run_python(f"""
        import sys
        sys.path.insert(0, {TESTS!r})
        import test_fuzz
        print(test_fuzz.fuzz({examples}), file=sys.stderr)
        print("ok")
    """, tmp_path, PYTHONFAULTHANDLER="1").strip().splitlines()[-1])


def test_a_batch_in_a_fresh_interpreter(tmp_path):
    assert fuzz_in_a_fresh_interpreter(300, tmp_path) >= 300


@pytest.mark.slow
def test_a_long_run_in_a_fresh_interpreter(tmp_path):
    ran = fuzz_in_a_fresh_interpreter(12_000, tmp_path)
    print(f"{ran} random graphs agreed with the reference")
    assert ran >= 10_000
