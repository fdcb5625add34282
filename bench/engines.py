"""The engines the suite compares, found at run time; an engine that cannot be imported is skipped with a note.

Every graph engine is used through the same few calls (`leaf(x)`, `*`, `+`, `.tanh()`, `.relu()`,
`.backward()`), so one workload body runs on all of them. Plain floats have no graph: the workloads give them
the same arithmetic with a hand-written backward instead (the floor any graph engine is measured against).
"""
import importlib.metadata
import os
import sys


class Engine:
    """One engine: how to make a leaf, whether it has tanh, its version, and its MLP classes.

    mlp: micrograd's MLP(nin, nouts) on this engine (ReLU layers, linear output), or None;
    seed_mlp: the notebook's tanh MLP(nin, nouts) on this engine, or None;
    moons_model: for an engine that computes a whole model at once rather than node by node (PyTorch tensors,
    CasADi, JAX), moons_model(X, y, nouts) with train_step(X, y, k); such an engine runs the moons demo rows only.
    """

    def __init__(self, name, version, leaf, note, *, has_tanh=True, mlp=None, seed_mlp=None, moons_model=None):
        self.name = name
        self.version = version
        self.leaf = leaf
        self.note = note
        self.has_tanh = has_tanh
        self.is_graph = name != "floats" and moons_model is None
        self.mlp = mlp
        self.seed_mlp = seed_mlp
        self.moons_model = moons_model


def _version(distribution):
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def fastgrad_engine():
    import fastgrad
    import fastgrad.nn

    try:
        from fastgrad.micrograd.nn import MLP
    except ImportError:
        MLP = None
    return Engine("fastgrad", fastgrad.__version__, fastgrad.Value,
                  "compiled Value (the installed package); moons on fastgrad.micrograd.nn.MLP",
                  mlp=MLP, seed_mlp=fastgrad.nn.MLP)


def micrograd_engine():
    from micrograd.engine import Value
    from micrograd.nn import MLP

    # micrograd 0.1.0's Value has no tanh: the tanh workloads list it as n/a rather than patch it.
    return Engine("micrograd", _version("micrograd"), Value,
                  "micrograd from PyPI as users run it (cyclic GC on); it has no tanh", has_tanh=False, mlp=MLP)


def seed_engine():
    from fastgrad import reference

    return Engine("seed", "fastgrad.reference", reference.Value,
                  "the notebook's Value in plain Python, GC on", seed_mlp=reference.MLP)


def floats_engine():
    return Engine("floats", f"Python {sys.version.split()[0]}", float,
                  "plain Python floats: the same arithmetic, a hand-written backward, no graph")


def torch_engine():
    import torch

    from baselines import TorchScalarMLP

    # One thread: 0-d tensors gain nothing from more, and the machine is shared.
    torch.set_num_threads(1)

    def leaf(x):
        return torch.tensor(x, dtype=torch.float64, requires_grad=True)

    return Engine("torch", torch.__version__, leaf, "PyTorch autograd on 0-d float64 tensors, 1 thread",
                  mlp=lambda nin, nouts: TorchScalarMLP(nin, nouts, leaf))


def torch_tensor_engine():
    import torch

    from baselines import TorchTensorMoons

    return Engine("torch-tensor", torch.__version__, None,
                  "PyTorch as its users write the demo: nn.Linear in float64 over the whole batch, torch.optim.SGD, "
                  "1 thread", moons_model=TorchTensorMoons)


def casadi_engine():
    import casadi

    from baselines import CasadiMoons

    return Engine("casadi", casadi.__version__, None,
                  "CasADi's SX virtual machine: the loss and its gradient as one Function, built once",
                  moons_model=CasadiMoons)


JAX_XLA_FLAGS = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


def jax_engine():
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + JAX_XLA_FLAGS).strip()   # read at import
    import jax

    from baselines import JaxMoons

    jax.config.update("jax_enable_x64", True)
    # The flags alone still leave XLA's CPU client a thread pool of one thread per core, over which it spreads
    # a step (measured here: two threads busy at 100,000 points). It sizes that pool from the CPUs the process
    # may use when the client is made, so the client is made while the process may use one CPU; the affinity
    # is given back at once, for the engines that run threads of their own.
    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    if allowed and len(allowed) > 1:
        os.sched_setaffinity(0, {min(allowed)})
    try:
        platform = jax.devices()[0].platform
    finally:
        if allowed and len(allowed) > 1:
            os.sched_setaffinity(0, allowed)
    return Engine("jax", jax.__version__, None,
                  f"JAX as its users write the demo: the whole step (loss, gradient, SGD update) one jax.jit, float64 "
                  f"(jax_enable_x64), block_until_ready, on {platform}; one thread: XLA_FLAGS='{JAX_XLA_FLAGS}' and "
                  "its CPU client made while the process may use one core (its pool is sized from that)",
                  moons_model=JaxMoons)


FINDERS = {
    "fastgrad": fastgrad_engine,
    "micrograd": micrograd_engine,
    "seed": seed_engine,
    "floats": floats_engine,
    "torch": torch_engine,
    "torch-tensor": torch_tensor_engine,
    "casadi": casadi_engine,
    "jax": jax_engine,
}


def discover(names=None):
    """(available engines, {missing engine: why}) in the suite's column order."""
    found, missing = [], {}
    for name, finder in FINDERS.items():
        if names and name not in names:
            continue
        try:
            found.append(finder())
        except ImportError as exc:
            missing[name] = f"not installed ({exc}): skipped"
    return found, missing
