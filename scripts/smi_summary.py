"""Summarise an nvidia-smi utilisation log (scripts/gpu_pair.sh writes one while its jobs run):
`timestamp, index, utilization.gpu, memory.used` rows (csv, noheader, nounits), one line per GPU with the
samples, the time they span, the mean utilisation, the share of samples at 0% and the peak memory.
--seconds=N keeps only the samples within N s of the log's first one (a part that ended before the call did).

    python scripts/smi_summary.py SMI.csv [--seconds=N]
"""
import csv
import sys
from datetime import datetime


def summary(path: str, seconds: float | None = None) -> dict[int, dict]:
    by_gpu: dict[int, list] = {}
    start = None
    with open(path) as f:
        for row in csv.reader(f):
            if len(row) != 4:
                continue  # a line cut when the logger was stopped
            try:
                t = datetime.strptime(row[0].strip(), "%Y/%m/%d %H:%M:%S.%f")
                gpu, util, mem = int(row[1]), float(row[2]), float(row[3])
            except ValueError:
                continue
            start = start or t
            if seconds is None or (t - start).total_seconds() <= seconds:
                by_gpu.setdefault(gpu, []).append((t, util, mem))
    out = {}
    for gpu, rows in sorted(by_gpu.items()):
        utils = [u for _, u, _ in rows]
        out[gpu] = {"samples": len(rows), "span_s": round((rows[-1][0] - rows[0][0]).total_seconds(), 1),
                    "mean_util": round(sum(utils) / len(utils), 1),
                    "idle_share": round(sum(u == 0 for u in utils) / len(utils), 3),
                    "peak_mem_mib": max(m for _, _, m in rows)}
    return out


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--seconds=")]
    secs = [float(a.split("=", 1)[1]) for a in sys.argv[1:] if a.startswith("--seconds=")]
    if len(args) != 1 or len(secs) > 1:
        sys.exit("usage: python scripts/smi_summary.py SMI.csv [--seconds=N]")
    for gpu, s in summary(args[0], secs[0] if secs else None).items():
        print(f"GPU {gpu}: {s['samples']} samples over {s['span_s']} s, mean utilisation {s['mean_util']}%, "
              f"{100 * s['idle_share']:.1f}% of samples at 0%, peak memory {s['peak_mem_mib']:.0f} MiB")
