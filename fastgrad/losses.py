"""fastgrad.losses: the usual losses, each a Value built from the engine's own ops, so that backward() gives
the gradients and a recorded graph replays them.

Batches are sequences of the same length: predictions (Values, or numbers, which become leaves) and
targets (numbers or Values). A batch loss is the mean over the batch, as torch's default reduction.
"""
from __future__ import annotations

import numbers
from collections.abc import Iterable

from fastgrad.engine import Value, type_name

__all__ = ["mse", "hinge", "binary_cross_entropy_with_logits", "cross_entropy"]


def mse(preds: Iterable[Value | float], targets: Iterable[Value | float]) -> Value:
    """Mean squared error: mean of (pred - target) ** 2."""
    preds, targets = _batch(preds, "preds", targets, "targets")
    return _mean([(p - t) ** 2 for p, t in zip(preds, targets)])


def hinge(scores: Iterable[Value | float], labels: Iterable[Value | float]) -> Value:
    """micrograd's max-margin loss: mean of relu(1 - label * score), with labels -1 and +1."""
    scores, labels = _batch(scores, "scores", labels, "labels")
    return _mean([(1 - y * s).relu() for s, y in zip(scores, labels)])


def binary_cross_entropy_with_logits(logits: Iterable[Value | float], targets: Iterable[Value | float]) -> Value:
    """Binary cross-entropy of sigmoid(logit) against target (a probability, usually 0 or 1), from the logit.

    Each term is softplus(logit) - logit * target, which equals -t*log(sigmoid(x)) - (1-t)*log(1-sigmoid(x))
    and cannot overflow: softplus(1000) is 1000 and softplus(-1000) is 0, so the loss at |logit| = 1000 is
    exact, and the gradient, sigmoid(logit) - target, is exact there too. The form costs precision in
    one place only: a confident right answer (logit 40, target 1) has a loss far below 1 that comes out of
    a difference of two numbers near the logit, so it is right to about 1e-16 * |logit|, not to its last digit.
    """
    logits, targets = _batch(logits, "logits", targets, "targets")
    return _mean([x.softplus() - x * t for x, t in zip(logits, targets)])


def cross_entropy(logits: Iterable[Value | float], target: int) -> Value:
    """Cross-entropy of one sample: -log(softmax(logits)[target]), with logits a list of Values (one per
    class) and target the index of the right class.

    Computed as log(sum(exp(x - m))) - (x[target] - m) with m the largest logit's data when the loss is
    built, so that no exp overflows (the largest shifted logit is 0) and the sum is at least 1 (its log is
    finite): the loss at logits of +-1000 is exact, and each logit's gradient is softmax - one_hot, exact
    too. m is a number, not a node: it cancels out of the value and the gradients for any m. A graph
    replayed with other leaf values keeps the m recorded here, which stays safe as long as the new logits
    stay within about 700 of it (beyond that an exp overflows, or all of them underflow and the log fails).
    """
    logits = _values(logits, "logits")
    if not logits:
        raise ValueError("cross_entropy needs at least one logit")
    if isinstance(target, bool) or not isinstance(target, numbers.Integral):
        raise TypeError(f"target must be a class index (an int), not {type_name(target)!r}")
    if not 0 <= target < len(logits):
        raise ValueError(f"target {target} is not a class index for {len(logits)} logits (0 to {len(logits) - 1})")
    shift = max(x.data for x in logits)
    shifted = [x - shift for x in logits]
    return _sum([x.exp() for x in shifted]).log() - shifted[int(target)]


# ---------------------------------------------------------------------------------------------------

def _values(items: Iterable[Value | float], name: str) -> list[Value]:
    """items as a list of Values: numbers become leaves; anything else is a TypeError naming it."""
    if type(items) is Value or not hasattr(items, "__iter__"):  # type: ignore[comparison-overlap]
        raise TypeError(f"{name} must be a sequence of Values, not {type_name(items)!r}")
    out = []
    for i, x in enumerate(items):
        if type(x) is not Value:
            if isinstance(x, bool) or not isinstance(x, numbers.Real):
                raise TypeError(f"{name}[{i}] must be a Value or a real number, not {type_name(x)!r}")
            x = Value(x)
        out.append(x)
    return out


def _batch(preds: Iterable[Value | float], preds_name: str, targets: Iterable[Value | float],
           targets_name: str) -> tuple[list[Value], list[Value | float]]:
    """Both sides of a batch loss as lists, checked: preds become Values, targets stay numbers or Values."""
    preds = _values(preds, preds_name)
    if type(targets) is Value or not hasattr(targets, "__iter__"):  # type: ignore[comparison-overlap]
        raise TypeError(f"{targets_name} must be a sequence, not {type_name(targets)!r}")
    targets = list(targets)
    for i, t in enumerate(targets):
        if type(t) is not Value and (isinstance(t, bool) or not isinstance(t, numbers.Real)):
            raise TypeError(f"{targets_name}[{i}] must be a real number or a Value, not {type_name(t)!r}")
    if len(preds) != len(targets):
        raise ValueError(f"{len(preds)} {preds_name} but {len(targets)} {targets_name}: one each per sample")
    if not preds:
        raise ValueError(f"empty batch: no {preds_name}")
    return preds, targets


def _sum(terms: list[Value]) -> Value:
    """terms[0] + terms[1] + ..., left to right, without the extra `0 +` node of sum()."""
    total = terms[0]
    for term in terms[1:]:
        total = total + term
    return total


def _mean(terms: list[Value]) -> Value:
    return _sum(terms) / len(terms)
