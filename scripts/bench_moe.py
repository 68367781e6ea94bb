"""GPU measurements for the MoE baseline (run from the repo root:
python scripts/bench_moe.py [--compile] [--impls=grouped,triton,gather,fused] [--tune[=fused,...]] [--decode_only]
[--fused_grid=key:v,v/key:v,...]).

1. Decode latency of one MoE layer of MoE-1.6B-2in34 (D 2048, 34 experts of 4864, top-2, bf16), at 1..512
   tokens, replayed as a CUDA graph, against its HBM floor (bytes of the distinct experts the batch touches,
   at the measured read rate). A stack of LAYERS independent layers is timed so that L2 (50 MB) cannot hold
   the experts between replays; the time per layer is reported, alone and with its output added into the residual
   stream (x + layer(x), as Block.forward takes it). Once per moe_impl in --impls.
   --tune: the Triton kernel alone (both projections) over launch configurations at 8, 64, 512 tokens;
   with gather in --impls, also kernels.moe_gather_mm (both projections) at 1, 2, 4, 8 tokens
   (--gather_tune_tokens=1,2 picks others); with fused in --impls, kernels.moe_decode (the whole layer) at
   1, 2, 4 tokens (--fused_tune_tokens=...). With fused in --impls, its launches are also timed added one by one
   at those token counts.
   moe_impl="gather" and "fused" are timed up to 16 tokens only (gather reads an expert once per token-slot;
   fused takes at most kernels.MOE_DECODE_MAX_SLOTS token-slots).
2. Whether torch._grouped_mm reads the weights of empty groups: the same rows in 1 group vs spread over all.
"""
import itertools
import sys
import time

import torch
import torch.nn.functional as F

import kernels
from bench import _cuda_graph, parse_grid, replay_seconds
from model import GPTConfig, MoE

dev = "cuda" if torch.cuda.is_available() else "cpu"
small = dev == "cpu"  # a dry run of the logic on a CPU, with tiny shapes
D, E, Fh, K = (64, 34, 96, 2) if small else (2048, 34, 4864, 2)
LAYERS = 2 if small else 8
COMPILE = "--compile" in sys.argv
IMPLS = next((a.split("=", 1)[1].split(",") for a in sys.argv if a.startswith("--impls=")), ["grouped", "triton"])
# --gather_tune_tokens=1,2: the gather sweep's token counts (default 1, 2, 4, 8; 108 configurations each)
GATHER_TUNE_TOKENS = next(([int(t) for t in a.split("=", 1)[1].split(",") if t] for a in sys.argv
                           if a.startswith("--gather_tune_tokens=")), [1, 2, 4, 8])
DECODE_ONLY = "--decode_only" in sys.argv  # skip sections 2 and 3
# --tune sweeps the launch parameters of every impl in IMPLS that has a kernel; --tune=fused,gather of those only
TUNE = next((set(IMPLS) if a == "--tune" else set(a.split("=", 1)[1].split(",")) for a in sys.argv
             if a == "--tune" or a.startswith("--tune=")), set())
FUSED_TUNE_TOKENS = next(([int(t) for t in a.split("=", 1)[1].split(",") if t] for a in sys.argv
                          if a.startswith("--fused_tune_tokens=")), [1, 2, 4])
# the fused layer's sweep (--tune=fused)
FUSED_GRID = {"fc_block_n": (32, 64, 128), "block_n": (32, 64, 128), "block_k": (64, 128), "stages": (3, 4),
              "programs_per_sm": (2, 4)}
# --fused_grid=fc_block_n:32,64/stages:3,4 sweeps these keys of kernels.MOE_DECODE_CONFIG instead
for a in sys.argv:
    if a.startswith("--fused_grid="):
        FUSED_GRID = parse_grid("--fused_grid", a.split("=", 1)[1], kernels.MOE_DECODE_CONFIG,
                                "kernels.MOE_DECODE_CONFIG")
torch.manual_seed(0)


def time_fn(fn, iters: int = 50) -> float:
    """Seconds per call of fn, captured in a CUDA graph (as decoding runs), median of 3 timings."""
    if dev == "cpu":
        fn()
        t = time.perf_counter()
        for _ in range(3):
            fn()
        return (time.perf_counter() - t) / 3
    return replay_seconds(fn, iters)


# --- HBM read rate: a reduction over 2 GiB ---------------------------------------------------------
big = torch.randn(2**20 if small else 2**30, device=dev, dtype=torch.bfloat16)
bw = big.numel() * 2 / time_fn(lambda: big.sum(dtype=torch.float32))
print(f"device {torch.cuda.get_device_name() if dev == 'cuda' else 'cpu'}; read rate {bw / 1e12:.2f} TB/s")
del big

# --- 1. decode latency of one MoE layer -----------------------------------------------------------------
cfg = GPTConfig(n_layer=30, n_head=16, n_embd=D, ffn="moe", moe_num_experts=E, moe_top_k=K, moe_hidden=Fh,
                moe_impl="grouped", moe_z_coef=0.001)
with torch.device(dev):  # initialise on the device (a layer is 0.68B weights)
    layers = [MoE(cfg).to(torch.bfloat16).eval() for _ in range(LAYERS)]
expert_bytes = 2 * D * Fh * 2
router_bytes = E * D * 2


def stack(xs):
    return [m(x)[0] for m, x in zip(layers, xs)]


def stack_residual(xs):  # as Block.forward takes the layer: its output added into the residual stream (here x itself)
    return [m(x, residual=x)[0] for m, x in zip(layers, xs)]


step = torch.compile(stack, fullgraph=True) if COMPILE else stack
step_residual = torch.compile(stack_residual, fullgraph=True) if COMPILE else stack_residual
print(f"MoE layer D={D} E={E} F={Fh} top-{K}: {expert_bytes / 1e6:.1f} MB per expert, "
      f"{E * expert_bytes / 1e9:.3f} GB per layer; {'compiled' if COMPILE else 'eager'} ops in a CUDA graph")


def routed(m: MoE, x: torch.Tensor) -> torch.Tensor:
    """The experts the router of m picks for the tokens x (N, D): (N, K), as the layer routes."""
    return (x.float() @ m.router.weight.float().T).topk(K, -1).indices


def experts_hit(xs: list) -> float:
    """The mean over the layers of the distinct experts their tokens xs (one (N, D) per layer) touch."""
    return sum(len(torch.unique(routed(m, x))) for m, x in zip(layers, xs)) / LAYERS


def tune(label: str, config: dict, grid: dict, fn, floor: float) -> dict:
    """Times fn under every combination of grid's values (written into config, restored after) and prints each
    and the best against the floor; a configuration that fails (e.g. out of shared memory) is reported and skipped.
    Returns {values: time / floor} over the configurations that ran."""
    base, best, ratios = dict(config), None, {}
    for values in itertools.product(*grid.values()):
        config.update(zip(grid, values))
        try:
            t = time_fn(fn) / LAYERS
        except Exception as e:
            print(f"  {label} {config}: failed ({type(e).__name__})")
            continue
        ratios[values] = t / floor
        if best is None or t < best[0]:
            best = (t, dict(config))
        print(f"  {label} {dict(zip(grid, values))}: {t * 1e6:7.1f} us, x{t / floor:.2f} floor")
    config.update(base)
    if best is not None:
        print(f"{label}: best {best[1]} {best[0] * 1e6:.1f} us, x{best[0] / floor:.2f} floor ({floor * 1e6:.1f} us)")
    return ratios


if "fused" in TUNE:  # 1a. kernels.moe_decode (the whole layer, routing included) swept
    # first, and the best by the sum of its ratios to the floor over FUSED_TUNE_TOKENS adopted for the table below
    ratios = {}
    with torch.no_grad():
        for B in FUSED_TUNE_TOKENS:
            xs = [torch.randn(B, D, device=dev, dtype=torch.bfloat16) for _ in layers]
            hit = experts_hit(xs)

            def fused(xs=xs):
                return [kernels.moe_decode(x, m.router.weight, m.w_fc, m.w_proj, K, True) for m, x in zip(layers, xs)]

            for values, r in tune(f"fused B={B}", kernels.MOE_DECODE_CONFIG, FUSED_GRID, fused,
                                  (hit * expert_bytes + router_bytes) / bw).items():
                ratios.setdefault(values, []).append(r)
    full = {v: sum(r) for v, r in ratios.items() if len(r) == len(FUSED_TUNE_TOKENS)}
    if full:
        kernels.MOE_DECODE_CONFIG.update(zip(FUSED_GRID, min(full, key=full.get)))
        print(f"fused: adopted {kernels.MOE_DECODE_CONFIG} (the least sum of x floor over {FUSED_TUNE_TOKENS} tokens: "
              f"{min(full.values()):.2f})")

if "fused" in IMPLS and dev == "cuda":  # 1b. where kernels.moe_decode's time goes: its launches added one by one
    with torch.no_grad():
        for B in FUSED_TUNE_TOKENS:
            xs = [torch.randn(B, D, device=dev, dtype=torch.bfloat16) for _ in layers]
            pdl = kernels._moe_decode_pdl(xs[0])  # as moe_decode launches them: chained by PDL, with a cast, or not
            runs = [kernels._moe_decode_launches(x, m.router.weight, m.w_fc, m.w_proj, K, True, pdl)[1]
                    for m, x in zip(layers, xs)]
            for launches in runs:  # every launch's inputs written once
                for launch in launches:
                    launch()
            # the first 1, 2, ... launches of each layer per graph: each prefix starts with the logits launch, which
            # zeroes proj's arrival counters (or its output, for its atomic adds)
            names = ["logits", "fc", "proj", "cast"][:len(runs[0])]
            upto = [time_fn(lambda n=n: [launch() for launches in runs for launch in launches[:n]]) / LAYERS
                    for n in range(1, len(names) + 1)]
            parts = ", ".join(f"{'+ ' if i else ''}{name} {(t - (upto[i - 1] if i else 0)) * 1e6:.1f}"
                              for i, (name, t) in enumerate(zip(names, upto)))
            print(f"fused B={B}{' (PDL)' if pdl else ''}, us per layer: {parts}; all {len(names)} {upto[-1] * 1e6:.1f}")


def check_fused(m: MoE) -> tuple[float, bool, float]:
    """kernels.moe_decode with m's weights against its reference at 1-16 tokens (the largest relative error, with
    proj's atomic adds and in deterministic mode), whether deterministic mode is bitwise stable over 50 calls and
    100 CUDA-graph replays at 1 token (PDL) and 4 tokens, and the largest relative difference between repeats with
    the atomic adds at 4 tokens."""
    worst, w = 0.0, (m.router.weight, m.w_fc, m.w_proj, K, True)
    with torch.no_grad():
        for det in (False, True):
            kernels.set_deterministic(det)
            for B in (1, 2, 3, 4, 5, 8, 13, 16):
                for _ in range(4):
                    x = torch.randn(B, D, device=dev, dtype=torch.bfloat16)
                    ref = kernels.moe_decode_reference(x, *w)
                    worst = max(worst, ((kernels.moe_decode(x, *w).float() - ref).norm() / ref.norm()).item())
            if not det:
                continue
            stable = True
            for B in (1, 4):
                x = torch.randn(B, D, device=dev, dtype=torch.bfloat16)
                first = kernels.moe_decode(x, *w)
                stable = stable and all(torch.equal(kernels.moe_decode(x, *w), first) for _ in range(50))
                held = {}
                replay = _cuda_graph(lambda: held.update(y=kernels.moe_decode(x, *w)))
                for _ in range(100):
                    replay()
                    stable = stable and torch.equal(held["y"], first)
        kernels.set_deterministic(False)
        first = kernels.moe_decode(x, *w).float()
        spread = max(((kernels.moe_decode(x, *w).float() - first).norm() / first.norm()).item() for _ in range(50))
    return worst, stable, spread


if "fused" in IMPLS and dev == "cuda":  # 1c. kernels.moe_decode on the GPU against its reference, and bitwise stable
    # in deterministic mode (its split-K sums are then finished by the last-arriving program)
    worst, stable, spread = check_fused(layers[0])
    print(f"fused check: largest relative error against the reference {worst:.2e} (8 token counts x 4 inputs, "
          f"atomic and deterministic); deterministic mode bitwise equal over 50 calls and 100 graph replays: {stable}; "
          f"with atomic adds, repeats differ by at most {spread:.1e} (relative)")
    if worst > 1e-2 or not stable or spread > 1e-3:  # bf16 output: a repeat may round an element 1 ulp apart
        sys.exit("fused check FAILED")

MAX_TOKENS = {"gather": 16, "fused": 16}  # gather reads an expert once per row; fused takes 32 token-slots at most

for impl in IMPLS:  # moe_impl: "grouped" (torch._grouped_mm), "triton" (kernels.moe_grouped_mm), "gather", "fused"
    for m in layers:
        m.impl = impl
    if COMPILE:
        torch._dynamo.reset()
    print(f"moe_impl={impl}" + (f" {kernels.MOE_CONFIG}" if impl == "triton" else "")
          + (f" {kernels.MOE_GATHER_CONFIG}" if impl == "gather" else "")
          + (f" {kernels.MOE_DECODE_CONFIG}" if impl == "fused" else ""))
    # "+ residual": the layer with its output added into the residual stream (x + layer(x), as Block.forward takes
    # it: layer(x, residual=x), which the fused layer adds in its last kernel), its floor the same
    print(f"{'tokens':>6} {'experts hit':>11} {'E[hit]':>7} {'us/layer':>9} {'floor us':>9} {'x floor':>8} "
          f"{'+ residual us':>13} {'x floor':>8} {'all-expert floor':>16}")
    with torch.no_grad():
        for B in [b for b in [1, 2, 4, 8, 16, 32, 64, 128, 256, 512] if b <= MAX_TOKENS.get(impl, 512)]:
            xs = [torch.randn(B, 1, D, device=dev, dtype=torch.bfloat16) for _ in layers]
            hit = experts_hit([x[:, 0] for x in xs])
            expected = E * (1 - (1 - K / E) ** B)
            t = time_fn(lambda: step(xs)) / LAYERS
            t_res = time_fn(lambda: step_residual(xs)) / LAYERS
            floor = (hit * expert_bytes + router_bytes) / bw
            print(f"{B:6d} {hit:11.1f} {expected:7.1f} {t * 1e6:9.1f} {floor * 1e6:9.1f} {t / floor:8.2f} "
                  f"{t_res * 1e6:13.1f} {t_res / floor:8.2f} {E * expert_bytes / bw * 1e6:16.1f}")

if TUNE:
    with torch.no_grad():
        for B in ([8, 64, 512] if "triton" in TUNE else []):  # kernels.moe_grouped_mm on the sorted rows
            xs = [torch.randn(B, D, device=dev, dtype=torch.bfloat16) for _ in layers]
            routes = []
            for m, x in zip(layers, xs):
                experts = routed(m, x).reshape(-1)
                se, order = experts.sort(stable=True)
                offs = torch.searchsorted(se, torch.arange(E, device=dev), right=True).to(torch.int32)
                routes.append((x.index_select(0, order // K), offs, len(torch.unique(experts))))

            def two(routes=routes):
                return [kernels.moe_grouped_mm(kernels.moe_grouped_mm(xs_, m.w_fc, offs, gelu=True), m.w_proj, offs)
                        for m, (xs_, offs, _) in zip(layers, routes)]

            tune(f"B={B}", kernels.MOE_CONFIG, {"block_n": (32, 64, 128), "block_k": (64, 128, 256), "warps": (4, 8),
                                                "stages": (3, 4)}, two, sum(r[2] for r in routes) / LAYERS * expert_bytes / bw)
        for B in (GATHER_TUNE_TOKENS if "gather" in TUNE else []):  # kernels.moe_gather_mm on each token-slot's expert
            xs = [torch.randn(B, D, device=dev, dtype=torch.bfloat16) for _ in layers]
            ids = [routed(m, x).reshape(-1) for m, x in zip(layers, xs)]

            def two_g(ids=ids, xs=xs):
                return [kernels.moe_gather_mm(F.gelu(kernels.moe_gather_mm(x, m.w_fc, i, K)).to(x.dtype), m.w_proj, i)
                        for m, x, i in zip(layers, xs, ids)]

            tune(f"gather B={B}", kernels.MOE_GATHER_CONFIG, {"block_n": (32, 64, 128), "block_k": (64, 128, 256),
                                                              "warps": (4, 8), "programs_per_sm": (2, 4, 8),
                                                              "reduce_once": (False, True)},
                 two_g, sum(len(torch.unique(i)) for i in ids) / LAYERS * expert_bytes / bw)

if not DECODE_ONLY:  # --decode_only: sections 1 and the sweeps only
    # --- 2. does _grouped_mm skip empty groups? --------------------------------------------------------
    # 64 rows: all in group 0 (33 empty groups) vs 2 per group in 32 groups. If empty groups are skipped, the
    # first reads 1/32 of the weights of the second and should be far faster (about 32x at the HBM floor).
    w = [torch.randn(E, D, Fh, device=dev, dtype=torch.bfloat16) for _ in range(LAYERS)]  # one layer's w_fc each
    x = torch.randn(64, D, device=dev, dtype=torch.bfloat16)
    one = torch.full((E,), 64, device=dev, dtype=torch.int32)
    spread = torch.clamp(torch.arange(1, E + 1, device=dev) * 2, max=64).to(torch.int32)
    for name, offs in [("1 group of 64 rows", one), ("32 groups of 2 rows", spread)]:
        t = time_fn(lambda: [torch._grouped_mm(x, wi, offs=offs) for wi in w]) / LAYERS
        groups = int((torch.diff(offs, prepend=offs.new_zeros(1)) > 0).sum())
        print(f"_grouped_mm {name}: {t * 1e6:.1f} us; floor if only non-empty groups are read "
              f"{groups * D * Fh * 2 / bw * 1e6:.1f} us, if all are read {E * D * Fh * 2 / bw * 1e6:.1f} us")

    # --- 3. a training step has no host synchronisation, and grouped == loop on the GPU ----------------------
    if dev == "cuda":
        del layers, w
        with torch.device(dev):
            m = MoE(cfg)  # fp32 weights under bf16 autocast, as train.py runs
        x = torch.randn(8, 512, D, device=dev, requires_grad=True)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")  # raises on any device-to-host synchronisation
        with torch.autocast("cuda", dtype=torch.bfloat16):
            y, aux = m(x)
            loss = y.float().square().mean() + sum(aux.values())
        loss.backward()
        torch.cuda.set_sync_debug_mode(0)
        print("grouped forward+backward: no host synchronisation")
        g_grouped = m.w_fc.grad.clone()
        m.zero_grad()
        m.impl = "loop"
        with torch.autocast("cuda", dtype=torch.bfloat16):
            y_loop, aux = m(x)
            (y_loop.float().square().mean() + sum(aux.values())).backward()
        rel = lambda a, b: ((a.float() - b.float()).norm() / b.float().norm()).item()
        print(f"grouped vs loop: output rel. err {rel(y, y_loop):.2e}, w_fc grad rel. err {rel(g_grouped, m.w_fc.grad):.2e}")
        # empty groups must get exactly zero weight gradient (not stale memory), also on a recycled allocation
        for trial in range(3):
            wg = torch.randn(E, D, Fh, device=dev, dtype=torch.bfloat16, requires_grad=True)
            xg = torch.randn(64, D, device=dev, dtype=torch.bfloat16)
            offs = torch.tensor([32] + [64] * (E - 1), device=dev, dtype=torch.int32)  # groups 0 and 1 only
            torch._grouped_mm(xg, wg, offs=offs).backward(torch.randn(64, Fh, device=dev, dtype=torch.bfloat16))
            print(f"trial {trial}: empty groups' grad all zero: {bool((wg.grad[2:] == 0).all())}; "
                  f"non-empty nonzero: {bool(wg.grad[:2].abs().sum() > 0)}")
            del wg
