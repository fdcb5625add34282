"""The type stubs shipped next to the compiled modules (py.typed tells type checkers to trust them) name what
the modules define, and mark final exactly the classes that refuse subclasses."""
import ast
import importlib
import types
from pathlib import Path

import pytest

COMPILED = ["fastgrad.engine", "fastgrad.replay", "fastgrad.batched", "fastgrad._optim", "fastgrad._grad"]


def stub_tree(module):
    path = Path(module.__file__).parent / (module.__name__.rpartition(".")[2] + ".pyi")
    assert path.is_file(), f"the wheel ships no stub for {module.__name__}"
    return ast.parse(path.read_text())


def defined_names(body):
    names = set()
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.AnnAssign):
            names.add(node.target.id)
        elif isinstance(node, ast.Assign):
            names.update(target.id for target in node.targets)
    return names


def public_names(namespace):
    return {name for name in namespace if not name.startswith("_")}


def is_final(class_node):
    return any(getattr(d, "id", None) == "final" for d in class_node.decorator_list)


@pytest.mark.parametrize("name", COMPILED)
def test_each_public_name_of_a_compiled_module_is_in_its_stub(name):
    module = importlib.import_module(name)
    defined = {n for n in public_names(vars(module)) if not isinstance(getattr(module, n), types.ModuleType)
               and getattr(getattr(module, n), "__module__", name) == name}
    assert public_names(defined_names(stub_tree(module).body)) == defined


@pytest.mark.parametrize("name", [name for name in COMPILED if name != "fastgrad._grad"])   # it has no class
def test_stub_classes_have_the_runtime_members_and_are_final_when_the_runtime_is(name):
    module = importlib.import_module(name)
    classes = [node for node in stub_tree(module).body if isinstance(node, ast.ClassDef) and node.name[0].isupper()
               and isinstance(getattr(module, node.name), type) and not issubclass(getattr(module, node.name), tuple)]
    assert classes
    for node in classes:
        runtime = getattr(module, node.name)
        assert public_names(defined_names(node.body)) == public_names(dir(runtime)), node.name
        try:
            type("Subclass", (runtime,), {})
            subclassable = True
        except TypeError:
            subclassable = False
        assert is_final(node) == (not subclassable), node.name
