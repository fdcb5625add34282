"""The benchmark suite runs, reports what it claims to, and its baselines compute what micrograd computes.

No timing is asserted here: speed is what bench/ measures, not what tests check.
"""
import fnmatch
import importlib.util
import json
import math
import os
import random
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(REPO, "bench")


def bench_module(name):
    """bench/<name>.py, loaded by path: bench/ is a folder of scripts, not a package on sys.path."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", os.path.join(BENCH, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


report = bench_module("report")


def run_quick(folder, *args):
    """`bench/run.py --quick *args` as a user or CI runs it: (the finished process, its JSON results)."""
    out = folder / "results.json"
    proc = subprocess.run([sys.executable, os.path.join(BENCH, "run.py"), "--quick", *args, "--json", str(out),
                           "--no-chart"], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    with open(out) as f:
        return proc, json.load(f)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One quick run of three cheap workloads."""
    return run_quick(tmp_path_factory.mktemp("bench"), "--only", "chain,memory,optim-adam")


def test_quick_run_reports_every_installed_engine(quick_run):
    proc, data = quick_run
    available = {e["name"] for e in data["engines"] if e["available"]}
    assert {"fastgrad", "seed", "floats"} <= available
    micrograd_installed = subprocess.run([sys.executable, "-c", "import micrograd"]).returncode == 0
    assert ("micrograd" in available) == micrograd_installed
    for e in data["engines"]:
        assert e["note"], e
    for engine in available:
        assert engine in proc.stdout


def test_quick_run_fields_are_sane(quick_run):
    _, data = quick_run
    assert data["mode"] == "quick"
    assert data["machine"]["cores"] >= 1 and data["machine"]["python"]
    chain = next(w for w in data["workloads"] if w["name"] == "chain")
    assert chain["unit"] == "node" and chain["units"] == 3000
    for engine, phases in chain["results"].items():
        assert set(phases) == {"forward", "backward", "total"}, engine
        for s in phases.values():
            assert math.isfinite(s["median"]) and s["median"] > 0
            assert s["q1"] <= s["median"] <= s["q3"]
            assert s["samples"] == 3 and s["inner"] >= 1
    assert set(chain["results"]) | set(chain["skipped"]) >= {"fastgrad", "seed", "floats"}
    assert chain["ratios"]["forward"]["times_floats"] > 0
    memory = next(w for w in data["workloads"] if w["name"] == "memory")
    assert memory["results"]["fastgrad"]["bytes"]["median"] > 0
    assert "floats" in memory["skipped"]
    figures = {t["figure"] for t in data["targets"]}
    assert "bytes per node" in figures and "moons demo step vs micrograd" in figures


def test_quick_run_times_the_optimizer_beside_its_python_loop(quick_run):
    _, data = quick_run
    adam = next(w for w in data["workloads"] if w["name"] == "optim-adam")
    assert adam["unit"] == "step" and adam["units"] == 1
    assert set(adam["results"]["fastgrad"]) == {"optimizer", "loop", "total"}
    for engine in set(adam["results"]) - {"fastgrad", "torch"}:
        assert set(adam["results"][engine]) == {"loop"}, engine
    assert "floats" in adam["skipped"]
    target = next(t for t in data["targets"] if t["figure"] == "Adam step with fastgrad.optim vs its Python loop")
    optimizer, loop = (adam["results"]["fastgrad"][phase]["median"] for phase in ("optimizer", "loop"))
    assert target["measured"] == pytest.approx(optimizer / loop)


def test_unknown_workload_is_refused():
    proc = subprocess.run([sys.executable, os.path.join(BENCH, "run.py"), "--only", "nonsense"],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode != 0
    assert "nonsense" in proc.stderr


def test_a_partial_run_neither_draws_over_the_full_runs_chart_nor_rewrites_the_readme(tmp_path):
    chart = os.path.join(BENCH, "results", "bench.png")
    before = os.stat(chart).st_mtime_ns if os.path.exists(chart) else None
    run = [sys.executable, os.path.join(BENCH, "run.py"), "--quick", "--only", "optim-zero_grad"]
    proc = subprocess.run(run, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "chart:" not in proc.stderr and os.listdir(tmp_path) == []
    assert (os.stat(chart).st_mtime_ns if os.path.exists(chart) else None) == before
    refused = subprocess.run(run + ["--update-readme"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert refused.returncode == 2 and "--update-readme" in refused.stderr


def test_only_a_run_that_rewrites_the_readme_redraws_its_chart():
    """The README shows results/bench.png; any other run draws beside it, in a file git ignores, so that a
    benchmark run leaves the checkout as it was."""
    readme_chart = os.path.join(BENCH, "results", "bench.png")
    assert report.chart_path(BENCH, quick=False, update_readme=True) == readme_chart
    assert report.chart_path(BENCH, quick=True, update_readme=True) == readme_chart
    ignored = os.path.join(BENCH, "results", ".gitignore")
    for quick in (False, True):
        path = report.chart_path(BENCH, quick=quick, update_readme=False)
        assert path != readme_chart and os.path.dirname(path) == os.path.dirname(readme_chart)
        if os.path.exists(ignored):                       # a checkout (the sdist carries no results)
            with open(ignored) as patterns:
                assert any(fnmatch.fnmatch(os.path.basename(path), p.strip()) for p in patterns if p.strip())
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as readme:
        assert f"![fastgrad benchmark]({report.RAW_FILES}bench/results/bench.png)" in readme.read()


def test_ratios_under_one_read_as_slower_or_more():
    assert report.fmt_advantage(31.4, "ns/op") == "31x faster"
    assert report.fmt_advantage(0.13, "µs/step") == "7.7x slower"
    assert report.fmt_advantage(0.5, "bytes/node") == "2x more"
    assert report.fmt_advantage(8.0, "bytes/node") == "8x less"
    assert report.fmt_advantage(None, "ns/op") == ""


def test_readme_block_replaces_only_the_text_between_the_markers(tmp_path):
    readme = tmp_path / "README.md"
    before, after = "# title\n\nintro\n\n", "\n\n## more\ntext\n"
    readme.write_text(before + f"{report.README_START}\nold table\n{report.README_END}" + after)
    block = f"{report.README_START}\nnew table\n{report.README_END}"
    assert "updated" in report.update_readme(str(readme), block)
    assert readme.read_text() == before + block + after


def test_readme_without_markers_is_left_alone(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# title\nno markers here\n")
    assert "not updated" in report.update_readme(str(readme), "anything")
    assert readme.read_text() == "# title\nno markers here\n"
    assert "not updated" in report.update_readme(str(tmp_path / "missing.md"), "anything")


def test_float_floor_trains_exactly_as_micrograd():
    """bench's plain-float floor must do micrograd's demo step, or its time would not be the floor of it."""
    micrograd_engine = pytest.importorskip("micrograd.engine")
    micrograd_nn = pytest.importorskip("micrograd.nn")
    from fastgrad import moons
    FloatMLP = bench_module("baselines").FloatMLP

    X, y = moons.make_moons(100, noise=0.1, seed=0)
    random.seed(3)
    model = micrograd_nn.MLP(2, [16, 16, 1])
    random.seed(3)
    floor = FloatMLP(2, [16, 16, 1])
    for k in range(5):
        loss, accuracy = moons.train_step(model, micrograd_engine.Value, X, y, k)
        floor_loss, floor_accuracy = floor.train_step(X, y, k)
        assert floor_loss == pytest.approx(loss, rel=1e-12)
        assert floor_accuracy == accuracy
    weights = [w for layer in floor.weights for neuron in layer for w in neuron]
    micrograd_weights = [p.data for n in (n for layer in model.layers for n in layer.neurons) for p in n.w]
    assert weights == pytest.approx(micrograd_weights, rel=1e-12)


def test_optimizer_rows_compare_the_same_update(monkeypatch):
    """bench's Python loops, what a micrograd user writes, make the updates fastgrad.optim makes: the optimizer
    rows time the same work both ways."""
    from fastgrad import Value, optim
    monkeypatch.syspath_prepend(BENCH)     # workloads.py imports its neighbours as a script does
    workloads = bench_module("workloads")
    rng = random.Random(2)
    start = [(rng.uniform(-1, 1), rng.uniform(-1, 1)) for _ in range(30)]
    for kind in workloads.OptimizerStep.KINDS:
        by_optimizer, by_loop = ([Value(data) for data, _ in start] for _ in range(2))
        for params in (by_optimizer, by_loop):
            for p, (_, grad) in zip(params, start):
                p.grad = grad
        workload = workloads.OptimizerStep(kind)
        optimizer_call, loop_call = workload.optimizer(optim, by_optimizer), workload.loop(by_loop)
        for _ in range(5):
            optimizer_call()
            loop_call()
        assert [p.data for p in by_optimizer] == pytest.approx([p.data for p in by_loop], rel=1e-12), kind
        assert [p.grad for p in by_optimizer] == [p.grad for p in by_loop], kind


def test_torch_model_trains_exactly_as_micrograd():
    """bench's PyTorch scalar MLP is micrograd's model, so its row times the same work."""
    torch = pytest.importorskip("torch")
    micrograd_engine = pytest.importorskip("micrograd.engine")
    micrograd_nn = pytest.importorskip("micrograd.nn")
    from fastgrad import moons
    TorchScalarMLP = bench_module("baselines").TorchScalarMLP

    def leaf(x):
        return torch.tensor(x, dtype=torch.float64, requires_grad=True)

    X, y = moons.make_moons(20, noise=0.1, seed=1)
    random.seed(4)
    model = micrograd_nn.MLP(2, [4, 4, 1])
    random.seed(4)
    twin = TorchScalarMLP(2, [4, 4, 1], leaf)
    for k in range(3):
        loss, accuracy = moons.train_step(model, micrograd_engine.Value, X, y, k)
        twin_loss, twin_accuracy = moons.train_step(twin, leaf, X, y, k)
        assert float(twin_loss) == pytest.approx(loss, rel=1e-12)
        assert float(twin_accuracy) == pytest.approx(accuracy)


# --- the batched rows (issue 16) ---------------------------------------------------------------------------

def has_batched_replay():
    import fastgrad
    return hasattr(fastgrad, "BatchedGraph")


@pytest.fixture(scope="module")
def batched_run(tmp_path_factory):
    """A quick run of the batched row at 100 points, without micrograd (a second a step)."""
    return run_quick(tmp_path_factory.mktemp("bench"), "--only", "moons-batched-1e2",
                     "--engines", "fastgrad,torch-tensor,jax,seed")


def test_batched_row_runs_every_way_of_taking_the_step(batched_run):
    proc, data = batched_run
    row = next(w for w in data["workloads"] if w["name"] == "moons-batched-1e2")
    assert row["unit"] == "step" and row["title"] == "moons step, batched, N=100"
    fastgrad = row["results"]["fastgrad"]
    assert "compiled graph" in fastgrad
    if has_batched_replay():
        assert {"step", "all threads, wall clock", "1 thread, wall clock", "all threads, CPU time",
                "GIL-free control, 1 thread", "GIL-free control, all threads"} <= set(fastgrad)
    else:
        assert "step" not in fastgrad
        assert "moons-batched-1e2: fastgrad batched: n/a (needs fastgrad.BatchedGraph)" in data["notes"]
    for engine in {"torch-tensor", "jax"} & {e["name"] for e in data["engines"] if e["available"]}:
        assert set(row["results"][engine]) == {"step"}, engine
    assert "seed" in row["skipped"]
    # Every way trains the same model on the same points: their losses at step 0 agree (said where another engine
    # than fastgrad ran: PyTorch or JAX installed).
    assert not any("DISAGREE" in note for note in data["notes"])
    if {"torch-tensor", "jax"} & {e["name"] for e in data["engines"] if e["available"]}:
        assert any(note.startswith("moons-batched-1e2: step-0 loss on each engine agree") for note in data["notes"])


def test_batched_targets_are_reported_as_ratios_of_the_runs_medians(batched_run):
    _, data = batched_run
    targets = {t["figure"]: t for t in data["targets"]}
    row = next(w for w in data["workloads"] if w["name"] == "moons-batched-1e2")["results"]
    for other in ("jax", "torch-tensor"):
        target = targets[f"batched moons step at N=100 vs {other}, 1 thread each"]
        if "step" in row["fastgrad"] and other in row:
            assert target["measured"] == pytest.approx(row["fastgrad"]["step"]["median"] / row[other]["step"]["median"])
        else:
            assert target["measured"] is None and target["shown"] == "n/a"
    # The quick run stops at 1,000 points: the larger figures say they were not measured.
    assert targets["batched moons step at N=10,000 vs jax, 1 thread each"]["measured"] is None
    assert targets["RSS growth training batched over 1,000,000 rows, beyond the rows"]["measured"] is None


def test_bench_runs_without_jax(tmp_path):
    """JAX is optional: where it cannot be imported, its column is skipped with the reason and the run goes on."""
    (tmp_path / "jax.py").write_text("raise ImportError('hidden by the test')\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    proc = subprocess.run([sys.executable, os.path.join(BENCH, "run.py"), "--quick", "--only", "moons-batched-1e2",
                           "--engines", "fastgrad,jax", "--no-chart"],
                          capture_output=True, text=True, timeout=300, cwd=REPO, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "jax: not installed (hidden by the test): skipped" in proc.stdout


def test_batched_targets_from_given_medians(monkeypatch):
    monkeypatch.syspath_prepend(BENCH)
    run = bench_module("run")
    medians = {("moons-batched-1e2", "step", "fastgrad"): 20e-6, ("moons-batched-1e2", "step", "jax"): 70e-6,
               ("moons-batched-1e2", "step", "torch-tensor"): 150e-6,
               ("moons-batched-1e3", "step", "fastgrad"): 100e-6, ("moons-batched-1e5", "step", "fastgrad"): 14e-3,
               ("moons-batched-1e4", "1 thread, wall clock", "fastgrad"): 1e-3,
               ("moons-batched-1e4", "all threads, wall clock", "fastgrad"): 0.5e-3,
               ("moons-batched-1e4", "step", "fastgrad"): 0.9e-3,
               ("moons-batched-1e4", "all threads, CPU time", "fastgrad"): 0.95e-3,
               ("moons-batched-1e4", "GIL-free control, 1 thread", "fastgrad"): 2e-3,
               ("moons-batched-1e4", "GIL-free control, all threads", "fastgrad"): 1.05e-3,
               ("moons-batched-memory", "RSS growth beyond the rows", "fastgrad"): 30e6}
    targets = {t["figure"]: t for t in run.batched_targets(lambda *key: medians.get(key))}
    at_100 = targets["batched moons step at N=100 vs jax, 1 thread each"]
    assert at_100["measured"] == pytest.approx(20 / 70) and at_100["met"]
    assert not targets["batched moons step at N=100 vs torch-tensor, 1 thread each"]["met"]     # 0.13x > 0.1x
    per_point = targets["batched moons step, time per point at N=100,000 vs N=1,000"]
    assert per_point["measured"] == pytest.approx(1.4) and not per_point["met"]
    threads = next(t for figure, t in targets.items() if figure.startswith("batched moons step at N=10,000, all"))
    assert threads["measured"] == pytest.approx(2.0) and threads["met"]
    assert threads["shown"] == ("2x faster (CPU time of all threads 1.06x one thread's; SHA-256 on all threads, "
                                "as a control: 1.9x faster)")
    memory = targets["RSS growth training batched over 1,000,000 rows, beyond the rows"]
    assert memory["met"] and memory["shown"] == "30.0 MB"
    assert targets["batched moons step at N=10,000 vs jax, 1 thread each"]["met"] is None


def test_batched_chart_draws_time_per_point_against_n(tmp_path):
    pytest.importorskip("matplotlib")
    def timed(seconds):
        return {"median": seconds, "q1": seconds, "q3": seconds}

    rows = [{"name": f"moons-batched-{n:.0e}".replace("+0", ""), "unit": "step", "title": f"N={n}",
             "shown_phases": ["step", "all threads, wall clock", "compiled graph"],
             "results": {"fastgrad": {"step": timed(n * 1e-7), "1 thread, wall clock": timed(n * 1e-7)},
                         "jax": {"step": timed(n * 3e-7)}}} for n in (100, 1000)]
    data = {"workloads": rows, "mode": "quick", "date": "2026-12-02",
            "machine": {"cpu": "a CPU", "cores": 2, "python": "CPython"}}
    assert report.has_batched_rows(data)
    path = tmp_path / "bench-batched.png"
    report.batched_chart(data, str(path))
    assert path.read_bytes().startswith(b"\x89PNG")
    assert report.batched_path("bench/results/bench.png") == "bench/results/bench-batched.png"
    # Beside a chart git ignores, the batched chart is ignored too (a run leaves the checkout as it was).
    ignored = os.path.join(BENCH, "results", ".gitignore")
    if os.path.exists(ignored):
        with open(ignored) as f:
            patterns = [p.strip() for p in f if p.strip()]
        for quick in (False, True):
            path = report.batched_path(report.chart_path(BENCH, quick=quick, update_readme=False))
            assert any(fnmatch.fnmatch(os.path.basename(path), p) for p in patterns), path
    block = report.readme_block({**data, "engines": [], "targets": []}, "bench/results/bench.png",
                                "python bench/run.py")
    assert "](bench/results/bench-batched.png)" in block


def test_jax_model_trains_exactly_as_micrograd():
    """bench's JAX step is micrograd's demo step, so its column times the same work."""
    micrograd_engine = pytest.importorskip("micrograd.engine")
    micrograd_nn = pytest.importorskip("micrograd.nn")
    pytest.importorskip("jax")
    from fastgrad import moons
    sys.path.insert(0, BENCH)     # the engine sets JAX up (float64) as the suite does
    try:
        engine = bench_module("engines").jax_engine()
    finally:
        sys.path.remove(BENCH)

    X, y = moons.make_moons(30, noise=0.1, seed=2)
    random.seed(5)
    model = micrograd_nn.MLP(2, [16, 16, 1])
    random.seed(5)
    twin = engine.moons_model(X, y, [16, 16, 1])
    for k in range(4):
        loss, accuracy = moons.train_step(model, micrograd_engine.Value, X, y, k)
        twin_loss, twin_accuracy = twin.train_step(X, y, k)
        assert twin_loss == pytest.approx(loss, rel=1e-12)
        assert twin_accuracy == pytest.approx(accuracy)
    first_layer = [p.data for neuron in model.layers[0].neurons for p in neuron.w]
    assert twin.params[0][0].ravel().tolist() == pytest.approx(first_layer, rel=1e-12)


def test_batched_step_trains_exactly_as_micrograd(monkeypatch):
    """The batched row's fastgrad step (one point's loss over the rows, the L2 term apart) is micrograd's demo step."""
    if not has_batched_replay():
        pytest.skip("needs fastgrad.BatchedGraph")
    micrograd_engine = pytest.importorskip("micrograd.engine")
    micrograd_nn = pytest.importorskip("micrograd.nn")
    from fastgrad import moons
    monkeypatch.syspath_prepend(BENCH)
    workloads = bench_module("workloads")
    engine = bench_module("engines").fastgrad_engine()

    X, y = moons.make_moons(30, noise=0.1, seed=2)
    rows = [[x1, x2, label] for (x1, x2), label in zip(X, y)]
    random.seed(1)      # the seed batched_moons_step draws its model from
    model = micrograd_nn.MLP(2, [16, 16, 1])
    step, first = workloads.batched_moons_step(engine, rows, threads=2)
    loss, _ = moons.train_step(model, micrograd_engine.Value, X, y, 0)
    assert first == pytest.approx(loss, rel=1e-12)
    for k in range(1, 4):
        losses, penalty = step(k)
        loss, _ = moons.train_step(model, micrograd_engine.Value, X, y, k)
        assert math.fsum(losses) / len(rows) + penalty == pytest.approx(loss, rel=1e-12)


def test_batched_memory_is_measured_in_a_fresh_interpreter(monkeypatch):
    if not has_batched_replay():
        pytest.skip("needs fastgrad.BatchedGraph")
    if not os.path.exists("/proc/self/status"):
        pytest.skip("the figure reads /proc")
    monkeypatch.syspath_prepend(BENCH)
    workloads = bench_module("workloads")
    growth = float(workloads.run_here("batched_rss_growth(20_000)"))
    # The rows (480 kB) are not counted; the program, the scratch and the 20,000 outputs are.
    assert 0 <= growth < 50e6


def test_higher_order_rows_time_the_same_work_on_every_engine(tmp_path):
    """The Hessian-vector product and the physics-informed step: each engine's product v . H v and its loss before
    the first step agree, and the targets give fastgrad's time against PyTorch's and JAX's."""
    proc, data = run_quick(tmp_path, "--only", "hvp,pinn", "--engines", "fastgrad,torch-tensor,jax")
    available = {e["name"] for e in data["engines"] if e["available"]}
    for name in ("hvp", "pinn"):
        row = next(w for w in data["workloads"] if w["name"] == name)
        assert set(row["results"]) == available, name
        if len(available) > 1:
            note = next(n for n in data["notes"] if n.startswith(f"{name}: "))
            assert " on each engine agree " in note, note
            for engine in available:
                assert engine in note
    targets = {t["figure"]: t for t in data["targets"]}
    pinn = next(w for w in data["workloads"] if w["name"] == "pinn")["results"]
    for other, figure in (("torch-tensor", "physics-informed step at 1,000 points, batched, vs PyTorch's"),
                          ("jax", "physics-informed step at 1,000 points, batched, vs JAX's")):
        if other in available:
            expected = pinn["fastgrad"]["total"]["median"] / pinn[other]["total"]["median"]
            assert targets[figure]["measured"] == pytest.approx(expected)
        else:
            assert targets[figure]["measured"] is None
