"""Check that the wheels cibuildwheel would build are the ones the README's table promises (README "Wheels").

Runs `cibuildwheel --print-build-identifiers --platform P` for linux, macos and windows (it reads pyproject.toml's
[tool.cibuildwheel]; nothing is built), prints each list, and exits 1 with the differences. Usage, from the
checkout with cibuildwheel installed: python .ci/check_wheel_list.py"""
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
START, END = "<!-- wheels:start -->", "<!-- wheels:end -->"


def promised(readme):
    """{identifier} from the table's rows: `platform` in the second column, "3.X to 3.Y" in the third."""
    table = readme.split(START, 1)[1].split(END, 1)[0]
    identifiers = set()
    for row in table.splitlines():
        cells = [cell.strip() for cell in row.strip().strip("|").split("|")]
        platform = re.fullmatch(r"`(\w+)`", cells[1]) if len(cells) == 3 else None
        versions = re.fullmatch(r"3\.(\d+) to 3\.(\d+)", cells[2]) if platform else None
        if platform and versions:
            low, high = map(int, versions.groups())
            identifiers |= {f"cp3{minor}-{platform.group(1)}" for minor in range(low, high + 1)}
        elif platform:
            sys.exit(f"README wheels table: cannot read the versions {cells[2]!r}")
    return identifiers


def built():
    identifiers = set()
    for platform in ("linux", "macos", "windows"):
        listed = subprocess.run([sys.executable, "-m", "cibuildwheel", "--print-build-identifiers", "--platform",
                                 platform], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
        print(f"{platform}: {' '.join(listed)}")
        identifiers |= set(listed)
    return identifiers


def main():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as file:
        readme = file.read()
    promise, made = promised(readme), built()
    for identifier in sorted(promise - made):
        print(f"the README promises {identifier}, which cibuildwheel does not build", file=sys.stderr)
    for identifier in sorted(made - promise):
        print(f"cibuildwheel builds {identifier}, which the README does not list", file=sys.stderr)
    if promise == made:
        print(f"the README's table lists the {len(made)} wheels cibuildwheel builds")
    return 0 if promise == made and made else 1


if __name__ == "__main__":
    sys.exit(main())
