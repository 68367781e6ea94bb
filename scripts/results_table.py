"""Markdown table of the config/small runs (scripts/gpu_results.sh): one row per config, seeds pooled.

    python scripts/results_table.py out/gpu [out/small/dense_s1 ...]

Each argument is a folder: either a run's out_dir (it holds metrics.jsonl; e.g. out/small/dense_s1) or a
collection such as gpu_results.sh's $OUT (searched recursively for NAME.metrics.jsonl, with NAME.log beside
it). A run called X_sS is seed S of config/small/X.py. Parameters, activated parameters and GFLOPs per
token come from the "model:" line of the run's log, or are recomputed from config/small/X.py on the meta
device when there is no log. Val loss is the last evaluation's; "spread" is max - min over seeds; "delta" is
the mean's change from the previous row of the ablation ladder (config/small/ablation/).
"""

import glob
import json
import os
import re
import statistics
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ORDER = ["dense", "moe", "pkm", "ultramem", "dense_4x",
         *[f"ablation/{os.path.basename(p)[:-3]}" for p in sorted(glob.glob(os.path.join(ROOT, "config", "small", "ablation", "*.py")))],
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


def final_val(metrics: str) -> tuple[int, float] | None:
    with open(metrics) as f:
        evals = [r for r in map(json.loads, filter(str.strip, f)) if "val_loss" in r]
    return (evals[-1]["step"], evals[-1]["val_loss"]) if evals else None


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


def table(folders: list[str]) -> str:
    groups: dict[str, dict] = {}
    for folder in folders:
        for name, metrics, log in find_runs(folder):
            config, seed = split_seed(name)
            g = groups.setdefault(config, {"seeds": {}, "counts": None})
            res = final_val(metrics)
            if res is not None:
                g["seeds"][seed] = res
            g["counts"] = g["counts"] or counts_from_log(log)
    order = sorted(groups, key=lambda c: (ORDER.index(c) if c in ORDER else len(ORDER), c))
    lines = ["| run | seeds | params | activated | GFLOPs/token | steps | val loss | spread | delta |",
             "|---|---|---|---|---|---|---|---|---|"]
    prev = None
    for config in order:
        g = groups[config]
        counts = g["counts"] or counts_from_config(config)
        p, a, f = (f"{counts[0] / 1e6:.1f}M", f"{counts[1] / 1e6:.1f}M", f"{counts[2] / 1e9:.3f}") if counts else ("?",) * 3
        seeds = sorted(g["seeds"], key=lambda s: (len(s), s))
        losses = [g["seeds"][s][1] for s in seeds]
        steps = sorted({g["seeds"][s][0] for s in seeds})
        mean = statistics.mean(losses) if losses else None
        spread = f"{max(losses) - min(losses):.4f}" if len(losses) > 1 else "-"
        delta = "-"
        if config.startswith("ablation/"):
            if prev is not None and prev[0].startswith("ablation/") and mean is not None and prev[1] is not None:
                delta = f"{mean - prev[1]:+.4f}"
        prev = (config, mean)
        lines.append(f"| {config} | {','.join(seeds) or '-'} | {p} | {a} | {f} | {'/'.join(map(str, steps)) or '-'} | "
                     f"{'-' if mean is None else f'{mean:.4f}'} | {spread} | {delta} |")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    print(table(sys.argv[1:]))
