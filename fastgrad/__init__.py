"""fastgrad: micrograd's scalar autograd with a compiled Value node."""
try:
    from fastgrad.engine import CustomOp, Value, op
except ModuleNotFoundError as missing:
    if missing.name != "fastgrad.engine":
        raise
    # Python found a fastgrad folder without the compiled engine: the source checkout, which the current
    # directory (python -m, python -c, a notebook) puts ahead of the installed package.
    raise ImportError(
        f"fastgrad was imported from {__path__[0]}, which has no compiled engine. If that is fastgrad's source "
        "folder, Python took it from the current directory instead of the installed package: run Python from "
        "another directory (after `pip install .`), or run the demo as the `fastgrad` command."
    ) from missing
from fastgrad import losses, optim
from fastgrad._grad import grad
from fastgrad._version import __version__
from fastgrad.checkpoint import load, save
from fastgrad.micrograd import install_as_micrograd
from fastgrad.nn import MLP, Layer, Module, Neuron
from fastgrad.batched import BatchedGraph
from fastgrad.replay import CompiledGraph, compile
from fastgrad.viz import draw_dot, trace

__all__ = ["Value", "op", "CustomOp", "grad", "compile", "CompiledGraph", "BatchedGraph", "Module", "Neuron", "Layer",
           "MLP", "trace", "draw_dot", "install_as_micrograd", "optim", "losses", "save", "load", "__version__"]
