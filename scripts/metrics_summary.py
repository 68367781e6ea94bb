"""Summarise a run's metrics.jsonl: median tokens/s and MFU after the warm-up records, last losses, and where
the time went between the first and the last record (span_s; eval_s of it in evaluations, each timed from the
training record before it), and when those records were written (t_first, t_last: Unix times, to line up runs
that ran side by side).

    python scripts/metrics_summary.py out/dense_151m [--skip=3]         # a run's folder
    python scripts/metrics_summary.py docs/runs/.../ultramem_s1.metrics.jsonl  # or a copy of its metrics file
"""

import json
import statistics
import sys


def summary(out_dir: str, skip: int = 3) -> dict:
    path = out_dir if out_dir.endswith(".jsonl") else f"{out_dir}/metrics.jsonl"
    with open(path) as f:
        recs = [json.loads(line) for line in f]
    train = [r for r in recs if "tokens_per_sec" in r][skip:]  # the first records include compilation
    evals = [r for r in recs if "val_loss" in r]
    eval_s, last_train = 0.0, None
    for r in recs:
        if "val_loss" in r and last_train is not None:
            eval_s += r["time"] - last_train["time"]
        elif "loss" in r:
            last_train = r
    return {
        "out_dir": out_dir,
        "steps": recs[-1]["step"],
        "tokens_per_sec": statistics.median(r["tokens_per_sec"] for r in train) if train else None,
        "mfu": statistics.median(r["mfu"] for r in train) if train else None,
        "last_loss": [r["loss"] for r in recs if "loss" in r][-1],
        "val_loss": [(r["step"], round(r["val_loss"], 4)) for r in evals],
        "peak_mem_gb": max((r.get("peak_mem_gb", 0) for r in evals), default=None),
        "span_s": round(recs[-1]["time"] - recs[0]["time"], 1),
        "t_first": round(recs[0]["time"], 1), "t_last": round(recs[-1]["time"], 1),  # Unix times: runs side by side
        "eval_s": round(eval_s, 1),
    }


if __name__ == "__main__":
    skip = int(next((a.split("=")[1] for a in sys.argv[2:] if a.startswith("--skip=")), 3))
    print(json.dumps(summary(sys.argv[1], skip)))
