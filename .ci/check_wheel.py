"""Check a repaired Linux wheel as an index and a user's pip see it: python .ci/check_wheel.py WHEEL.

- its platform tag is manylinux (any pip on a glibc at least as new installs it): prints which glibc;
- it ships no sources (.pyx, .pxd, .c, .h) and nothing of the checkout beyond the package (tests, bench);
- its extension modules are stripped (no debug sections, no symbol table), carry no run path (a folder of the
  build machine), need no library besides the C library's, and export none of the engine's own C (fg_*).

Exits 1 with what is wrong. Reads the ELF files with pyelftools, which auditwheel installs."""
import re
import sys
import zipfile

from elftools.elf.dynamic import DynamicSection
from elftools.elf.elffile import ELFFile

SOURCES = re.compile(r"\.(pyx|pxd|c|h|cpp)$")
# The C library and its parts: every Linux has them, so auditwheel grafts none of them into a wheel.
SYSTEM_LIBRARIES = re.compile(r"^(libc|libm|libpthread|libdl|librt)\.so\.\d+$|^ld-linux")


def problems(path):
    found = []
    name = path.rsplit("/", 1)[-1]
    platforms = name[:-len(".whl")].split("-")[-1].split(".")
    glibc = sorted(tuple(map(int, match.groups())) for match in map(re.compile(r"manylinux_(\d+)_(\d+)_").match,
                                                                       platforms) if match)
    if not glibc:
        found.append(f"platform tag {'.'.join(platforms)} is not manylinux: pip on another machine will not take it")
    else:
        print(f"{name}: manylinux, needs glibc {glibc[0][0]}.{glibc[0][1]} or newer")
    with zipfile.ZipFile(path) as wheel:
        names = wheel.namelist()
        metadata = wheel.read(next(n for n in names if n.endswith(".dist-info/WHEEL"))).decode()
        tags = [line.split(":", 1)[1].strip() for line in metadata.splitlines() if line.startswith("Tag:")]
        if not all(tag.rsplit("-", 1)[1] in platforms for tag in tags):
            found.append(f"the WHEEL file's tags {tags} do not match the file name's {platforms}")
        found += [f"ships a source file: {n}" for n in names if SOURCES.search(n)]
        found += [f"ships what is not the package: {n}" for n in names
                  if not n.startswith(("fastgrad/", "fastgrad-")) and not n.startswith("fastgrad.libs/")]
        modules = [n for n in names if n.endswith(".so")]
        if not modules:
            found.append("has no extension module")
        for module in modules:
            with wheel.open(module) as file:
                found += [f"{module}: {problem}" for problem in elf_problems(ELFFile(file))]
    return found


def elf_problems(elf):
    found = []
    sections = [section.name for section in elf.iter_sections()]
    debug = [name for name in sections if name.startswith((".debug", ".zdebug"))]
    if debug:
        found.append(f"not stripped: debug sections {', '.join(debug)}")
    if ".symtab" in sections:
        found.append("not stripped: a symbol table (.symtab)")
    exported = elf.get_section_by_name(".dynsym")
    internal = sorted(s.name for s in exported.iter_symbols() if s.name.startswith("fg_")) if exported else []
    if internal:
        found.append(f"exports the engine's own C ({', '.join(internal)}): portability.h's FG_HIDDEN did not apply")
    for section in elf.iter_sections():
        if isinstance(section, DynamicSection):
            for tag in section.iter_tags():
                if tag.entry.d_tag == "DT_RPATH":
                    found.append(f"a run path to the build machine's {tag.rpath}")
                elif tag.entry.d_tag == "DT_RUNPATH":
                    found.append(f"a run path to the build machine's {tag.runpath}")
                elif tag.entry.d_tag == "DT_NEEDED" and not SYSTEM_LIBRARIES.match(tag.needed):
                    found.append(f"needs {tag.needed}, which a user's machine may not have")
    return found


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    wrong = problems(sys.argv[1])
    for problem in wrong:
        print(f"{sys.argv[1]}: {problem}", file=sys.stderr)
    sys.exit(1 if wrong else 0)
