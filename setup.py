"""Build the compiled modules: the engine, the replay and the optimizers' loops. Everything else about the package
lives in pyproject.toml."""
import os
import sys

from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

COMPILER_DIRECTIVES = {
    # No bound-method wrappers for module functions: plain C functions, as fast to call as builtins.
    "binding": False,
    # Signatures in docstrings, for help() and editors (the .pyi stubs carry the types).
    "embedsignature": True,
    # C division is NOT enabled globally: a division a user can reach must raise ZeroDivisionError.
    # The kernels that want IEEE division say so with @cython.cdivision (fastgrad/_ops.pxd).
}


class BuildExt(build_ext):
    def build_extensions(self):
        if self.compiler.compiler_type == "unix":      # gcc and clang; MSVC does not contract by default
            # The wheel ships no debug information nor symbol table (the interpreter's CFLAGS carry -g: 0.2.0's
            # three modules took 1.75 MB with them, 0.27 MB without) unless the CFLAGS of the environment ask for
            # -g (CONTRIBUTING: the sanitizer build).
            debug_info = any(flag.startswith("-g") and flag != "-g0" for flag in os.environ.get("CFLAGS", "").split())
            # An interpreter built with a run path to its own lib folder (pyenv's) puts that path of the build
            # machine into every extension: nothing of ours is there.
            self.compiler.linker_so = [arg for arg in self.compiler.linker_so if not arg.startswith("-Wl,-rpath,")]
            for extension in self.extensions:
                # GCC contracts `acc + w * x` into one fused multiply-add wherever the target has FMA
                # (aarch64, x86 with -march=native): one rounding instead of the two Python makes, so
                # fastgrad would no longer give micrograd's numbers bit for bit.
                extension.extra_compile_args.append("-ffp-contract=off")
                if not debug_info:
                    extension.extra_compile_args.append("-g0")
                    if sys.platform.startswith("linux"):
                        extension.extra_link_args.append("-s")     # the symbol table too, as `strip` does
            # GCC's -O3 unrolls and jams a sum's terms two by two in the lane loops, and then vectorises them
            # with emulated gathers: four times slower. Clang has no such pass and ignores the flag.
            self.extension_named("fastgrad.batched").extra_compile_args.append("-fno-loop-unroll-and-jam")
        super().build_extensions()

    def extension_named(self, name):
        return next(extension for extension in self.extensions if extension.name == name)


extensions = [
    # The node allocator (src/) is plain C compiled into the engine: its fast paths are inline in the
    # header, so allocating a node costs no call across a module or library boundary.
    Extension("fastgrad.engine", ["fastgrad/engine.pyx", "fastgrad/src/node_memory.c"], include_dirs=["fastgrad/src"]),
    # The compiled replay reads and writes the nodes through engine.pxd's layout, and calls the engine's
    # sort and its list of lagging graphs once per graph or per pass, never per node.
    # The recorder both replays share (compile's program), then the replays on the nodes' own numbers.
    Extension("fastgrad._recording", ["fastgrad/_recording.pyx"], include_dirs=["fastgrad/src"]),
    Extension("fastgrad.replay", ["fastgrad/replay.pyx"], include_dirs=["fastgrad/src"]),
    # The batched replay: the recorder's program run over blocks of samples by lane loops compiled per SIMD width.
    Extension("fastgrad.batched", ["fastgrad/batched.pyx", "fastgrad/src/lanes.c"], include_dirs=["fastgrad/src"]),
    # The optimizers' loops over a C array of parameter nodes (engine.pxd's layout).
    Extension("fastgrad._optim", ["fastgrad/_optim.pyx"], include_dirs=["fastgrad/src"]),
    # grad(): its sweeps, and the derivative graphs it builds out of nodes (engine.pxd's layout and makers).
    Extension("fastgrad._grad", ["fastgrad/_grad.pyx"], include_dirs=["fastgrad/src"]),
]

setup(
    ext_modules=cythonize(
        extensions,
        language_level=3,
        compiler_directives=COMPILER_DIRECTIVES,
        build_dir="build/cython",           # generated C stays out of the package folder
    ),
    cmdclass={"build_ext": BuildExt},
)
