"""The README as a reader uses it: its code blocks pasted one after the other into one session (a notebook, a
REPL) run as written, and its pictures show wherever its text is shown (the package index renders it as the
project's description, without the repository's files)."""
import importlib.metadata
import json
import os
import re

from support import README, readme_blocks, readme_text, run_python

REPO = os.path.dirname(README)


def test_the_code_blocks_run_in_one_namespace_in_order_and_shadow_no_module(tmp_path):
    """A name that holds a module (`losses` after `from fastgrad import losses`) must not be rebound to something
    else by a later block: pasted into one notebook, a later `losses.mse(...)` would fail."""
    blocks = readme_blocks()
    assert len(blocks) >= 5
    run_python(f"""
        import types
        namespace, modules = {{"__name__": "__main__"}}, {{}}
        for number, block in enumerate({json.dumps(blocks)}, 1):
            exec(compile(block, f"README block {{number}}", "exec"), namespace)
            for name, module in modules.items():
                assert namespace.get(name) is module, (
                    f"README block {{number}} rebinds {{name}}, which held {{module.__name__}}")
            modules.update((name, value) for name, value in namespace.items()
                           if isinstance(value, types.ModuleType) and not name.startswith("__"))
        assert "losses" in modules and modules["losses"].__name__ == "fastgrad.losses"
        print("ok")
    """, tmp_path)


def test_the_pictures_link_the_repositorys_files_absolutely():
    """Relative links show nothing on an index page or from an sdist (which carries no pictures): each picture
    links the raw file in the repository that the package metadata names as its source."""
    source = next(url.split(", ", 1)[1] for url in importlib.metadata.metadata("fastgrad").get_all("Project-URL")
                  if url.startswith("Source, "))
    raw = source.replace("https://github.com/", "https://raw.githubusercontent.com/") + "/main/"
    text = readme_text()
    pictures = re.findall(r"!\[[^\]]*\]\(([^)\s]+)", text) + re.findall(r"<img[^>]*\ssrc=\"([^\"]+)\"", text)
    assert pictures
    for link in pictures:
        assert link.startswith(raw), link
        if os.path.isdir(os.path.join(REPO, ".git")) or os.path.isfile(os.path.join(REPO, ".git")):
            assert os.path.isfile(os.path.join(REPO, link[len(raw):])), f"{link}: no such file in the checkout"
