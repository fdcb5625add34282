"""Side-by-side timing: warm-up, calibrated inner loops, interleaved repeats, medians.

A sampler is a function `sampler(inner) -> {phase: seconds}` that runs one workload `inner` times on one
engine and returns the time spent in each phase (e.g. forward and backward). The engines of one workload
are measured in turns within each repeat, in a rotating order, so that a burst of noise on this shared
machine hits every engine alike rather than one of them.
"""
import gc
import statistics
import time


def clock():
    """CPU seconds of this process: on a shared machine, time spent waiting for a core does not count."""
    return time.process_time()


# A run shorter than this is preceded, in every sample, by an untimed run of its own: the previous engine's
# turn has just filled the caches with its graph, and a short run would otherwise be timed on cold caches
# (measured here: 3x slower plain-float code right after PyTorch's turn), unlike any training loop.
WARM_UP_BELOW = 0.05


def calibrate(sampler, min_seconds):
    """(runs per sample, seconds per run): enough runs in a row for a sample of min_seconds; the first call warms up."""
    inner = 1
    while True:
        spent = sum(sampler(inner).values())
        if spent >= min_seconds or inner >= 10**7:
            return inner, spent / inner
        inner *= 10 if spent < min_seconds / 20 else 2


def interleaved(samplers, units, repeats, min_seconds, progress=None):
    """Median seconds per unit, per engine and phase, over `repeats` rounds taken in turns.

    samplers: {engine: sampler}; units: how many ops, nodes or steps one run is (to divide by).
    min_seconds: how long one sample should at least take; None runs each sample once (for samplers that
    count something exact, such as bytes, rather than time).
    Returns {engine: {phase: {"median": s, "q1": s, "q3": s, "samples": n, "inner": k}}}; a sample of several
    phases also gets a "total" phase, their sum.
    """
    engines = list(samplers)
    if not engines:           # every engine skipped this workload
        return {}
    inner, warm_up = {}, {}
    for name in engines:
        if progress:
            progress(f"warm-up {name}")
        gc.collect()
        if min_seconds is None:
            inner[name], warm_up[name] = 1, False
        else:
            inner[name], per_run = calibrate(samplers[name], min_seconds)
            warm_up[name] = per_run < WARM_UP_BELOW
    per_unit = {name: {} for name in engines}
    for r in range(repeats):
        order = engines[r % len(engines):] + engines[:r % len(engines)]
        for name in order:
            if progress:
                progress(f"repeat {r + 1}/{repeats} {name}")
            # Each engine starts from a clean heap: garbage another engine left behind (micrograd's and the
            # seed's closures make reference cycles) is collected here, untimed, not during someone else's turn.
            gc.collect()
            if warm_up[name]:
                samplers[name](1)
            sample = samplers[name](inner[name])
            if len(sample) > 1:
                sample["total"] = sum(sample.values())
            for phase, seconds in sample.items():
                per_unit[name].setdefault(phase, []).append(seconds / (inner[name] * units))
    return {
        name: {phase: summary(values, inner[name]) for phase, values in phases.items()}
        for name, phases in per_unit.items()
    }


def summary(values, inner):
    values = sorted(values)
    if len(values) >= 4:
        q1, _, q3 = statistics.quantiles(values, n=4)
    else:
        q1, q3 = values[0], values[-1]
    return {"median": statistics.median(values), "q1": q1, "q3": q3, "samples": len(values), "inner": inner}
