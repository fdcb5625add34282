"""fastgrad: micrograd's scalar autograd with a compiled Value node."""
from fastgrad import losses, optim
from fastgrad._version import __version__
from fastgrad.checkpoint import load, save
from fastgrad.engine import Value
from fastgrad.micrograd import install_as_micrograd
from fastgrad.nn import MLP, Layer, Module, Neuron
from fastgrad.replay import CompiledGraph, compile
from fastgrad.viz import draw_dot, trace

__all__ = ["Value", "compile", "CompiledGraph", "Module", "Neuron", "Layer", "MLP", "trace", "draw_dot",
           "install_as_micrograd", "optim", "losses", "save", "load", "__version__"]
