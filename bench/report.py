"""What the suite prints and writes: the machine, the table, the targets, the chart, the README block."""
import os
import platform
import re
import sys

README_START, README_END = "<!-- bench:start -->", "<!-- bench:end -->"
NOISY = 0.10   # a median whose interquartile range exceeds this fraction of it is marked "~"
PEERS = ("micrograd", "seed", "torch-tensor", "jax")   # the engines each row gives fastgrad's ratio to


def machine():
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
    }
    if hasattr(os, "getloadavg"):
        # On a shared machine other work competes for the caches and memory even when CPU time is counted.
        info["load_average"] = round(os.getloadavg()[1], 2)
    return info


# --- numbers ---------------------------------------------------------------------------------------------

def scale(unit):
    """(label, factor from seconds) for a unit: single ops and nodes in ns, steps in µs, bytes as they are."""
    return {"op": ("ns/op", 1e9), "node": ("ns/node", 1e9), "step": ("µs/step", 1e6), "byte": ("bytes/node", 1),
            "MB": ("MB", 1e-6)}[unit]


def fmt(value):
    if value is None:
        return "n/a"
    if value >= 1000:
        return f"{value:,.0f}"
    if value >= 100:
        return f"{value:.0f}"
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def fmt_ratio(value):
    return "" if value is None else (f"{value:,.0f}x" if value >= 100 else f"{value:.2g}x" if value < 10 else f"{value:.0f}x")


def fmt_advantage(speedup, unit):
    """Their cost / fastgrad's, said the way round that reads above 1: '31x faster', or '7.7x slower'."""
    if speedup is None:
        return ""
    better, worse = ("less", "more") if unit == "bytes/node" else ("faster", "slower")
    return f"{fmt_ratio(speedup)} {better}" if speedup >= 1 else f"{fmt_ratio(1 / speedup)} {worse}"


def ratios(results, phase):
    """fastgrad against the others in one row: speedups over micrograd, the seed, PyTorch tensors and JAX, cost over
    floats."""
    def median(engine):
        return results.get(engine, {}).get(phase, {}).get("median")
    fg = median("fastgrad")
    out = {}
    if fg:
        for other in PEERS:
            if median(other):
                out[f"speedup_vs_{other}"] = median(other) / fg
        if median("floats"):
            out["times_floats"] = fg / median("floats")
    return out


def rows(report):
    """The table's rows: (workload name, title, unit label, {engine: value}, {engine: noisy}, ratios)."""
    out = []
    for w in report["workloads"]:
        label, factor = scale(w["unit"])
        for phase in w["shown_phases"]:
            values, noisy = {}, {}
            for engine, phases in w["results"].items():
                if phase in phases:
                    s = phases[phase]
                    values[engine] = s["median"] * factor
                    noisy[engine] = s["median"] > 0 and (s["q3"] - s["q1"]) / s["median"] > NOISY
            title = w["title"] if phase in ("op", "step", "bytes", "total") else f"{w['title']}: {phase}"
            out.append((w["name"], title, label, values, noisy, ratios(w["results"], phase)))
    return out


# --- the table -------------------------------------------------------------------------------------------

def table(report, markdown=False):
    engines = [e["name"] for e in report["engines"] if e["available"]]
    head = ["workload", "unit"] + engines + ["fastgrad vs micrograd"] + [f"vs {other}" for other in PEERS[1:]] + [
        "vs floats"]
    body = []
    for _, title, unit, values, noisy, r in rows(report):
        cells = [fmt(values.get(e)) + ("~" if noisy.get(e) else "") for e in engines]
        body.append([title, unit] + cells + [
            fmt_advantage(r.get(f"speedup_vs_{other}"), unit) for other in PEERS
        ] + [fmt_ratio(r.get("times_floats"))])
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(head) - 2)) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in body]
        return "\n".join(lines)
    widths = [max(len(row[i]) for row in [head] + body) for i in range(len(head))]
    def line(row):
        return "  ".join(c.ljust(widths[i]) if i < 2 else c.rjust(widths[i]) for i, c in enumerate(row))
    return "\n".join([line(head), "  ".join("-" * w for w in widths)] + [line(row) for row in body])


def legend():
    return ("Medians of interleaved repeats; ~ marks an interquartile range over 10% of the median (noise). "
            "'vs micrograd', 'vs seed', 'vs torch-tensor' and 'vs jax': their time / fastgrad's time ('faster'), or "
            "its inverse when fastgrad takes longer ('slower'); 'vs floats': fastgrad's time / the plain-float time.")


def header(report):
    m = report["machine"]
    lines = [f"fastgrad benchmark suite, {report['mode']} run, {report['date']}",
             f"machine: {m['cpu']}, {m['cores']} cores, {m['python']}, {m['platform']}"
             + (f", load average {m['load_average']} (5 min)" if "load_average" in m else "")]
    for e in report["engines"]:
        if e["available"]:
            lines.append(f"  {e['name']:<10} {e['version']:<24} {e['note']}")
        else:
            lines.append(f"  {e['name']:<10} {'-':<24} {e['note']}")
    return "\n".join(lines)


def targets_text(report):
    out = []
    for t in report["targets"]:
        if t["measured"] is None:
            state = "not measured in this run"
        else:
            state = "meets" if t["met"] else "MISSES"
        out.append(f"  [{state}] {t['figure']}: {t['shown']} (target {t['target']})")
    return "\n".join(out)


def notes_text(report):
    return "\n".join(f"  - {n}" for n in report["notes"])


def text(report):
    parts = [header(report), "", table(report), legend(), "", "Targets:",
             targets_text(report)]
    if report["notes"]:
        parts += ["", "Notes:", notes_text(report)]
    return "\n".join(parts)


# --- the chart -------------------------------------------------------------------------------------------

COLORS = {"fastgrad": "#d62728", "micrograd": "#1f77b4", "seed": "#9467bd", "floats": "#7f7f7f", "torch": "#ff7f0e",
          "torch-tensor": "#8c564b", "casadi": "#2ca02c", "jax": "#17becf"}


def chart(report, path):
    """A PNG: time per unit of every timed row (log scale), cost per node along the sweep, bytes per node."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    engines = [e["name"] for e in report["engines"] if e["available"]]
    # The batched rows have a chart of their own (batched_chart), the figures in bytes no time axis.
    timed = [r[1:] for r in rows(report)
             if not r[0].startswith(("sweep", "moons-batched")) and r[2] not in ("bytes/node", "MB")]
    sweep = [w for w in report["workloads"] if w["name"].startswith("sweep")]
    memory = [w for w in report["workloads"] if w["name"] == "memory"]

    fig = plt.figure(figsize=(12, 0.22 * len(timed) * len(engines) + 4.5))
    grid = fig.add_gridspec(2, 2, height_ratios=[max(0.22 * len(timed) * len(engines), 1), 4])
    ax = fig.add_subplot(grid[0, :])
    bar = 0.8 / len(engines)
    for k, engine in enumerate(engines):
        ys = [i + k * bar for i in range(len(timed))]
        xs = [r[2].get(engine, 0) or 0 for r in timed]
        ax.barh([y for y, x in zip(ys, xs) if x], [x for x in xs if x], height=bar, label=engine,
                color=COLORS.get(engine))
    ax.set_yticks([i + 0.4 - bar / 2 for i in range(len(timed))])
    ax.set_yticklabels([f"{r[0]} ({r[1]})" for r in timed], fontsize=8)
    ax.invert_yaxis()
    if timed:                 # a run of --only rows drawn elsewhere leaves this axis empty: nothing to log-scale
        ax.set_xscale("log")
    ax.set_xlabel("time per unit (log scale; shorter is faster)")
    if timed:
        ax.legend(ncol=len(engines), loc="lower center", bbox_to_anchor=(0.5, 1.0), fontsize=8, frameon=False)
    ax.grid(axis="x", which="both", alpha=0.3)
    fig.suptitle(f"fastgrad benchmark suite ({report['mode']} run), {report['date']}, "
                 f"{report['machine']['cpu']}, {report['machine']['cores']} cores, {report['machine']['python']}",
                 fontsize=10)

    ax = fig.add_subplot(grid[1, 0])
    for engine in engines:
        points = [(w["units"], w["results"][engine]["total"]["median"] * 1e9)
                  for w in sweep if engine in w["results"]]
        if points:
            ax.plot(*zip(*points), marker="o", label=engine, color=COLORS.get(engine))
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("nodes in the graph")
    ax.set_ylabel("ns per node (build + backward + free)")
    ax.set_title("scaling sweep: cost per node", fontsize=9)
    ax.grid(which="both", alpha=0.3)
    ax.legend(fontsize=8)

    ax = fig.add_subplot(grid[1, 1])
    if memory:
        results = memory[0]["results"]
        names = [e for e in engines if e in results]
        values = [results[e]["bytes"]["median"] for e in names]
        ax.bar(names, values, color=[COLORS.get(e) for e in names])
        for i, v in enumerate(values):
            ax.annotate(f"{v:.0f}", (i, v), ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("bytes per node (tracemalloc)")
    ax.set_title("memory per node of a live graph", fontsize=9)

    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def has_batched_rows(report):
    return any(w["name"].startswith("moons-batched-") and w["unit"] == "step" for w in report["workloads"])


def batched_path(path):
    """Where the batched rows' chart goes: beside the main chart (a path or a link), -batched after the first word
    of its name, so that it keeps the rest (bench-latest.png: bench-batched-latest.png, which git ignores too)."""
    folder, name = os.path.split(path)
    stem, ext = os.path.splitext(name)
    first, dash, rest = stem.partition("-")
    return os.path.join(folder, f"{first}-batched{dash}{rest}{ext}")


def batched_chart(report, path):
    """A PNG: time per point of the batched moons step against the number of points N, a line per engine
    (fastgrad's one-thread, all-threads and compiled-graph ways each a line of their own), log-log."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = {"step": "fastgrad batched, 1 thread", "all threads, wall clock": "fastgrad batched, all threads (wall "
              "clock)", "compiled graph": "fastgrad compiled graph"}
    lines = {}
    for w in report["workloads"]:
        if not has_batched_rows({"workloads": [w]}):
            continue
        points = int(float(w["name"].rsplit("-", 1)[1]))     # moons-batched-1e4: 10,000 points
        for engine, phases in w["results"].items():
            for phase in set(phases) & set(w["shown_phases"]):
                label = labels[phase] if engine == "fastgrad" else engine
                lines.setdefault(label, []).append((points, phases[phase]["median"] * 1e9 / points))
    fig, ax = plt.subplots(figsize=(8, 5.5))
    styles = dict(zip(labels.values(), (("-", "o"), ("--", "s"), (":", "^"))))   # fastgrad's three ways
    for label, points in sorted(lines.items()):
        line, marker = styles.get(label, ("-", "o"))
        ax.plot(*zip(*sorted(points)), marker=marker, linestyle=line, label=label, color=COLORS.get(label.split()[0]))
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("points N in the batch")
    ax.set_ylabel("ns per point (one training step / N)")
    m = report["machine"]
    ax.set_title(f"micrograd's moons step over N points ({report['mode']} run, {report['date']})\n"
                 f"{m['cpu']}, {m['cores']} cores, {m['python']}", fontsize=9)
    ax.grid(which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- the README block ------------------------------------------------------------------------------------

# The README's pictures link the repository's files (pyproject.toml's Source URL): a relative link shows nothing
# where the README is the long description (the package index, the sdist), which carries no pictures.
RAW_FILES = "https://raw.githubusercontent.com/fastgrad/fastgrad/main/"


def chart_path(bench_dir, quick, update_readme):
    """Where a run draws its chart when not told: the README shows results/bench.png, so only a run that rewrites
    the README redraws it; any other run draws beside it, in a file git ignores (results/.gitignore), and leaves
    the checkout as it was."""
    name = "bench.png" if update_readme else "bench-quick.png" if quick else "bench-latest.png"
    return os.path.join(bench_dir, "results", name)


def readme_block(report, chart_link, command):
    m = report["machine"]
    return "\n".join([
        README_START,
        f"Measured {report['date']} on {m['cpu']} ({m['cores']} cores), {m['python']}, "
        f"with `{command}`; regenerated by `python bench/run.py --update-readme`.",
        "",
        table(report, markdown=True),
        "",
        legend(),
        "",
        f"![fastgrad benchmark]({chart_link})",
        "",
        *([f"![the batched moons step: time per point against N]({batched_path(chart_link)})", ""]
          if has_batched_rows(report) else []),
        "Targets:",
        "",
        "\n".join(f"- {t['figure']}: {t['shown']} (target {t['target']}"
                  + (", met)" if t["met"] else ", missed)" if t["measured"] is not None else ")")
                  for t in report["targets"]),
        README_END,
    ])


def update_readme(path, block):
    """Replace the text between the markers; never touch anything else. Returns a message for the user."""
    if not os.path.exists(path):
        return f"{path} not found: README not updated"
    with open(path, encoding="utf-8") as f:
        readme = f.read()
    pattern = re.compile(re.escape(README_START) + ".*?" + re.escape(README_END), re.S)
    if not pattern.search(readme):
        return f"{path} has no {README_START} ... {README_END} markers: README not updated"
    with open(path, "w", encoding="utf-8") as f:
        f.write(pattern.sub(lambda _: block, readme, count=1))
    return f"updated the benchmark block in {path}"


def progress_printer(stream=sys.stderr):
    """A one-line progress indicator: rewritten in place on a terminal, a line per workload otherwise."""
    live = stream.isatty()
    last = [None]

    def show(workload, detail=""):
        if live:
            stream.write(f"\r\033[K{workload} {detail}")
            stream.flush()
        elif workload != last[0]:
            stream.write(f"{workload}\n")
            stream.flush()
        last[0] = workload

    def done():
        if live:
            stream.write("\r\033[K")
            stream.flush()

    return show, done
