"""
Benchmarks: `python bench.py --mode=kernels [--out=bench_kernels.json] [--key=value ...]`.

Modes (one function each, in MODES): kernels (the memory lookup, this file), decode and train (to come).

kernels: the Triton lookup (kernels.mem_lookup) vs F.embedding_bag(mode="sum", per_sample_weights) vs the
naive gather + weighted sum (kernels.mem_lookup_reference), forward and backward, on the two shapes of the
issue, at decode sizes and training sizes; medians by triton.testing.do_bench (CUDA events). Useful bytes
of the forward: T*K*Dv*elem (rows read) + T*K*(8+8+h*4) (row, block, scores) + T*E*Dv*elem (output); of
the backward: N*Dv*elem (the dense value gradient, written once) + T*K*Dv*elem (rows read for the score
gradient) + T*K*Dv*elem (output-gradient rows read per slot) + T*K*(8+8+2*h*4) (indices, scores and
their gradient). embedding_bag computes a simpler function (one bag per token: E=1, h=1) and is timed
on the same rows and the first score.
"""

import json
import sys
import time

import torch
import torch.nn.functional as F

from configurator import configure_or_exit

SHAPES = {"a": (4_194_304, 512, 64), "b": (652_864, 384, 160)}  # N, Dv, K (slots per token)


def _gpu_or_exit() -> None:
    if not torch.cuda.is_available():
        print("error: bench.py --mode=kernels needs a CUDA GPU (none found)", file=sys.stderr)
        sys.exit(2)


def _baselines(r, values, rows, blocks, scores, gout, E, T, K, rep, bench) -> None:
    """embedding_bag (one bag per token, first score; its per-sample-weight gradient has no bf16 CUDA
    kernel, so its backward is the value gradient only) and the reference (autograd, both gradients)."""
    import kernels
    w = values.detach().requires_grad_(True)
    psw = scores[..., 0].reshape(-1).contiguous()
    flat = rows.reshape(-1)
    offsets = torch.arange(0, T * K, K, device=values.device)
    eb = lambda: F.embedding_bag(flat, w, offsets, mode="sum", per_sample_weights=psw)
    r["embag_fwd_ms"] = bench(eb, rep)
    o = eb()
    go = torch.randn_like(o)
    r["embag_bwd_ms"] = bench(lambda: torch.autograd.grad(o, (w,), go, retain_graph=True), rep)
    del o
    s2 = scores.detach().requires_grad_(True)
    ref = lambda: kernels.mem_lookup_reference(w, rows, blocks, s2, E)
    r["ref_fwd_ms"] = bench(ref, rep)
    o = ref()
    r["ref_bwd_ms"] = bench(lambda: torch.autograd.grad(o, (w, s2), gout, retain_graph=True), rep)


def bench_kernels(cfg: dict) -> dict:
    _gpu_or_exit()
    import triton
    import triton.testing
    import kernels

    dev = "cuda"
    dtype = getattr(torch, cfg["dtype"])
    E, h = cfg["E"], cfg["h"]
    tokens = [int(x) for x in cfg["tokens"].split(",")]
    bench = lambda fn, rep: triton.testing.do_bench(fn, warmup=10, rep=rep, return_mode="median")  # ms
    res = {"date": time.strftime("%Y-%m-%d"), "card": torch.cuda.get_device_name(), "torch": torch.__version__,
           "triton": triton.__version__, "E": E, "h": h, "dtype": cfg["dtype"], "rows": []}

    # copy bandwidth (bytes read + written), 2 GB each way
    src = torch.randn(1 << 29, device=dev)
    dst = torch.empty_like(src)
    ms = bench(lambda: dst.copy_(src), 200)
    res["copy_TBps"] = copy_bw = 2 * src.numel() * 4 / ms / 1e9
    del src, dst
    print(f"copy bandwidth {copy_bw:.2f} TB/s", flush=True)

    # correctness on the GPU against the reference, both shapes, fresh random inputs, poisoned outputs
    g = torch.Generator(device=dev).manual_seed(0)
    checks = []
    for shape in cfg["shapes"].split(","):
        N, Dv, K = SHAPES[shape]
        values = (torch.randn(N, Dv, device=dev, generator=g) * 0.5).to(dtype)
        for T in (1, 333, 2048):
            rows = torch.randint(0, N, (T, K), device=dev, generator=g)
            rows[:, 1] = rows[:, 0]  # duplicates within a token ...
            rows[T // 2:, 2] = rows[0, 0]  # ... and across tokens
            blocks = torch.randint(0, E, (T, K), device=dev, generator=g)
            scores = torch.randn(T, K, h, device=dev, generator=g).to(dtype)
            gout = torch.randn(T, E, Dv, device=dev, generator=g).to(dtype)
            ref = kernels.mem_lookup_reference(values.double(), rows, blocks, scores.double(), E)
            gv_ref, gs_ref = kernels.mem_lookup_bwd_reference(gout.double(), values.double(), rows, blocks, scores.double(), E)
            out = kernels._lookup_triton(values, rows, blocks, scores, E)
            rel = lambda a, b: ((a.double() - b).norm() / b.norm()).item()
            row = {"shape": shape, "T": T, "fwd": rel(out, ref)}
            for scheme in ("sorted", "atomic"):
                kernels.set_backward_scheme(scheme)
                gv, gs = kernels._lookup_bwd_triton(gout, values, rows, blocks, scores, E)
                row[f"gv_{scheme}"], row[f"gs_{scheme}"] = rel(gv, gv_ref), rel(gs, gs_ref)
                ok = torch.isfinite(gv).all().item() and torch.isfinite(gs).all().item()
                row[f"finite_{scheme}"] = ok
            kernels.set_backward_scheme("sorted")
            gv1, gs1 = kernels._lookup_bwd_triton(gout, values, rows, blocks, scores, E)
            gv2, gs2 = kernels._lookup_bwd_triton(gout, values, rows, blocks, scores, E)
            row["sorted_bitwise_repeat"] = bool(torch.equal(gv1, gv2) and torch.equal(gs1, gs2))
            checks.append(row)
            print("check", row, flush=True)
        del values
    res["checks"] = checks
    worst = max(max(r["fwd"], r["gv_sorted"], r["gs_sorted"], r["gv_atomic"], r["gs_atomic"]) for r in checks)
    res["check_ok"] = bool(worst < 1e-2 and all(r["finite_sorted"] and r["finite_atomic"] and r["sorted_bitwise_repeat"] for r in checks))
    print(f"correctness: worst relative error {worst:.2e} -> {'OK' if res['check_ok'] else 'FAIL'}", flush=True)

    # timing
    for shape in cfg["shapes"].split(","):
        N, Dv, K = SHAPES[shape]
        el = torch.finfo(dtype).bits // 8
        values = (torch.randn(N, Dv, device=dev, generator=g) * 0.02).to(dtype)
        for T in tokens:
            rows = torch.randint(0, N, (T, K), device=dev, generator=g)
            blocks = torch.randint(0, E, (T, K), device=dev, generator=g)
            scores = torch.rand(T, K, h, device=dev, generator=g).to(dtype)
            gout = torch.randn(T, E, Dv, device=dev, generator=g).to(dtype)
            fwd_bytes = T * K * Dv * el + T * K * (8 + 8 + h * 4) + T * E * Dv * el
            bwd_bytes = N * Dv * el + 2 * T * K * Dv * el + T * K * (8 + 8 + 2 * h * 4)
            rep = 100 if T <= 8192 else 300
            r = {"shape": shape, "N": N, "Dv": Dv, "K": K, "T": T, "fwd_bytes": fwd_bytes, "bwd_bytes": bwd_bytes}
            r["triton_fwd_ms"] = bench(lambda: kernels._lookup_triton(values, rows, blocks, scores, E), rep)
            kernels.set_backward_scheme("sorted")
            r["triton_bwd_sorted_ms"] = bench(lambda: kernels._lookup_bwd_triton(gout, values, rows, blocks, scores, E), rep)
            if T <= 512:  # decode sizes: the launches replayed from a CUDA graph, without Python's overhead
                try:
                    for name, fn in (("fwd", lambda: kernels._lookup_triton(values, rows, blocks, scores, E)),
                                     ("bwd", lambda: kernels._lookup_bwd_triton(gout, values, rows, blocks, scores, E))):
                        side = torch.cuda.Stream()
                        side.wait_stream(torch.cuda.current_stream())
                        with torch.cuda.stream(side):
                            fn()
                        torch.cuda.current_stream().wait_stream(side)
                        graph = torch.cuda.CUDAGraph()
                        with torch.cuda.graph(graph):
                            fn()
                        r[f"triton_{name}_graph_ms"] = bench(graph.replay, rep)
                        del graph
                except Exception as e:
                    r["graph_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
            kernels.set_backward_scheme("atomic")
            r["triton_bwd_atomic_ms"] = bench(lambda: kernels._lookup_bwd_triton(gout, values, rows, blocks, scores, E), rep)
            kernels.set_backward_scheme("sorted")
            if T <= cfg["max_baseline_tokens"]:
                try:
                    _baselines(r, values, rows, blocks, scores, gout, E, T, K, rep, bench)
                except Exception as e:  # report and go on
                    r["baseline_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
            if cfg["sweep"] and T == 32768:  # launch parameters: forward and sorted backward
                keep = dict(kernels.CONFIG)
                for bk in (16, 32):
                    for nw in (4, 8):
                        kernels.CONFIG.update(fwd_block_k=bk, fwd_warps=nw, bwd_block_i=bk, bwd_warps=nw)
                        r[f"sweep_fwd_k{bk}_w{nw}"] = bench(lambda: kernels._lookup_triton(values, rows, blocks, scores, E), 100)
                        for R in (16, 32):
                            kernels.CONFIG.update(bwd_rows=R)
                            r[f"sweep_bwd_i{bk}_w{nw}_r{R}"] = bench(lambda: kernels._lookup_bwd_triton(gout, values, rows, blocks, scores, E), 100)
                kernels.CONFIG.update(keep)
            r["fwd_TBps"] = fwd_bytes / r["triton_fwd_ms"] / 1e9
            r["bwd_TBps"] = bwd_bytes / r["triton_bwd_sorted_ms"] / 1e9
            res["rows"].append(r)
            print("time", {k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}, flush=True)
            torch.cuda.empty_cache()
        del values
        torch.cuda.empty_cache()

    if cfg["check_compile"]:  # the op under torch.compile(fullgraph=True), then reduce-overhead (CUDA graphs)
        N, Dv, K = 10_000, 384, 32
        values = torch.randn(N, Dv, device=dev, dtype=dtype, requires_grad=True)
        rows = torch.randint(0, N, (64, K), device=dev)
        blocks = torch.randint(0, E, (64, K), device=dev)
        scores = torch.randn(64, K, h, device=dev, dtype=dtype, requires_grad=True)
        f = lambda v, s: kernels.mem_lookup(v, rows, blocks, s, E).float().square().sum()
        for mode in ("default", "reduce-overhead"):
            try:
                torch._dynamo.reset()
                cf = torch.compile(f, fullgraph=True, mode=mode)
                for _ in range(3):
                    loss = cf(values, scores)
                    gv, gs = torch.autograd.grad(loss, (values, scores))
                gv_r, gs_r = torch.autograd.grad(f(values, scores), (values, scores))
                res[f"compile_{mode}"] = ok = bool(torch.allclose(gv.float(), gv_r.float(), atol=1e-2, rtol=1e-2)
                                                   and torch.allclose(gs.float(), gs_r.float(), atol=1e-2, rtol=1e-2))
            except Exception as e:  # report and go on: the timing above is still worth having
                import traceback
                res[f"compile_{mode}"] = f"{type(e).__name__}: " + " | ".join(str(e).splitlines()[:12])[:1500]
                traceback.print_exc()
            print(f"compile fullgraph mode={mode}: {res[f'compile_{mode}']}", flush=True)

    with open(cfg["out"], "w") as f:
        json.dump(res, f, indent=1)
    print(f"\ncopy {copy_bw:.2f} TB/s; times in us; TB/s = useful bytes / triton time")
    print(f"{'shape':>5} {'T':>6} {'fwd':>8} {'fwd_gr':>8} {'bwd_gr':>8} {'TB/s':>5} {'bwd_sort':>9} {'bwd_atom':>9} {'bwTB/s':>6} {'eb_fwd':>8} {'eb_bwd':>8} {'ref_fwd':>8} {'ref_bwd':>8}")
    for r in res["rows"]:
        u = lambda k: f"{r[k] * 1e3:8.1f}" if k in r else f"{'-':>8}"
        print(f"{r['shape']:>5} {r['T']:>6} {u('triton_fwd_ms')} {u('triton_fwd_graph_ms')} {u('triton_bwd_graph_ms')} {r['fwd_TBps']:5.2f} {u('triton_bwd_sorted_ms'):>9} "
              f"{u('triton_bwd_atomic_ms'):>9} {r['bwd_TBps']:6.2f} {u('embag_fwd_ms')} {u('embag_bwd_ms')} {u('ref_fwd_ms')} {u('ref_bwd_ms')}")
    return res


def _not_yet(name: str):
    def run(cfg: dict) -> None:
        print(f"error: bench.py mode '{name}' is not implemented yet (only 'kernels' is)", file=sys.stderr)
        sys.exit(2)
    return run


MODES = {"kernels": bench_kernels, "decode": _not_yet("decode"), "train": _not_yet("train")}

DEFAULTS = {
    "mode": "kernels",
    "out": "bench_kernels.json",       # JSON of every number measured
    "shapes": "a,b",                   # keys of SHAPES
    "tokens": "1,8,64,512,4096,32768,65536",
    "dtype": "bfloat16",
    "E": 4,
    "h": 2,
    "max_baseline_tokens": 32768,      # embedding_bag and the reference are timed up to this many tokens
    "check_compile": True,
    "sweep": True,                     # time a few launch configurations at 32,768 tokens
}

if __name__ == "__main__":
    cfg = configure_or_exit(DEFAULTS, sys.argv[1:])
    if cfg["mode"] not in MODES:
        print(f"error: unknown mode '{cfg['mode']}'; modes: {', '.join(MODES)}", file=sys.stderr)
        sys.exit(2)
    MODES[cfg["mode"]](cfg)
