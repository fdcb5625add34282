"""Compile every .c and .h under fastgrad/src warning-free (-Wall -Wextra -Werror) for each target a wheel is
built for that a Debian machine can compile for: gcc and clang here (Linux x86-64), gcc's aarch64 cross compiler
(Linux arm64) and the mingw-w64 cross compiler (Windows x86-64). Each header is compiled as a file that includes
only it, so a header that misses an include of its own fails too. Files are found, not listed: a new one is checked
from the start. Usage: python .ci/check_c.py [FOLDER] (default: this checkout's fastgrad/src; CI installs the
compilers, see CONTRIBUTING).

Python's headers: the Linux targets take this interpreter's. Its pyconfig.h describes an LP64 little-endian glibc
Linux, which arm64 Linux is as well. No pyconfig.h of a Windows CPython is packaged by Debian or PyPI, so the
Windows compile leaves out the files that include <Python.h> (directly or through a header of src/), and says
which; the Windows wheels' build (.github/workflows/wheels.yml) compiles those with MSVC. The branches for MSVC
(_MSC_VER) and macOS are compiled only there too."""
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile

SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fastgrad", "src")
WARNINGS = ["-Wall", "-Wextra", "-Werror", "-O2", "-ffp-contract=off"]     # -O2: the flow analysis warns more
# (what, compiler, whether Python's headers exist for it)
TARGETS = [
    ("Linux x86-64, gcc", ["gcc"], True),
    ("Linux x86-64, gcc, -DFG_PORTABLE_ONLY", ["gcc", "-DFG_PORTABLE_ONLY"], True),
    ("Linux x86-64, clang", ["clang"], True),
    ("Linux arm64, gcc", ["aarch64-linux-gnu-gcc"], True),
    ("Windows x86-64, mingw-w64 gcc", ["x86_64-w64-mingw32-gcc"], False),
]
INCLUDE = re.compile(r'^\s*#\s*include\s*([<"])([^>"]+)[>"]', re.M)


def sources(src):
    return sorted(os.path.join(folder, name) for folder, _, names in os.walk(src) for name in names
                  if name.endswith((".c", ".h")))


def needs_python(path, seen=()):
    """Whether path includes <Python.h>, itself or through a header of src/."""
    with open(path, encoding="utf-8") as file:
        for kind, name in INCLUDE.findall(file.read()):
            if name == "Python.h":
                return True
            local = os.path.join(os.path.dirname(path), name)
            if kind == '"' and local not in seen and os.path.exists(local) and needs_python(local, (*seen, path)):
                return True
    return False


def python_include_flags(shim):
    """-I flags for this interpreter's headers. Debian's pyconfig.h only picks the file of the target's
    architecture (<aarch64-linux-gnu/python3.X/pyconfig.h>, absent here): the shim gives it the native one."""
    include = sysconfig.get_paths()["include"]
    multiarch = sysconfig.get_config_var("MULTIARCH")
    if multiarch:
        native = os.path.join(os.path.dirname(include), multiarch, os.path.basename(include), "pyconfig.h")
        if os.path.exists(native):
            for triplet in ("aarch64-linux-gnu",):
                os.makedirs(os.path.join(shim, triplet, os.path.basename(include)), exist_ok=True)
                shutil.copy(native, os.path.join(shim, triplet, os.path.basename(include), "pyconfig.h"))
    return ["-I", include, "-I", shim]


def main(src=SRC):
    files = sources(src)
    failed, missing = [], []
    with tempfile.TemporaryDirectory() as work:
        python_flags = python_include_flags(os.path.join(work, "shim"))
        for what, compiler, has_python in TARGETS:
            if shutil.which(compiler[0]) is None:
                missing.append(compiler[0])
                continue
            left_out = [f for f in files if not has_python and needs_python(f)]
            compiled = 0
            for path in files:
                if path in left_out:
                    continue
                unit = path
                if path.endswith(".h"):
                    unit = os.path.join(work, "unit.c")
                    with open(unit, "w", encoding="utf-8") as file:
                        file.write(f'#include "{os.path.basename(path)}"\n')
                command = [*compiler, *WARNINGS, "-I", src, *(python_flags if has_python else []),
                           "-c", unit, "-o", os.path.join(work, "unit.o")]
                result = subprocess.run(command, capture_output=True, text=True)
                if result.returncode != 0:
                    failed.append(f"{what}: {os.path.relpath(path, src)}\n{result.stderr}")
                else:
                    compiled += 1
            print(f"{what}: {compiled} of {len(files)} files compiled warning-free"
                  + (f" (left out, they include <Python.h>: {', '.join(os.path.basename(f) for f in left_out)})"
                     if left_out else ""))
    for failure in failed:
        print(f"FAILED {failure}", file=sys.stderr)
    if missing:
        print(f"not installed: {', '.join(missing)} (CONTRIBUTING says which Debian packages bring them)",
              file=sys.stderr)
    return 1 if failed or missing or not files else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
