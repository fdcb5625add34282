"""Build the compiled modules: the engine and the optimizers' loops. Everything else about the package lives in
pyproject.toml."""
from Cython.Build import cythonize
from setuptools import Extension, setup

extensions = [
    Extension("fastgrad.engine", ["fastgrad/engine.pyx"]),
    Extension("fastgrad._optim", ["fastgrad/_optim.pyx"]),     # cimports engine.pxd
]

setup(
    ext_modules=cythonize(
        extensions,
        language_level=3,
        compiler_directives={
            # The engine raises its own errors before every division a user can reach, so C
            # division is not enabled globally; functions that want IEEE division say so.
            "binding": False,
            "embedsignature": True,
        },
    ),
)
