"""Build the compiled modules: the engine, the replay and the optimizers' loops. Everything else about the package
lives in pyproject.toml."""
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
            for extension in self.extensions:
                # GCC contracts `acc + w * x` into one fused multiply-add wherever the target has FMA
                # (aarch64, x86 with -march=native): one rounding instead of the two Python makes, so
                # fastgrad would no longer give micrograd's numbers bit for bit.
                extension.extra_compile_args.append("-ffp-contract=off")
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
