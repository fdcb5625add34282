"""fastgrad's benchmark suite: every workload on every engine found, side by side in one process.

    python bench/run.py                   # the full run (a few minutes; the sweep goes to 10 million nodes)
    python bench/run.py --quick           # under a minute: fewer repeats, the sweep up to 100,000 nodes
    python bench/run.py --only layer      # one workload (see --list); --only optim: the three optimizer rows
    python bench/run.py --json out.json   # also write every median, quartile and ratio
    python bench/run.py --update-readme   # rewrite the README's benchmark block (between its markers)

Engines: fastgrad (installed), micrograd 0.1.0 (`pip install fastgrad[bench]`), the notebook's Value in plain
Python (fastgrad.reference), plain floats, and PyTorch when it is installed. A table goes to stdout, progress to
stderr, and a chart to bench/results/ (bench-latest.png, bench-quick.png with --quick: files git ignores; the
README's bench.png only with --update-readme).
"""
import argparse
import datetime
import gc
import os
import sys
import time

# NumPy's OpenBLAS starts a thread per core at import, which spins for a while after starting (perf, here: 3.7% of
# the samples of a run that calls no BLAS at all); on a 2-core machine that steals the core the batched replay's
# second thread needs. Every engine is timed on one thread anyway (PyTorch and JAX are told so themselves).
for _pool in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_pool, "1")

import engines as engines_mod  # bench/ is on sys.path as the script's folder; fastgrad is the installed one
import report
import timing
import workloads as wl

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_DIR = os.path.dirname(BENCH_DIR)

SETTINGS = {
    # repeats per engine, least seconds per sample, sweep sizes, largest sweep for the pure-Python engines
    "quick": dict(repeats=3, min_seconds=0.01, sweep=[10**3, 10**4, 10**5], slow_sweep_max=10**4,
                  memory_repeats=1, quick=True, batched=[100, 1000]),
    "full": dict(repeats=11, min_seconds=0.1, sweep=[10**3, 10**4, 10**5, 10**6, 10**7], slow_sweep_max=10**5,
                 memory_repeats=3, quick=False, batched=[100, 1000, 10**4, 10**5]),
}
FAST_ENGINES = ("fastgrad", "floats")   # the only ones the sweep runs past slow_sweep_max


def make_workloads(settings):
    ops = [
        wl.SingleOp("mul", "a*b", wl.mul_loop),
        wl.SingleOp("add", "a+b", wl.add_loop),
        wl.SingleOp("tanh", "tanh(a)", wl.tanh_method_loop, wl.tanh_float_loop, needs_tanh=True),
    ]
    rest = [wl.Chain(), wl.TanhLayer(), wl.MoonsStep("micrograd")]
    if not settings["quick"]:
        rest.append(wl.MoonsStep("seed"))   # the seed's model on the seed's Value: seconds per step
    compiled = [wl.CompiledMoonsStep(), wl.CompiledLayer(), wl.CompileCost(), wl.ProgramBytes(), wl.GradCost(),
                wl.MoonsHessianVectorProduct(), wl.PhysicsInformedStep()]
    batched = [wl.BatchedMoonsStep(points, micrograd=not settings["quick"], min_seconds=settings["min_seconds"])
               for points in settings["batched"]]
    if not settings["quick"]:
        batched.append(wl.BatchedMemory())   # a fresh interpreter over a million rows: seconds
    optim = [wl.OptimizerStep(kind) for kind in wl.OptimizerStep.KINDS]
    return (ops + rest + compiled + batched + optim + [wl.Sweep(size) for size in settings["sweep"]]
            + [wl.BytesPerNode()])


def selected(workloads, only):
    """--only NAME: a workload's name, or the prefix of a group (`sweep` is every sweep size)."""
    if not only:
        return workloads
    picked = []
    for name in (n.strip() for n in only.split(",")):
        exact = [w for w in workloads if w.name == name]
        group = exact or [w for w in workloads if w.name.startswith(name + "-")]
        if not group:
            sys.exit(f"unknown workload {name!r}; choose from {', '.join(w.name for w in workloads)} or 'sweep'")
        picked += [w for w in group if w not in picked]
    return picked


def run_workload(w, engines, settings, show):
    samplers, skipped = {}, {}
    for engine in engines:
        if type(w) is wl.Sweep and w.size > settings["slow_sweep_max"] and engine.name not in FAST_ENGINES:
            skipped[engine.name] = f"skipped above {settings['slow_sweep_max']:,} nodes to keep the run short"
            continue
        if engine.moons_model and not w.whole_models:
            skipped[engine.name] = "computes whole models, not graphs of scalars: it runs the moons demo rows"
            continue
        try:
            samplers[engine.name] = w.sampler(engine)
        except wl.Unsupported as exc:
            skipped[engine.name] = str(exc)
    min_seconds = None if w.exact else settings["min_seconds"]
    repeats = settings["memory_repeats"] if min_seconds is None else settings["repeats"]
    started = time.perf_counter()
    results = timing.interleaved(samplers, w.units(), repeats, min_seconds,
                                 progress=lambda detail: show(w.name, detail))
    return {"name": w.name, "title": w.title, "unit": w.unit, "units": w.units(), "phases": list(w.phases),
            "seconds": round(time.perf_counter() - started, 1),
            "shown_phases": list(w.shown_phases), "results": results, "skipped": skipped,
            "ratios": {phase: report.ratios(results, phase) for phase in w.phases + ("total",)}}


def loop_overhead(settings):
    """ns per iteration of an empty loop, to tell how much of a single op's time is the loop around it."""
    sampler = {"loop": lambda inner: wl.loop_sampler(wl.empty_loop, inner, 0.0, 0.0)}
    result = timing.interleaved(sampler, 1, settings["repeats"], settings["min_seconds"])
    return result["loop"]["op"]["median"] * 1e9


def kernel_share(engine, sweep):
    """Two more runs of the largest sweep on fastgrad; the second split into user and kernel time, with its page faults.

    Where cost per node grows with the graph, this says how much of it is the kernel handing memory back.
    """
    try:
        import resource
    except ImportError:          # not on Windows
        return None
    sampler = sweep.sampler(engine)
    sampler(1)                   # as in the sweep's repeats: the previous graph's memory is there to reuse
    before = resource.getrusage(resource.RUSAGE_SELF)
    sampler(1)
    after = resource.getrusage(resource.RUSAGE_SELF)
    per_node = 1e9 / sweep.units()
    return {"user_ns_per_node": (after.ru_utime - before.ru_utime) * per_node,
            "kernel_ns_per_node": (after.ru_stime - before.ru_stime) * per_node,
            "page_faults_per_1000_nodes": (after.ru_minflt - before.ru_minflt) * 1000 / sweep.units()}


def targets(results, quick):
    """The issue's figures, from this run's results."""
    by_name = {w["name"]: w for w in results}

    def ratio(workload, phase, key):
        return by_name.get(workload, {}).get("ratios", {}).get(phase, {}).get(key)

    def median(workload, phase, engine):
        return by_name.get(workload, {}).get("results", {}).get(engine, {}).get(phase, {}).get("median")

    out = []

    def add(figure, target, measured, met, shown):
        out.append({"figure": figure, "target": target, "measured": measured,
                    "met": None if measured is None else bool(met), "shown": shown if measured is not None else "n/a"})

    r = ratio("moons", "step", "speedup_vs_micrograd")
    add("moons demo step vs micrograd", ">= 150x faster", r, r and r >= 150, f"{r:.0f}x faster" if r else "")
    r = ratio("mul", "op", "times_floats")
    add("a*b vs a float multiply", "<= 2.5x", r, r and r <= 2.5, f"{r:.2f}x" if r else "")
    for phase in ("forward", "backward"):
        r = ratio("layer", phase, "speedup_vs_seed")
        add(f"64x512 tanh layer {phase} vs the seed's Value", ">= 50x faster", r, r and r >= 50,
            f"{r:.0f}x faster" if r else "")
    # The compiled replay: micrograd's demo against what users pick instead of a scalar engine.
    r = ratio("moons-compiled", "step", "speedup_vs_torch-tensor")
    add("compiled moons step vs PyTorch tensors' step", "<= 0.3x", r and 1 / r, r and 1 / r <= 0.3,
        f"{1 / r:.2f}x ({r:.1f}x faster)" if r else "")
    r = ratio("moons-compiled", "step", "speedup_vs_micrograd")
    add("compiled moons step vs micrograd", ">= 2,000x faster", r, r and r >= 2000, f"{r:,.0f}x faster" if r else "")
    forward, backward = (median("layer-compiled", f"{phase}, unfused", "fastgrad") for phase in ("forward", "backward"))
    r = (forward + backward) * 1e9 if forward and backward else None
    add("64x512 tanh layer replayed unfused: forward + backward", "<= 3 ns/node", r, r and r <= 3,
        f"{r:.2f} ns/node" if r else "")
    compiled, eager = (median("compile", phase, "fastgrad") for phase in ("compile", "one eager backward"))
    r = compiled / eager if compiled and eager else None
    add("compiling the moons graph vs one eager backward()", "<= 3x", r, r and r <= 3, f"{r:.2f}x" if r else "")
    built, eager = (median("grad", phase, "fastgrad") for phase in ("create_graph", "one eager backward"))
    r = built / eager if built and eager else None
    add("grad(create_graph=True) on the moons graph vs one eager backward()", "<= 3x", r, r and r <= 3,
        f"{r:.2f}x" if r else "")
    # fastgrad's time / the peer's (issue 18): the HVP against PyTorch, JAX's shown beside it; the physics-informed
    # step against both
    for name, figure, other, limit in (
            ("hvp", "compiled Hessian-vector product (moons loss) vs PyTorch's double backward", "torch-tensor", 0.5),
            ("pinn", "physics-informed step at 1,000 points, batched, vs PyTorch's", "torch-tensor", 0.5),
            ("pinn", "physics-informed step at 1,000 points, batched, vs JAX's", "jax", 1.0)):
        r = ratio(name, "total", f"speedup_vs_{other}")
        shown = f"{1 / r:.2f}x ({report.fmt_advantage(r, '')})" if r else ""
        theirs = ratio(name, "total", "speedup_vs_jax")
        if name == "hvp" and r and theirs:
            shown += f"; vs JAX's jvp of grad {1 / theirs:.2f}x"
        add(figure, f"<= {limit}x", r and 1 / r, r and 1 / r <= limit, shown)
    b = median("program", "bytes, unfused", "fastgrad")
    fused = median("program", "bytes", "fastgrad")
    add("compiled program bytes per node (moons graph)", "<= 32", b, b and b <= 32,
        f"{b:.1f} unfused, {fused:.1f} fused" if b and fused else "")
    for kind, title in wl.OptimizerStep.KINDS.items():
        optimizer, loop = (median(f"optim-{kind}", phase, "fastgrad") for phase in ("optimizer", "loop"))
        r = optimizer / loop if optimizer and loop else None
        add(f"{title} with fastgrad.optim vs its Python loop", "<= 0.1x", r, r and r <= 0.1,
            f"{r:.3f}x" if r else "")
    b = median("memory", "bytes", "fastgrad")
    mg = median("memory", "bytes", "micrograd")
    add("bytes per node", "<= 96 (micrograd ~690)", b, b and b <= 96,
        f"{b:.0f} (micrograd {mg:.0f})" if b and mg else f"{b:.0f}" if b else "")
    out += batched_targets(median)
    sweep = [(w["units"], w["results"]["fastgrad"]["total"]["median"]) for w in results
             if w["name"].startswith("sweep") and "fastgrad" in w["results"]]
    if len(sweep) >= 2:
        costs = [c for _, c in sweep]
        flat = max(costs) / min(costs)
        span = f"{sweep[0][0]:,} to {sweep[-1][0]:,} nodes"
        add("cost per node across the sweep", "within 2x from 1e3 to 1e7", flat, flat <= 2,
            f"max/min {flat:.2f}x over {span}" + (" (quick run: not up to 1e7)" if quick else ""))
    else:
        add("cost per node across the sweep", "within 2x from 1e3 to 1e7", None, None, "")
    return out


def batched_targets(median):
    """The batched replay's figures, each from this run's medians; median(workload, phase, engine) reads one."""
    out = []

    def add(figure, target, measured, met, shown):
        out.append({"figure": figure, "target": target, "measured": measured,
                    "met": None if measured is None else bool(met), "shown": shown if measured is not None else "n/a"})

    row = wl.BatchedMoonsStep.row_name
    for points, limits in ((100, {"jax": 0.5, "torch-tensor": 0.1}), (10**4, {"jax": 1.0, "torch-tensor": 0.3})):
        batched = median(row(points), "step", "fastgrad")
        for other, limit in limits.items():
            theirs = median(row(points), "step", other)
            r = batched / theirs if batched and theirs else None
            add(f"batched moons step at N={points:,} vs {other}, 1 thread each", f"<= {limit}x", r, r and r <= limit,
                f"{r:.2f}x" if r else "")
    small, large = (median(row(points), "step", "fastgrad") for points in (10**3, 10**5))
    r = (large / 10**5) / (small / 10**3) if small and large else None
    add("batched moons step, time per point at N=100,000 vs N=1,000", "<= 1.3x", r, r and r <= 1.3,
        f"{r:.2f}x" if r else "")
    one, every, one_cpu, every_cpu, control_one, control_every = (median(row(10**4), phase, "fastgrad") for phase in (
        "1 thread, wall clock", "all threads, wall clock", "step", "all threads, CPU time",
        "GIL-free control, 1 thread", "GIL-free control, all threads"))
    r = one / every if one and every else None
    # On a shared machine the threads wait for cores: the CPU times say what the threads cost, the control how
    # much of its cores the process got.
    add(f"batched moons step at N=10,000, all {wl.BatchedMoonsStep.threads()} threads vs 1 (wall clock)",
        ">= 1.7x faster", r, r and r >= 1.7,
        f"{report.fmt_advantage(r, 'µs/step')} (CPU time of all threads {every_cpu / one_cpu:.2f}x one thread's; "
        f"SHA-256 on all threads, as a control: {report.fmt_advantage(control_one / control_every, 'µs/step')})"
        if r else "")
    growth = median("moons-batched-memory", "RSS growth beyond the rows", "fastgrad")
    add(f"RSS growth training batched over {wl.BatchedMemory.ROWS:,} rows, beyond the rows", "< 100 MB", growth,
        growth is not None and growth < 100e6, f"{growth / 1e6:.1f} MB" if growth is not None else "")
    return out


def notes(results, missing, overhead, workloads, kernel):
    out = [f"{name}: {why}" for name, why in missing.items()]
    if kernel:
        out.append(f"largest sweep on fastgrad, a repeat run: {kernel['user_ns_per_node']:.0f} ns/node user time, "
                   f"{kernel['kernel_ns_per_node']:.0f} ns/node kernel time, "
                   f"{kernel['page_faults_per_1000_nodes']:.1f} page faults per 1000 nodes"
                   + (" (kernel time is the system mapping and zeroing memory)"
                      if kernel["kernel_ns_per_node"] > 5 else ""))
    reasons = {}
    for w in results:
        for engine, why in w["skipped"].items():
            reasons.setdefault(f"{engine}: {why}", []).append(w["name"])
    out += [f"n/a {key} ({', '.join(names)})" for key, names in reasons.items()]
    mul = next((w for w in results if w["name"] == "mul"), None)
    if overhead is not None and mul and {"fastgrad", "floats"} <= set(mul["results"]):
        fg, fl = (mul["results"][e]["op"]["median"] * 1e9 for e in ("fastgrad", "floats"))
        net = (fg - overhead) / (fl - overhead) if fl > overhead else None
        out.append(f"single ops include the loop around them ({overhead:.1f} ns per empty iteration here); net of "
                   f"it a*b costs {fg - overhead:.1f} ns on fastgrad and {fl - overhead:.1f} ns on floats"
                   + (f" ({net:.2f}x)" if net else ""))
    for w in workloads:
        for engine, seconds in getattr(w, "build_seconds", {}).items():
            out.append(f"{w.name}: {engine} built its model once, untimed in the rows: {seconds:.2f} s (its graph "
                       "and the graph of its gradient)")
        out += [f"{w.name}: {note}" for note in getattr(w, "notes", [])]
        losses = getattr(w, "first_loss", None)
        if losses and len(losses) > 1:
            spread = max(losses.values()) - min(losses.values())
            agree = "agree" if spread <= 1e-9 * max(1.0, max(abs(v) for v in losses.values())) else "DISAGREE"
            out.append(f"{w.name}: step-0 loss on each engine {agree} "
                       f"({', '.join(f'{e} {v:.12g}' for e, v in losses.items())}): the same model is timed")
    out.append("between samples the cyclic GC runs untimed, so no engine pays for another's garbage (micrograd's, "
               "the seed's and PyTorch's graphs are reclaimed there, in their favour); within a sample it runs "
               "as usual; graphs are freed untimed except in the sweep, which times dropping them")
    out.append("the chain raises sys.setrecursionlimit: micrograd's and the seed's backward recurse once per level")
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="the short run (under a minute): CI's smoke test")
    parser.add_argument("--only", metavar="NAME", help="run one workload (or a comma-separated few); see --list")
    parser.add_argument("--engines", metavar="NAMES", help="comma-separated subset of " + ",".join(engines_mod.FINDERS))
    parser.add_argument("--json", metavar="PATH", help="write all results as JSON")
    parser.add_argument("--chart", metavar="PATH",
                        help="PNG chart path (default bench/results/bench-latest.png, bench-quick.png with --quick, "
                             "the README's bench.png with --update-readme; none with --only)")
    parser.add_argument("--no-chart", action="store_true", help="do not draw the chart")
    parser.add_argument("--update-readme", action="store_true",
                        help="rewrite the README text between <!-- bench:start --> and <!-- bench:end -->")
    parser.add_argument("--list", action="store_true", help="list the workloads and exit")
    args = parser.parse_args(argv)
    if args.only and args.update_readme:
        parser.error("--update-readme writes the whole run's table: not with --only")

    mode = "quick" if args.quick else "full"
    settings = SETTINGS[mode]
    all_workloads = make_workloads(settings)
    if args.list:
        width = max(len(w.name) for w in all_workloads)
        for w in all_workloads:
            print(f"{w.name:<{width}}  {w.title}")
        return 0
    chosen = selected(all_workloads, args.only)
    engines, missing = engines_mod.discover(args.engines.split(",") if args.engines else None)
    # What importing the engines left on the heap (PyTorch alone brings some 170,000 objects) goes to the
    # GC's permanent generation: micrograd's and the seed's collections then walk their own objects only,
    # as in a program that imports just one engine, whichever engines happen to be installed here.
    gc.collect()
    gc.freeze()
    show, done = report.progress_printer()

    started = time.perf_counter()
    results = []
    overhead = None
    for i, w in enumerate(chosen, 1):
        label = f"[{i}/{len(chosen)}, {time.perf_counter() - started:.0f} s] {w.name}"
        show(label, "")
        results.append(run_workload(w, engines, settings, lambda _, detail: show(label, detail)))
        if w.name == "mul":
            show(label, "empty loop")
            overhead = loop_overhead(settings)
    sweeps = [w for w in chosen if type(w) is wl.Sweep]
    fastgrad = next((e for e in engines if e.name == "fastgrad"), None)
    kernel = None
    if sweeps and fastgrad:
        show("kernel time", f"of fastgrad's largest sweep ({sweeps[-1].units():,} nodes)")
        kernel = kernel_share(fastgrad, sweeps[-1])
    done()

    data = {
        "date": datetime.date.today().isoformat(),
        "mode": mode,
        "seconds": round(time.perf_counter() - started, 1),
        "machine": report.machine(),   # its load average is the one at the end of the run
        "engines": [{"name": e.name, "version": e.version, "note": e.note, "available": True} for e in engines]
                   + [{"name": n, "version": None, "note": why, "available": False} for n, why in missing.items()],
        "workloads": results,
    }
    data["targets"] = targets(results, args.quick)
    data["kernel_time"] = kernel
    data["notes"] = notes(results, missing, overhead, chosen, kernel)
    print(report.text(data))
    print(f"\n({data['seconds']} s)")

    if args.json:
        import json
        with open(args.json, "w") as f:
            json.dump(data, f, indent=1)
        print(f"wrote {args.json}", file=sys.stderr)
    chart_path = args.chart or report.chart_path(BENCH_DIR, args.quick, args.update_readme)
    if not args.no_chart and (args.chart or not args.only):
        try:
            report.chart(data, chart_path)
            print(f"chart: {chart_path}", file=sys.stderr)
            if report.has_batched_rows(data):
                report.batched_chart(data, report.batched_path(chart_path))
                print(f"chart: {report.batched_path(chart_path)}", file=sys.stderr)
        except ImportError:
            print("matplotlib not installed (pip install fastgrad[bench]): no chart", file=sys.stderr)
    if args.update_readme:
        link = report.RAW_FILES + os.path.relpath(chart_path, REPO_DIR).replace(os.sep, "/")
        command = "python bench/run.py" + (" --quick" if args.quick else "")
        print(report.update_readme(os.path.join(REPO_DIR, "README.md"), report.readme_block(data, link, command)),
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
