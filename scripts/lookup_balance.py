"""How evenly a model's memory-layer slots spread over the value rows, and what that does to the lookup's sorted
backward (run from the repo root: PYTHONPATH=. python scripts/lookup_balance.py [CONFIG] [--steps=10]
["--grid=key:a,b/..."] [--iters=20] [--layers=0,3] [--data=random|dataset] [--data_dir=DIR] [--schedule=bench|train]
[--report=0,10,100] [--max_iters=N] [--grad_accum=N]).

Builds CONFIG (default config/ultramem_151m.py) as `bench.py --mode=train` does (random weights, one batch of
random tokens from seed 0, AdamW), trains it eagerly for --steps steps on that batch under bf16 autocast (bench.py
times its steps after 10 such warm-up steps; --data=dataset: a new batch of the config's dataset each step, as
bench.py --train_data=dataset), then records each memory layer's lookup inputs in one forward. Each step is as
bench.py's (AdamW with the config's betas and weight decay, gradient clipping, one batch); --schedule=train: with
train.py's learning rates (its warm-up and decay over the config's max_iters, --max_iters to change it, and the
per-group multipliers such as the values' rate) instead of bench.py's peak rate from the first step; --grad_accum=N:
N batches per step, as train.py's grad_accum (default 1; config/ultramem_151m.py trains with 2). --report: the rows
hit at those steps too (counted in the step's first forward). Session 19's runs (docs/BENCHMARKS.md) predate the
config's betas and clipping here: they ran AdamW's default betas (0.9, 0.999), no clipping, one batch per step. For
each layer it prints the slots per value row and per row tile of the sorted backward (16 and 32 rows: the largest
tile against the mean is the load imbalance of a one-program-per-tile kernel), and times the lookup's backward
(kernels.mem_lookup_backward, median of triton.testing.do_bench) and the forward on the recorded indices and on uniform
random rows of the same shape, with the recorded values' dtype and with bf16 values, for the defaults and each
configuration of --grid (kernels.CONFIG overrides, as sweep_lookup.py's). --layers=0,3: time those layers only. Timed
on CUDA only. docs/BENCHMARKS.md, session 18.
"""
import itertools
import sys
import time

import torch
import triton

import bench
import kernels
import memory
import model
import train

path = next((a for a in sys.argv[1:] if not a.startswith("--")), "config/ultramem_151m.py")
opt_arg = {a.split("=", 1)[0][2:]: a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--")}
STEPS, ITERS = int(opt_arg.get("steps", 10)), int(opt_arg.get("iters", 20))
SPEC = [(p.split(":")[0], [int(v) for v in p.split(":")[1].split(",")]) for p in opt_arg.get("grid", "").split("/") if p]
GRID = [{}] + [dict(zip([k for k, _ in SPEC], combo)) for combo in itertools.product(*[v for _, v in SPEC])] * bool(SPEC)
cfg = {}
exec(open(path).read(), {}, cfg)
c = model.GPTConfig(**{k: v for k, v in cfg.items() if k in model.GPTConfig.__dataclass_fields__})
B, T = cfg.get("batch_size", 16), c.block_size
dev = "cuda" if torch.cuda.is_available() else "cpu"  # the CPU: a smoke run, no timing
torch.manual_seed(0)
m = bench.build_model(c, dev, None)
tcfg = {**train.default_config(), **cfg, **{k: int(opt_arg[k]) for k in ("max_iters",) if k in opt_arg}}
SCHEDULE = opt_arg.get("schedule", "bench")
if SCHEDULE not in ("bench", "train"):
    sys.exit(f"error: --schedule must be bench or train, got {SCHEDULE!r}")
groups = m.optim_groups(tcfg["weight_decay"])
for g in groups:
    g.pop("names")
opt = torch.optim.AdamW(groups, lr=tcfg["learning_rate"], betas=(tcfg["beta1"], tcfg["beta2"]), fused=dev == "cuda")
ACCUM = int(opt_arg.get("grad_accum", 1))
REPORT = {int(s) for s in opt_arg.get("report", "").split(",") if s}
if ACCUM < 1 or any(s >= STEPS or s < 0 for s in REPORT):
    sys.exit(f"error: --grad_accum must be >= 1 and --report steps within 0..{STEPS - 1}")
gen = torch.Generator(device=dev).manual_seed(0)
x = torch.randint(0, c.vocab_size, (B, T), device=dev, generator=gen)
y = torch.randint(0, c.vocab_size, (B, T), device=dev, generator=gen)
DATA = opt_arg.get("data", "random")
if DATA == "dataset":  # a new batch each step from the config's dataset, as bench.py --train_data=dataset draws them
    try:
        loader = bench.train_loader({**tcfg, **{k: opt_arg[k] for k in ("data_dir",) if k in opt_arg}}, c, B)
    except bench.BenchError as e:
        sys.exit(f"error: {e}")
    batch = lambda: tuple(t.to(dev) for t in loader.next_batch())  # noqa: E731
elif DATA == "random":
    batch = lambda: (x, y)  # noqa: E731
else:
    sys.exit(f"error: --data must be random or dataset, got {DATA!r}")


def hit_stats(rows: torch.Tensor, N: int) -> str:
    """The share of the N rows hit, the share of the reads the most-hit 1% of rows take, the five largest counts."""
    cnt = torch.bincount(rows.reshape(-1), minlength=N)
    top1 = cnt.topk(max(1, N // 100)).values.sum() / cnt.sum()
    return (f"rows hit {(cnt > 0).float().mean():.1%}, top 1% of rows {top1:.0%} of the reads, "
            f"most-hit rows {cnt.topk(min(5, N)).values.tolist()}")


recorded, lookup, counting = [], kernels.mem_lookup, []  # counting: a reported training step's rows hit
mode = "train"  # then "record": the final forward's lookup inputs


def record(values, rows, blocks, scores, E):
    if mode == "record":
        recorded.append((values.detach(), rows.detach().clone(), blocks.detach().clone(), scores.detach().clone(), E))
    elif counting:
        counting.append(hit_stats(rows, values.shape[0]))
    return lookup(values, rows, blocks, scores, E)


memory.kernels.mem_lookup = record
m.train()
t0 = time.perf_counter()
for step in range(STEPS):
    if SCHEDULE == "train":
        for g in opt.param_groups:
            g["lr"] = train.lr_at(step, tcfg) * train.lr_mult_at(step, g, tcfg["max_iters"])
    m.refresh()
    for micro in range(ACCUM):
        xb, yb = batch()
        counting[:] = ["step"] if step in REPORT and micro == 0 else []
        with torch.autocast(dev, dtype=torch.bfloat16):
            _, ce, aux = m(xb, yb)
            loss = ce + sum(aux.values()) if aux else ce
        if counting:
            print(f"step {step} (lr {opt.param_groups[0]['lr']:.2e}), loss {loss.item():.3f}: "
                  + "; ".join(f"layer {i}: {s}" for i, s in enumerate(counting[1:])), flush=True)
            counting.clear()
        (loss / ACCUM).backward()
    if tcfg["grad_clip"] > 0:
        torch.nn.utils.clip_grad_norm_(m.parameters(), tcfg["grad_clip"])
    opt.step()
    opt.zero_grad(set_to_none=True)
if dev == "cuda":
    torch.cuda.synchronize()
print(f"{path}: {STEPS} eager steps ({SCHEDULE}'s schedule) on "
      f"{'one random batch' if DATA == 'random' else 'batches of the dataset'} of {B} x {T} ({ACCUM} per step) in "
      f"{time.perf_counter() - t0:.1f} s, loss {loss.item() if STEPS else float('nan'):.3f}", flush=True)
mode = "record"
m.refresh()
with torch.no_grad(), torch.autocast(dev, dtype=torch.bfloat16):
    m(*batch())
memory.kernels.mem_lookup = lookup
keep = dict(kernels.CONFIG)
LAYERS = [int(i) for i in opt_arg["layers"].split(",")] if "layers" in opt_arg else range(len(recorded))
bench_ms = lambda fn: triton.testing.do_bench(fn, warmup=5, rep=ITERS, return_mode="median")  # noqa: E731
for li, (values, rows, blocks, scores, E) in enumerate(recorded):
    N, Dv = values.shape
    Tn, K = rows.shape
    cnt = torch.bincount(rows.reshape(-1), minlength=N)
    line = [f"layer {li}: {N} rows x {Dv}, {Tn} tokens x {K} slots ({Tn * K / N:.2f} per row); {hit_stats(rows, N)}"]
    for R in (16, 32):
        tc = torch.nn.functional.pad(cnt, (0, (-N) % R)).view(-1, R).sum(1).float()
        line.append(f"{R}-row tiles: mean {tc.mean():.1f}, p99.9 {tc.quantile(0.999):.0f}, max {tc.max():.0f} "
                    f"({tc.max() / tc.mean():.0f}x the mean)")
    print("; ".join(line), flush=True)
    uniform = torch.randint(0, N, rows.shape, device=dev, dtype=rows.dtype, generator=gen)
    for dt in (values.dtype, torch.bfloat16) if values.dtype != torch.bfloat16 else (values.dtype,):
        v, s = values.to(dt), scores.to(dt)  # the layer passes the scores in the values' dtype
        gout = torch.randn(Tn, E, Dv, device=dev, dtype=dt)
        if dev != "cuda" or li not in LAYERS:
            continue
        fwd = [f"{name} {bench_ms(lambda r=r: kernels.mem_lookup(v, r, blocks, s, E)) * 1e3:,.0f} us"
               for name, r in (("recorded", rows), ("uniform", uniform))]
        print(f"  forward, {str(dt)[6:]} values: " + ", ".join(fwd), flush=True)
        for change in GRID:
            kernels.CONFIG.clear()
            kernels.CONFIG.update(keep, **change)
            times = []
            for name, r in (("recorded", rows), ("uniform", uniform)):
                fn = lambda r=r: kernels.mem_lookup_backward(gout, v, r, blocks, s, E)  # noqa: E731
                times.append(f"{name} {bench_ms(fn) * 1e3:,.0f} us")
            print(f"  backward, {str(dt)[6:]} values, {change or 'defaults'}: " + ", ".join(times), flush=True)
kernels.CONFIG.clear()
kernels.CONFIG.update(keep)
