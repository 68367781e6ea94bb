"""Markdown table of the config/small runs (scripts/gpu_results.sh): one row per config, seeds pooled.

    python scripts/results_table.py out/gpu [out/small/dense_s1 ...]

Each argument is a folder: either a run's out_dir (it holds metrics.jsonl; e.g. out/small/dense_s1) or a
collection such as gpu_results.sh's $OUT (searched recursively for NAME.metrics.jsonl, with NAME.log beside
it). A run called X_sS is seed S of config/small/X.py. Parameters, activated parameters and GFLOPs per
token come from the "model:" line of the run's log, or are recomputed from config/small/X.py on the meta
device when there is no log. Val loss is the last evaluation's; "spread" is max - min over seeds; "delta" is
the mean's change from the previous row of the ablation ladder (config/small/ablation/, and separately its
variant config/small/ablation_init/). Where runs have a loss on other text (scripts/eval_text.py's JSON, as
NAME.text.json beside NAME.metrics.jsonl, or text.json in a run's out_dir; gpu_results.sh writes them), a
"text loss" column gives its mean over those seeds.

    python scripts/results_table.py out/gpu --plot=val.png [--only=dense,moe,pkm,ultramem] [--title=...]
                                            [--from_step=200]

--plot=PATH.png also writes a figure of validation loss against step: one line per config, in the table's
order, the mean over the seeds present at each step, with a light band from min to max when there are 2+
seeds. --only=PREFIX[,PREFIX...] keeps the configs whose name starts with one of the prefixes (e.g.
--only=ablation/ or --only=sparsity_); --from_step=N leaves out the evaluations before step N, whose high
early losses squash the rest; --title=... titles it. The table is printed as always. --plot needs
matplotlib (not a dependency of the project: pip install matplotlib).
"""

import glob
import json
import os
import re
import statistics
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ORDER = ["dense", "moe", "pkm", "ultramem", "ultramem_vlr4", "dense_4x",
         *[f"ablation/{os.path.basename(p)[:-3]}" for p in sorted(glob.glob(os.path.join(ROOT, "config", "small", "ablation", "*.py")))],
         *[f"ablation_init/{os.path.basename(p)[:-3]}"
           for p in sorted(glob.glob(os.path.join(ROOT, "config", "small", "ablation_init", "*.py")))],
         "sparsity_x3", "sparsity_x6", "sparsity_x12", "sparsity_x24"]
MODEL_LINE = re.compile(r"model: ([\d.]+)M parameters, ([\d.]+)M activated, ([\d.]+) GFLOPs/token")


def find_runs(folder: str) -> list[tuple[str, str, str | None]]:
    """(run name, metrics path, log path or None) of the runs in a folder."""
    folder = folder.rstrip("/")
    if os.path.isfile(os.path.join(folder, "metrics.jsonl")):  # a run's out_dir
        norm = os.path.normpath(folder).replace(os.sep, "/")
        name = norm.split("out/small/", 1)[1] if "out/small/" in norm else os.path.basename(norm)
        return [(name, os.path.join(folder, "metrics.jsonl"), None)]
    runs = []
    for path in sorted(glob.glob(os.path.join(folder, "**", "*.metrics.jsonl"), recursive=True)):
        rel = os.path.relpath(path, folder).replace(os.sep, "/")[: -len(".metrics.jsonl")]
        name = rel[len("small/"):] if rel.startswith("small/") else rel
        log = path[: -len(".metrics.jsonl")] + ".log"
        runs.append((name, path, log if os.path.isfile(log) else None))
    return runs


def split_seed(name: str) -> tuple[str, str]:
    m = re.fullmatch(r"(.*)_s(\d+)", name)
    return (m.group(1), m.group(2)) if m else (name, "-")


def val_curve(metrics: str) -> list[tuple[int, float]]:
    """(step, val loss) of every evaluation of a run, in file order."""
    with open(metrics) as f:
        return [(r["step"], r["val_loss"]) for r in map(json.loads, filter(str.strip, f)) if "val_loss" in r]


def counts_from_log(log: str | None) -> tuple[float, float, float] | None:
    if log is None:
        return None
    with open(log, errors="replace") as f:
        for line in f:
            m = MODEL_LINE.search(line)
            if m:
                return float(m.group(1)) * 1e6, float(m.group(2)) * 1e6, float(m.group(3)) * 1e9
    return None


def counts_from_config(config: str) -> tuple[float, float, float] | None:
    path = os.path.join(ROOT, "config", "small", config + ".py")
    if not os.path.isfile(path):
        return None
    import runpy

    import torch

    sys.path.insert(0, ROOT)
    from model import GPT, GPTConfig

    settings = {k: v for k, v in runpy.run_path(path).items() if not k.startswith("_")}
    with torch.device("meta"):
        model = GPT(GPTConfig.from_dict(settings))
    return model.num_params(), model.num_params(activated=True), model.flops_per_token()


def text_loss(metrics: str) -> float | None:
    """The run's loss on other text (scripts/eval_text.py --out=...), if it was measured."""
    if metrics.endswith(".metrics.jsonl"):
        path = metrics[: -len(".metrics.jsonl")] + ".text.json"
    else:
        path = os.path.join(os.path.dirname(metrics), "text.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return float(json.load(f)["loss"])


def collect(folders: list[str]) -> dict[str, dict]:
    """config -> {"seeds": {seed: (last step, last val loss)}, "curves": {seed: [(step, val loss)]}, "counts",
    "text": {seed: loss on other text}}, in the table's order."""
    groups: dict[str, dict] = {}
    for folder in folders:
        for name, metrics, log in find_runs(folder):
            config, seed = split_seed(name)
            g = groups.setdefault(config, {"seeds": {}, "curves": {}, "counts": None, "text": {}})
            curve = val_curve(metrics)
            if curve:
                g["seeds"][seed] = curve[-1]
                g["curves"][seed] = curve
            g["counts"] = g["counts"] or counts_from_log(log)
            other = text_loss(metrics)
            if other is not None:
                g["text"][seed] = other
    order = sorted(groups, key=lambda c: (ORDER.index(c) if c in ORDER else len(ORDER), c))
    return {c: groups[c] for c in order}


def table(folders: list[str]) -> str:
    groups = collect(folders)
    with_text = any(g["text"] for g in groups.values())
    lines = ["| run | seeds | params | activated | GFLOPs/token | steps | val loss | spread | delta |"
             + (" text loss |" if with_text else ""),
             "|---|---|---|---|---|---|---|---|---|" + ("---|" if with_text else "")]
    prev = None
    for config, g in groups.items():
        counts = g["counts"] or counts_from_config(config)
        p, a, f = (f"{counts[0] / 1e6:.1f}M", f"{counts[1] / 1e6:.1f}M", f"{counts[2] / 1e9:.3f}") if counts else ("?",) * 3
        seeds = sorted(g["seeds"], key=lambda s: (len(s), s))
        losses = [g["seeds"][s][1] for s in seeds]
        steps = sorted({g["seeds"][s][0] for s in seeds})
        mean = statistics.mean(losses) if losses else None
        spread = f"{max(losses) - min(losses):.4f}" if len(losses) > 1 else "-"
        delta = "-"
        ladder = config.split("/")[0] + "/"  # the ladder (ablation/) or its variant with the init brought forward
        if ladder in ("ablation/", "ablation_init/"):
            if prev is not None and prev[0].startswith(ladder) and mean is not None and prev[1] is not None:
                delta = f"{mean - prev[1]:+.4f}"
        prev = (config, mean)
        text = f" {statistics.mean(g['text'].values()):.4f} |" if g["text"] else " - |"
        lines.append(f"| {config} | {','.join(seeds) or '-'} | {p} | {a} | {f} | {'/'.join(map(str, steps)) or '-'} | "
                     f"{'-' if mean is None else f'{mean:.4f}'} | {spread} | {delta} |" + (text if with_text else ""))
    return "\n".join(lines)


def import_matplotlib():
    """matplotlib on the Agg backend; exits with status 2 and one line on stderr when it is not installed."""
    try:
        import matplotlib
    except ImportError:
        print("--plot needs matplotlib (pip install matplotlib)", file=sys.stderr)
        sys.exit(2)
    matplotlib.use("Agg")
    return matplotlib


def plot(folders: list[str], path: str, only: list[str] | None = None, title: str | None = None,
         from_step: int = 0) -> list[str]:
    """Writes validation loss against step to path (see the module's docstring); returns the configs drawn."""
    import_matplotlib()
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 5), dpi=120)
    ax = fig.add_subplot()
    colors = [f"C{i}" for i in range(10)]
    styles = ["-", "--", ":", "-."]
    drawn = []
    for config, g in collect(folders).items():
        if only and not any(config.startswith(p) for p in only):
            continue
        at: dict[int, list[float]] = {}
        for curve in g["curves"].values():
            for step, loss in curve:
                if step >= from_step:
                    at.setdefault(step, []).append(loss)
        if not at:
            continue
        steps = sorted(at)
        i = len(drawn)
        n_seeds = len(g["curves"])
        line, = ax.plot(steps, [statistics.mean(at[s]) for s in steps], color=colors[i % 10],
                        linestyle=styles[i // 10 % len(styles)], linewidth=1.6, marker=".", markersize=5,
                        label=config + (f" ({n_seeds} seeds)" if n_seeds > 1 else ""))
        if n_seeds > 1:
            ax.fill_between(steps, [min(at[s]) for s in steps], [max(at[s]) for s in steps],
                            color=line.get_color(), alpha=0.2, linewidth=0)
        drawn.append(config)
    ax.set_xlabel("step")
    ax.set_ylabel("validation loss")
    if title:
        ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if drawn:
        ax.legend(loc="upper right", fontsize="small", framealpha=0.9)
    fig.tight_layout()
    fig.savefig(path)
    return drawn


def main(argv: list[str]) -> None:
    opts = {}
    folders = []
    for arg in argv:
        if arg.startswith("--"):
            key, eq, value = arg[2:].partition("=")
            if key not in ("plot", "only", "title", "from_step") or not eq:
                sys.exit(f"unknown option {arg}\n{__doc__}")
            opts[key] = value
        else:
            folders.append(arg)
    if not folders:
        sys.exit(__doc__)
    if not opts.get("from_step", "0").isdigit():
        sys.exit(f"--from_step wants a step number, not {opts['from_step']!r}")
    if "plot" in opts:
        import_matplotlib()  # before any work, so that a missing matplotlib prints no partial table
    print(table(folders))
    if "plot" in opts:
        only = [p for p in opts.get("only", "").split(",") if p] or None
        drawn = plot(folders, opts["plot"], only=only, title=opts.get("title") or None,
                     from_step=int(opts.get("from_step", "0")))
        print(f"wrote {opts['plot']}: {len(drawn)} configs", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1:])
