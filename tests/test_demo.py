"""python -m fastgrad demo, run as a user runs it (a fresh interpreter, away from the source tree): the files it
writes, its progress in a log, the paths without matplotlib or graphviz's `dot`, bad arguments, an output folder
it cannot write; and, in process, that what it times on the reference is micrograd's own training."""
import io
import os
import random
import re
import shutil
import struct
import subprocess
import sys
import sysconfig
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import fastgrad
from fastgrad import demo, moons

SVG = "{http://www.w3.org/2000/svg}"

# Runs the demo as `python -m fastgrad` does, after making `import matplotlib` fail as it does when matplotlib
# is not installed (a None in sys.modules makes the import raise ImportError).
WITHOUT_MATPLOTLIB = """
import runpy, sys
sys.modules["matplotlib"] = None
sys.argv[0] = "fastgrad"
runpy.run_module("fastgrad", run_name="__main__")
"""


def run_demo(tmp_path, *args, script=None, **env):
    """`python -m fastgrad *args` (or `python -c script *args`) in tmp_path, output captured (not a terminal)."""
    command = ["-c", script] if script else ["-m", "fastgrad"]
    return subprocess.run([sys.executable, *command, *args], cwd=tmp_path, env={**os.environ, **env},
                          capture_output=True, text=True, timeout=600)


def png_size(path):
    """(width, height) from a PNG's signature and IHDR chunk; fails on anything else."""
    with open(path, "rb") as file:
        head = file.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


def svg_texts(path):
    root = ET.parse(path).getroot()
    assert root.tag == f"{SVG}svg"
    return {(t.text or "").strip() for t in root.iter(f"{SVG}text")}


def assert_trained(result, steps):
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert f"{steps} step{'s' if steps > 1 else ''} of SGD" in result.stdout
    assert "done: loss " in result.stdout and "ms a step" in result.stdout
    assert re.search(r"fastgrad is [\d,]+x faster on this machine, now \([\d,]+x to [\d,]+x step to step",
                     result.stdout), result.stdout


def test_the_demo_writes_its_files_and_logs_progress_as_lines(tmp_path):
    result = run_demo(tmp_path, "demo", "--steps", "2", "--out", "out/nested")
    assert_trained(result, 2)
    out = tmp_path / "out" / "nested"                     # created, parents and all
    assert png_size(out / "moons_decision_boundary.png") == (600, 450)
    assert (out / "moons_decision_boundary.png").stat().st_size > 10_000
    texts = svg_texts(out / "neuron.svg")
    assert {"x1", "x2", "w1", "w2", "b", "out", "ReLU", "*", "+"} <= texts
    assert "grad 1.0000" in texts                         # drawn after backward()
    # Not a terminal: plain lines, one per step here, with loss, accuracy and speed; no carriage returns.
    assert "\r" not in result.stdout
    progress = [line for line in result.stdout.splitlines() if line.startswith("step ")]
    assert [line.split()[1] for line in progress] == ["1/2", "2/2"]
    assert all("loss " in line and "accuracy " in line and line.endswith(" steps/s") for line in progress)
    assert f"wrote {os.path.join('out/nested', 'neuron.svg')}" in result.stdout


def test_it_trains_batched_unless_told_compiled_or_eager_and_all_train_alike(tmp_path):
    results = {path: run_demo(tmp_path, "demo", "--steps", "2", "--out", path, *([f"--{path}"] if path != "batched"
                                                                                  else []))
               for path in ("batched", "compiled", "eager")}
    for path, result in results.items():
        assert_trained(result, 2)
        assert f"path: {path}" in result.stdout

    def final(result):
        return next(line for line in result.stdout.splitlines() if line.startswith("done: loss")).split(",")[:2]
    assert final(results["batched"]) == final(results["compiled"]) == final(results["eager"])   # to the digits shown


def test_points_sets_the_data_and_the_reference_is_compared_a_point(tmp_path):
    result = run_demo(tmp_path, "demo", "--steps", "1", "--points", "300", "--out", "out")
    assert_trained(result, 1)
    assert "on 300 points" in result.stdout
    assert "first 100 points and schedule, compared a point; fastgrad is" in result.stdout
    refused = run_demo(tmp_path, "demo", "--points", "0")
    assert refused.returncode == 2 and "--points: must be at least 1, not 0" in refused.stderr
    both = run_demo(tmp_path, "demo", "--eager", "--compiled")
    assert both.returncode == 2 and "not allowed with argument" in both.stderr


def test_without_matplotlib_it_says_what_to_install_and_still_trains(tmp_path):
    result = run_demo(tmp_path, "demo", "--steps", "1", script=WITHOUT_MATPLOTLIB)
    assert_trained(result, 1)
    assert "pip install 'fastgrad[plot]'" in result.stderr
    assert not (tmp_path / "moons_decision_boundary.png").exists()
    assert "out" in svg_texts(tmp_path / "neuron.svg")   # the default folder: the current one


def test_without_dot_it_says_what_to_install_and_still_trains(tmp_path):
    no_dot = tmp_path / "bin"
    no_dot.mkdir()
    result = run_demo(tmp_path, "demo", "--steps", "1", PATH=str(no_dot))
    assert_trained(result, 1)
    assert "graphviz's `dot` is not on PATH" in result.stderr and "install graphviz" in result.stderr
    assert not (tmp_path / "neuron.svg").exists()
    assert png_size(tmp_path / "moons_decision_boundary.png") == (600, 450)


@pytest.mark.parametrize("args, usage, message", [
    ([], "python -m fastgrad [-h]", "the following arguments are required: command"),
    (["bogus"], "python -m fastgrad [-h]", "invalid choice: 'bogus'"),
    (["demo", "--steps", "0"], "python -m fastgrad demo", "argument --steps: must be at least 1, not 0"),
    (["demo", "--steps", "abc"], "python -m fastgrad demo", "argument --steps: expected a whole number, got 'abc'"),
    (["demo", "--seed", "1.5"], "python -m fastgrad demo", "argument --seed: expected a whole number, got '1.5'"),
    (["demo", "--bogus"], "python -m fastgrad demo", "unrecognized arguments: --bogus"),
])
def test_bad_arguments_get_the_usage_and_exit_2(tmp_path, args, usage, message):
    """A mistake in the demo's arguments shows the demo's usage, with its options, and says in the user's
    words what is wrong (not an internal function's name)."""
    result = run_demo(tmp_path, *args)
    assert result.returncode == 2
    assert result.stderr.startswith(f"usage: {usage}")
    assert ("--steps STEPS" in result.stderr) == (usage.endswith("demo"))
    assert message in result.stderr.splitlines()[-1]
    assert "positive_int" not in result.stderr and "Traceback" not in result.stderr
    assert result.stdout == "" and os.listdir(tmp_path) == []


def test_version_and_help(tmp_path):
    version = run_demo(tmp_path, "--version")
    assert version.returncode == 0 and version.stdout.strip() == f"fastgrad {fastgrad.__version__}"
    for args in (["--help"], ["demo", "--help"]):
        shown = run_demo(tmp_path, *args)
        assert shown.returncode == 0 and shown.stdout.startswith("usage: python -m fastgrad")
    assert all(option in shown.stdout for option in ("--steps", "--points", "--compiled", "--eager", "--out", "--seed"))


def test_the_fastgrad_command_runs_the_installed_package_even_beside_a_source_folder(tmp_path):
    """Run from a source checkout, `python -m fastgrad` meets the uncompiled fastgrad folder first; the user
    gets an ImportError that says so, and the `fastgrad` command pip installed runs the installed package."""
    source_folder = tmp_path / "fastgrad"
    source_folder.mkdir()
    for module in Path(fastgrad.__file__).parent.glob("*.py"):
        shutil.copy(module, source_folder)
    shadowed = run_demo(tmp_path, "--version")
    assert shadowed.returncode == 1
    assert f"ImportError: fastgrad was imported from {source_folder}, which has no compiled engine" in shadowed.stderr
    assert "`fastgrad` command" in shadowed.stderr
    command = shutil.which("fastgrad", path=sysconfig.get_path("scripts"))
    assert command, "pip installs a fastgrad command next to this Python"
    version = subprocess.run([command, "--version"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert version.returncode == 0 and version.stdout.strip() == f"fastgrad {fastgrad.__version__}"
    usage = subprocess.run([command, "demo", "--steps", "0"], cwd=tmp_path, capture_output=True, text=True,
                           timeout=120)
    assert usage.returncode == 2 and usage.stderr.startswith("usage: fastgrad demo")
    trained = subprocess.run([command, "demo", "--steps", "1", "--out", "out"], cwd=tmp_path,
                             capture_output=True, text=True, timeout=600)
    assert_trained(trained, 1)


def unwritable_folders(tmp_path):
    """Output folders the demo cannot write in: (a word for the test's id, the folder, what the error says)."""
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    folders = [("an existing file", a_file, f"the output folder {str(a_file)!r} is a file, not a folder"),
               ("a folder under a file", a_file / "out",
                f"cannot write to the output folder {str(a_file / 'out')!r}: {str(a_file)!r} is a file, not a folder")]
    if hasattr(os, "geteuid") and os.geteuid() != 0:      # root writes into read-only folders anyway
        read_only = tmp_path / "read_only"
        read_only.mkdir(mode=0o555)
        folders.append(("a read-only folder", read_only, f"cannot write to the output folder {str(read_only)!r}"))
    return folders


def test_an_output_folder_it_cannot_write_is_a_clear_error_before_training(tmp_path):
    for what, folder, message in unwritable_folders(tmp_path):
        result = run_demo(tmp_path, "demo", "--out", str(folder))
        assert result.returncode == 1, what
        assert f"error: {message}" in result.stderr, what
        assert "File exists" not in result.stderr and "Traceback" not in result.stderr, what
        assert "step " not in result.stdout, what          # it stopped before training


def test_the_timed_reference_trains_micrograds_model_as_the_demo_does():
    """The speed the demo reports compares the same work: its reference run (fastgrad.reference, a fresh model
    from the same seed) and its fastgrad run both take micrograd's own training steps."""
    micrograd_engine = pytest.importorskip("micrograd.engine")
    micrograd_nn = pytest.importorskip("micrograd.nn")
    X, y = moons.make_moons(20, noise=0.1, seed=5)     # 20 points: the same steps, a fifth of the time
    steps, seed = 10, 5
    reference_history, seconds = demo.time_reference(X, y, seed, steps, 2)
    assert len(seconds) == 2 and all(s > 0 for s in seconds)

    random.seed(seed)
    model = micrograd_nn.MLP(2, demo.SIZES)
    expected = [moons.train_step(model, micrograd_engine.Value, X, y, k, steps) for k in range(2)]
    histories = [reference_history]
    for path in demo.PATHS:
        random.seed(seed)
        step = demo.make_step(fastgrad.micrograd.nn.MLP(2, demo.SIZES), X, y, steps, path)
        histories.append([step(k) for k in range(2)])
    for history in histories:
        assert [loss for loss, _ in history] == pytest.approx([loss for loss, _ in expected], rel=1e-12)
        assert [accuracy for _, accuracy in history] == [accuracy for _, accuracy in expected]


def test_the_speedup_it_reports_has_two_digits_and_its_spread():
    """The ratio of the medians, and from the reference's fastest step over fastgrad's upper quartile to its
    slowest over the lower quartile."""
    fast = [0.001] * 10 + [0.002] * 10                   # median 1.5 ms, quartiles 1 and 2 ms
    assert demo.speedup(fast, [2.0, 1.5, 3.0]) == ("1,300x", "750x", "3,000x")    # 1,333x, 750x, 3,000x
    assert demo.speedup([0.0004], [1.0]) == ("2,500x", "2,500x", "2,500x")


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_terminal_gets_a_bar_tqdms_or_its_own(monkeypatch):
    pytest.importorskip("tqdm")
    shown = Terminal()
    progress = demo.progress_for(shown, 4)
    for done in range(1, 5):
        progress.update(done, 0.5 / done, 0.25 * done, 100.0)
    progress.close()
    assert "4/4" in shown.getvalue() and "loss 0.1250  accuracy 100%" in shown.getvalue()
    assert "step/s" in shown.getvalue()                 # tqdm's own rate

    monkeypatch.setitem(sys.modules, "tqdm", None)        # as if tqdm were not installed
    monkeypatch.setenv("COLUMNS", "80")                   # shutil.get_terminal_size reads it first
    shown = Terminal()
    progress = demo.progress_for(shown, 4)
    for done in range(1, 5):
        progress.update(done, 0.5 / done, 0.25 * done, 100.0)
    progress.close()
    redrawn = shown.getvalue().split("\r")[1:]
    assert len(redrawn) == 4 and shown.getvalue().endswith("\n")
    assert redrawn[-1].startswith("[" + "#" * 30 + "] 4/4  loss 0.1250  accuracy 100%  100.0 steps/s")
    assert all(len(line.rstrip("\n")) == 79 for line in redrawn)


# The demo in a terminal without tqdm: its own bar.
WITHOUT_TQDM = """
import runpy, sys
sys.modules["tqdm"] = None
sys.modules["matplotlib"] = None                      # no picture: the bar is what is looked at
sys.argv[0] = "fastgrad"
runpy.run_module("fastgrad", run_name="__main__")
"""


def run_in_terminal(tmp_path, columns, *args):
    """The demo's output as a terminal of `columns` columns receives it: the child's stdout and stderr are a
    pseudo-terminal of that size (what shutil.get_terminal_size reads), with the tty's \n -> \r\n undone."""
    pty = pytest.importorskip("pty")
    import fcntl
    import termios
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    env = {name: value for name, value in os.environ.items() if name not in ("COLUMNS", "LINES")}
    child = subprocess.Popen([sys.executable, "-c", WITHOUT_TQDM, *args], cwd=tmp_path, env=env,
                             stdin=subprocess.DEVNULL, stdout=follower, stderr=follower)
    os.close(follower)
    received = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:                                   # EIO: the child closed the terminal
            break
        if not chunk:
            break
        received += chunk
    os.close(leader)
    assert child.wait(timeout=600) == 0, received.decode()[-3000:]
    return received.decode().replace("\r\n", "\n")


@pytest.mark.parametrize("columns", [40, 80, 200])
def test_its_own_bar_fits_the_terminal_and_redraws_on_one_line(tmp_path, columns):
    steps = 30
    shown = run_in_terminal(tmp_path, columns, "demo", "--steps", str(steps), "--out", "out")
    bar_lines = [line for line in shown.split("\n") if "\r[" in line]
    assert len(bar_lines) == 1, shown                     # every redraw on the same line
    redraws = bar_lines[0].split("\r")[1:]
    assert len(redraws) == steps
    assert all(len(redraw) < columns for redraw in redraws), [len(r) for r in redraws]   # never wraps
    last = redraws[-1]
    assert last.startswith("[") and set(last[1:last.index("]")]) == {"#"} and f"] {steps}/{steps}" in last
    if columns >= 80:
        assert "loss " in redraws[-1] and "steps/s" in redraws[-1]

