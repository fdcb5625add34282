"""The README's quickstart as a notebook, executed in a real Jupyter kernel (ipykernel, driven by nbclient) that
imports the installed fastgrad: every cell runs, draw_dot's graph shows as an SVG, a Value prints as the
notebook's Value does. The cells are cut from the README's code block itself, so the two cannot drift apart."""
import re
import xml.etree.ElementTree as ET

import pytest

import fastgrad
from support import readme_code

nbclient = pytest.importorskip("nbclient")
nbformat = pytest.importorskip("nbformat")
pytest.importorskip("ipykernel")

SVG = "{http://www.w3.org/2000/svg}"


def quickstart_cells():
    """The README's quickstart code block, one cell per blank-line-separated paragraph, as a notebook has them."""
    code = readme_code("The notebook, on fastgrad")
    return [paragraph.strip("\n") for paragraph in code.split("\n\n") if paragraph.strip()]


def stdout_of(cell):
    return "".join(out["text"] for out in cell.outputs if out["output_type"] == "stream" and out["name"] == "stdout")


def test_the_readme_quickstart_runs_in_a_jupyter_kernel(tmp_path):
    cells = quickstart_cells()
    assert len(cells) >= 4 and "draw_dot(" in cells[-1]
    notebook = nbformat.v4.new_notebook()
    # A first cell of the test's own: which fastgrad the kernel imports.
    notebook.cells = [nbformat.v4.new_code_cell("import fastgrad\nprint(fastgrad.__file__)")]
    notebook.cells += [nbformat.v4.new_code_cell(source) for source in cells]
    # The kernel starts in tmp_path, away from the source tree, so that it imports the installed package.
    client = nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()                                      # raises CellExecutionError if a cell fails

    assert stdout_of(notebook.cells[0]).strip() == fastgrad.__file__
    for cell in notebook.cells:
        assert isinstance(cell.execution_count, int)
        assert all(out["output_type"] != "error" for out in cell.outputs)

    # A Value prints as the notebook's: Value(data=<the float's repr>).
    printed = [line for cell in notebook.cells for line in stdout_of(cell).splitlines() if "Value(" in line]
    assert printed
    for line in printed:
        number = re.fullmatch(r"Value\(data=(\S+)\)", line).group(1)
        assert repr(float(number)) == number

    # draw_dot's Digraph is the last cell's result; Jupyter shows it from its SVG.
    shown = [out for out in notebook.cells[-1].outputs if out["output_type"] in ("execute_result", "display_data")]
    svg = ET.fromstring(shown[-1]["data"]["image/svg+xml"])
    assert svg.tag == f"{SVG}svg"
    texts = {(t.text or "").strip() for t in svg.iter(f"{SVG}text")}
    assert {"a", "b", "c", "d", "e", "f", "L", "*", "+"} <= texts
