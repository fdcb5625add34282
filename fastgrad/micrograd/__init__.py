"""micrograd 0.1.0's API on fastgrad's compiled engine.

Two ways to run micrograd code on fastgrad:

- change the imports: ``from fastgrad.micrograd.engine import Value``, ``from fastgrad.micrograd.nn import MLP``;
- or change nothing but call ``fastgrad.install_as_micrograd()`` before the program imports micrograd.
"""
import sys

from fastgrad.micrograd import engine, nn

__all__ = ["engine", "nn", "install_as_micrograd"]


def install_as_micrograd():
    """Make ``import micrograd`` (and micrograd.engine, micrograd.nn) give fastgrad's modules.

    After this call, ``import micrograd``, ``from micrograd.engine import Value`` and
    ``from micrograd.nn import MLP`` resolve to fastgrad.micrograd and its modules, through sys.modules,
    so an unmodified micrograd program runs on fastgrad. Calling it again does nothing more.

    Call it before anything imports micrograd. If the real micrograd package is already imported in this
    process, this raises RuntimeError and leaves it in place: code that already holds micrograd's Value
    would otherwise mix two kinds of nodes that cannot be combined, or quietly keep running at
    micrograd's speed. An error at the call says what to move; a warning is easy to miss.
    """
    package = sys.modules[__name__]
    ours = {"micrograd": package, "micrograd.engine": engine, "micrograd.nn": nn}
    theirs = {
        name: module
        for name, module in sys.modules.items()
        if (name == "micrograd" or name.startswith("micrograd.")) and module is not ours.get(name)
    }
    if theirs:
        where = getattr(theirs.get("micrograd"), "__file__", None) or ", ".join(sorted(theirs))
        raise RuntimeError(
            f"micrograd is already imported ({where}); fastgrad.install_as_micrograd() must run before "
            "the first 'import micrograd' (for instance at the top of the main script)"
        )
    sys.modules.update(ours)
