"""
Benchmarks: `python bench.py [config_file.py ...] [--key=value ...]`, one mode per run (--mode=..., one
function each in MODES): decode (the default), train, kernels.

Several config files are several MODELS, compared side by side (not merged): every positional argument is a
config file (the ones train.py reads: GPTConfig fields and train.py's keys), and the --key=value overrides
apply to every model: model i's settings = defaults <- file i <- overrides. No file: one model, the defaults.
The keys are train.py's (default_config(): every GPTConfig field, out_dir, batch_size, compile,
peak_tflops, ...) plus bench's own (BENCH_KEYS: mode, out, batches, max_batch, kv_len, warmup, iters,
measure, compile_dynamic, compile_scope, coordinate_descent, max_autotune, profile and the kernels keys; none clashes with a
train.py or GPTConfig key). bench changes
train.py's default device to "cuda" (a missing GPU is an error; pass --device=cpu for a quick CPU run), and
reads vocab_size=0 (train.py: from the dataset) as 50304. Run-level keys (RUN_KEYS: mode, out,
device, dtype, batches, max_batch, kv_len, measure, compile_dynamic, compile_scope, coordinate_descent,
max_autotune, warmup, iters, profile, lookup_config, train_data) come from the defaults
and the command line only (a config file's value for them is ignored); model keys, batch_size, compile,
peak_tflops and the optimizer keys are per model.

    python bench.py config/dense_1p6b.py config/moe_1p6b_2in34.py config/ultramem_1p6b.py --batches=1,4,16,64
    python bench.py --mode=train config/dense_151m.py config/ultramem_151m.py
    python bench.py --mode=kernels

decode (gpt-fast's way of timing decoding): each model is built with random weights directly on the device
in `dtype` (auto: bfloat16 on CUDA, float32 on CPU; the default dtype is set for construction, so no fp32
copy is made), refreshed, and given static caches for max(batches that fit) x (kv_len + 1) positions
(block_size is raised to kv_len + 1 if smaller: rope tables only, except for pos_emb="learned"). The KV
cache (and UltraMem's query-conv cache) is filled with RANDOM content written directly into the cache
buffers at positions 0..kv_len-1 (no prefill: the content does not change the work of a step). The timed
step is model.decode_one_token(model, idx (B, 1), input_pos=[kv_len], temperature=0, top_k=None): it
attends to kv_len cached positions plus its own and rewrites position kv_len each time, so every step does
the same work. On CUDA (compile=False for eager), compile_scope="blocks" (the default) compiles each
transformer block and memory layer (identical blocks share one compilation, where the whole step of a
30-block model took 55-92 s per batch size to compile on the H200) and captures the whole step, Python glue
included, in one torch.cuda.CUDAGraph; it loses only fusions across blocks, and was measured no slower than
compile_scope="model" (2026-11-29, docs/BENCHMARKS.md, decoding, session 5: Dense-1.6B 1.81 against run 6's
2.08 ms at batch 1).
"model" compiles the whole step with torch.compile(mode="reduce-overhead", fullgraph=True) (CUDA graphs,
gpt-fast's way). Timed with CUDA events; on CPU eagerly with time.perf_counter. `warmup` steps,
then the median of `iters` steps (the first call, compilation included, is timed apart: first_call_s; on
CUDA every batch size is a static compilation unless compile_dynamic=True). Batch sizes: `batches` ("1,2,4" or empty: powers of two up to
max_batch). Before allocating, the weights + caches + a workspace margin are estimated against the free GPU
memory; batch sizes that do not fit are skipped with a message, and an OutOfMemoryError stops the sweep of
that model with a message (not a crash). With profile=N, N more steps per batch run under torch.profiler
(kernel time per category and the top kernels, as in train mode). With measure=True one eager step per batch counts the distinct
experts and value rows the router / memory actually picked (forward pre-hooks), beside the expected counts.

The byte model of one decode step (what the step must read at least; decode_bytes_* below, one function per
model kind, each computed from the model's config; el = bytes per element of `dtype`, B = batch,
S = kv_len + 1 positions attended):
  dense  (all models): every non-sparse parameter once (attention, MLPs, norms, the tied embedding/lm_head,
         routers, memory query/keys/cores/projections; i.e. all parameters but MoE experts and memory
         values) x el, plus the KV cache 2 x n_layer x B x S x n_kv_head x head_dim x el.
  moe    (ffn="moe"): + per MoE layer, the expected distinct experts the batch touches
         E (1 - (1 - k/E)^B) (uniform routing, k of E per token) x expert bytes 2 x n_embd x moe_hidden x el.
  memory (memory!="none"): + per memory layer, the expected distinct value rows N (1 - (1 - 1/N)^(B m H))
         (B m H uniform draws of N = mem_knum^2 physical rows; at most min(B m H, N)) x D_v x el.
Buffers (rope rows, the causal-mask row, the shuffle permutation's B m H entries, the query-conv window)
and activations are left out (a few KB to MB). Per batch: latency, tokens/s (B / latency), the bytes,
achieved bandwidth (bytes / latency), the floor = bytes / copy bandwidth (a large device-to-device copy
in the same run, read + written bytes; skipped on CPU) and latency / floor. After all models: MoE/UltraMem
and UltraMem/Dense latency and MoE/UltraMem bytes (with and without the KV cache, which both share and
which dominates at kv_len 2048 without GQA) per batch, where such models are present (kind from the
config: ffn == "moe", memory != "none"; PKM counts as a memory model; the first model of each kind). A JSON of everything goes to `out` (default bench_decode.json),
and a log-log PNG of latency vs batch beside it when matplotlib is importable.

train: each model in fp32 on the device, AdamW (fused on CUDA) over model.optim_groups, bf16 autocast when
dtype is bfloat16 (auto: on CUDA), torch.compile per `compile` (None: on CUDA), one batch of random tokens
of batch_size x block_size reused every step (train_data="random"; "dataset": a new batch of the config's
dataset each step, as train.py draws them, fetched before a timed step's clock starts) (one micro-batch per step;
grad_accum is ignored); per step: refresh(), forward,
backward, clip (grad_clip), optimizer step, as train.py. `warmup` steps, then `iters` timed steps: median
step time, tokens/s, MFU (model.estimate_mfu at peak_tflops), peak memory (CUDA). JSON to `out`
(default bench_train.json). An out-of-memory model is reported and skipped. With profile=N, N more steps
run under torch.profiler and the device time is printed per kernel category (memory lookup, top-k, GEMM,
attention, optimizer, Inductor's Triton kernels, copies, other) and per kernel: where a step's time goes.

kernels: the Triton lookup (kernels.mem_lookup) vs F.embedding_bag(mode="sum", per_sample_weights) vs the
naive gather + weighted sum (kernels.mem_lookup_reference), forward and backward, on the two shapes of the
issue, at decode sizes and training sizes; medians by triton.testing.do_bench (CUDA events), the lookup called
through its custom ops (kernels.mem_lookup, mem_lookup_backward) as memory.py's eager path calls it, and up to
4,096 tokens also replayed from a CUDA graph (triton_*_graph_ms: the kernels without the host's launches). Useful bytes
of the forward: T*K*Dv*elem (rows read) + T*K*(8+8+h*4) (row, block, scores) + T*E*Dv*elem (output); of
the backward: N*Dv*elem (the dense value gradient, written once) + T*K*Dv*elem (rows read for the score
gradient) + T*K*Dv*elem (output-gradient rows read per slot) + T*K*(8+8+2*h*4) (indices, scores and
their gradient). embedding_bag computes a simpler function (one bag per token: E=1, h=1) and is timed
on the same rows and the first score. The sorted backward is also timed with the other value-row scheme
(kernels.CONFIG's bwd_value_tile flipped), and the correctness checks compare the two. With sweep=True, at 32,768
tokens it also times 12 forward and 16 backward launch configurations (kernels.CONFIG: column tile, slot block,
grid order; row tile, slot block, value tile, grid order) and prints the best of each. Then the retrieval's top-k kernel
(kernels.topk_indices) against torch.topk on the models' row lengths, with a sweep (sweep=True) of the register
kernel's bits per pass and warps and of the filter kernel's block and warps; at decoding's few rows, per call
within a CUDA graph of 20 calls as well (*_graph_ms; the sweep too), since single calls there are launch-bound.
shapes= (empty) times the top-k alone. Keys: shapes, tokens, E, h, max_baseline_tokens, check_compile, sweep; dtype
auto means bfloat16 here. Config files are not used by this mode.
"""

import ast
import contextlib
import gc
import itertools
import json
import math
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from configurator import ConfigError, configure, format_config

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


@contextlib.contextmanager
def _lookup_config(**overrides):
    """kernels.CONFIG with these entries for the block, restored after it."""
    import kernels
    keep = dict(kernels.CONFIG)
    kernels.CONFIG.update(overrides)
    try:
        yield
    finally:
        kernels.CONFIG.clear()
        kernels.CONFIG.update(keep)


def bench_kernels(cfg: dict) -> dict:
    _gpu_or_exit()
    import triton
    import triton.testing
    import kernels

    dev = "cuda"
    dtype = getattr(torch, "bfloat16" if cfg["dtype"] == "auto" else cfg["dtype"])
    E, h = cfg["E"], cfg["h"]
    tokens = _int_list(cfg["tokens"])
    shapes = [x for x in cfg["shapes"].split(",") if x]  # --shapes= (empty): the top-k timing only
    bad = [x for x in shapes if x not in SHAPES]
    if bad:
        raise BenchError(f"unknown kernel shape(s) {', '.join(bad)}; shapes: {', '.join(SHAPES)}")
    bench = lambda fn, rep: triton.testing.do_bench(fn, warmup=10, rep=rep, return_mode="median")  # ms

    def timed(fn, what, per_call=None):  # a sweep's configuration that does not compile or run (out of
        # resources) is skipped; per_call: time it with graph_ms instead (decode sizes)
        try:
            return per_call(fn) if per_call else bench(fn, 100)
        except Exception as e:
            print(f"  sweep {what}: failed ({type(e).__name__})", flush=True)
            return float("inf")

    def graph_ms(fn, calls: int = 20) -> float:
        """Milliseconds per call of fn with `calls` back-to-back calls replayed from one CUDA graph: a decode
        step's situation (no Python, launches queued), where do_bench's single calls are launch-bound noise."""
        return bench(_cuda_graph(lambda: [fn() for _ in range(calls)]), 100) / calls

    res = {"date": time.strftime("%Y-%m-%d"), "card": torch.cuda.get_device_name(), "torch": torch.__version__,
           "triton": triton.__version__, "E": E, "h": h, "dtype": str(dtype).replace("torch.", ""), "rows": []}

    # copy bandwidth (bytes read + written), 2 GB each way
    src = torch.randn(1 << 29, device=dev)
    dst = torch.empty_like(src)
    ms = bench(lambda: dst.copy_(src), 200)
    res["copy_TBps"] = copy_bw = 2 * src.numel() * 4 / ms / 1e9
    del src, dst
    print(f"copy bandwidth {copy_bw:.2f} TB/s", flush=True)

    # correctness on the GPU against the reference, both shapes, fresh random inputs, poisoned outputs
    g = torch.Generator(device=dev).manual_seed(0)

    def run_checks() -> list:  # a function, so that its float64 references (tens of GB) are freed on return
        checks = []
        for shape in shapes:
            N, Dv, K = SHAPES[shape]
            values = (torch.randn(N, Dv, device=dev, generator=g) * 0.5).to(dtype)
            for T in (1, 333, 2048, 8192):  # 8192: also shape (b) with 2 tokens per program across its cores
                rows = torch.randint(0, N, (T, K), device=dev, generator=g)
                rows[:, 1] = rows[:, 0]  # duplicates within a token ...
                rows[T // 2:, 2] = rows[0, 0]  # ... and across tokens
                blocks = torch.randint(0, E, (T, K), device=dev, generator=g)
                scores = torch.randn(T, K, h, device=dev, generator=g).to(dtype)
                gout = torch.randn(T, E, Dv, device=dev, generator=g).to(dtype)
                ref = kernels.mem_lookup_reference(values.double(), rows, blocks, scores.double(), E)
                gv_ref, gs_ref = kernels.mem_lookup_bwd_reference(gout.double(), values.double(), rows, blocks,
                                                                  scores.double(), E)
                out = kernels._lookup_triton(values, rows, blocks, scores, E)
                rel = lambda a, b: ((a.double() - b).norm() / b.norm()).item()
                row = {"shape": shape, "T": T, "fwd": rel(out, ref)}
                # the forward's other path: each column weighted by its score in fp32 (fwd_sdot off), on the 2-D grid;
                # and both with fp32 scores, where fwd_sdot's split of the score operand has a lo part: without it the
                # error would be about 1.4x the per-column path's (2.35e-3 against 1.66e-3, simulated on the CPU), so
                # check_ok asks for at most 1.1x
                s32 = torch.randn(T, K, h, device=dev, generator=g)
                ref32 = kernels.mem_lookup_reference(values.double(), rows, blocks, s32.double(), E)
                row["fwd_fp32_scores"] = rel(kernels._lookup_triton(values, rows, blocks, s32, E), ref32)
                with _lookup_config(fwd_sdot=False, fwd_cols_inner=False):
                    row["fwd_percol"] = rel(kernels._lookup_triton(values, rows, blocks, scores, E), ref)
                    row["fwd_percol_fp32_scores"] = rel(kernels._lookup_triton(values, rows, blocks, s32, E), ref32)
                for scheme in ("sorted", "atomic"):
                    kernels.set_backward_scheme(scheme)
                    gv, gs = kernels._lookup_bwd_triton(gout, values, rows, blocks, scores, E)
                    row[f"gv_{scheme}"], row[f"gs_{scheme}"] = rel(gv, gv_ref), rel(gs, gs_ref)
                    ok = torch.isfinite(gv).all().item() and torch.isfinite(gs).all().item()
                    row[f"finite_{scheme}"] = ok
                kernels.set_backward_scheme("sorted")
                # the backward's other path (each column's score in fp32, bwd_sdot off), and both with fp32 scores:
                # bwd_sdot's score operand then has a lo part, checked as the forward's on the value gradients (the
                # score gradients do not involve the scores)
                gv32_ref, gs32_ref = kernels.mem_lookup_bwd_reference(gout.double(), values.double(), rows, blocks,
                                                                      s32.double(), E)
                gv, gs = kernels._lookup_bwd_triton(gout, values, rows, blocks, s32, E)
                row["gv_fp32_scores"], row["gs_fp32_scores"] = rel(gv, gv32_ref), rel(gs, gs32_ref)
                with _lookup_config(bwd_sdot=False):
                    gv, gs = kernels._lookup_bwd_triton(gout, values, rows, blocks, scores, E)
                    row["gv_bwd_percol"], row["gs_bwd_percol"] = rel(gv, gv_ref), rel(gs, gs_ref)
                    gv, gs = kernels._lookup_bwd_triton(gout, values, rows, blocks, s32, E)
                    row["gv_percol_fp32_scores"], row["gs_percol_fp32_scores"] = rel(gv, gv32_ref), rel(gs, gs32_ref)
                # the score gradients by their own kernel (bwd_split_scores), the value gradients without them
                with _lookup_config(bwd_split_scores=not kernels._bwd_split(), bwd_value_tile=False):
                    gv, gs = kernels._lookup_bwd_triton(gout, values, rows, blocks, scores, E)
                    row["gv_bwd_other_split"], row["gs_bwd_other_split"] = rel(gv, gv_ref), rel(gs, gs_ref)
                gv1, gs1 = kernels._lookup_bwd_triton(gout, values, rows, blocks, scores, E)
                gv2, gs2 = kernels._lookup_bwd_triton(gout, values, rows, blocks, scores, E)
                row["sorted_bitwise_repeat"] = bool(torch.equal(gv1, gv2) and torch.equal(gs1, gs2))
                # the value-tile backward picks each slot's row exactly (a one-hot dot; fp32 values in three bf16
                # parts): its value gradients must equal the gathering one's bit for bit, in values' dtype and in fp32;
                # its score gradients sum the same products in another order (the dot's register layout), so they
                # agree to rounding
                gv_same, gs_rel = [], []
                for vals, go, sc in ((values, gout, scores), (values.float(), gout.float(), scores.float())):
                    with _lookup_config(bwd_value_tile=False):
                        a = kernels._lookup_bwd_triton(go, vals, rows, blocks, sc, E)
                    with _lookup_config(bwd_value_tile=True):
                        b = kernels._lookup_bwd_triton(go, vals, rows, blocks, sc, E)
                    gv_same.append(bool(torch.equal(a[0], b[0])))
                    gs_rel.append(rel(b[1], a[1].double()))
                row["value_tile_gv_bitwise"], row["value_tile_gs_rel"] = gv_same, gs_rel  # [values' dtype, fp32]
                checks.append(row)
                print("check", row, flush=True)
            del values
        return checks

    keep_poison, kernels.POISON_OUTPUTS = kernels.POISON_OUTPUTS, True  # NaN-filled outputs: an unwritten one shows
    try:
        checks = run_checks()
    finally:
        kernels.POISON_OUTPUTS = keep_poison
    torch.cuda.empty_cache()  # and given back: with them left in place, shape (b)'s forward timed 1,030 against 968
    # us (session 15, after a check at 8,192 tokens)
    res["checks"] = checks
    if checks:
        worst = max(max(r["fwd"], r["fwd_percol"], r["fwd_fp32_scores"], r["gv_bwd_percol"], r["gv_bwd_other_split"],
                        r["gs_bwd_other_split"],
                        r["gs_bwd_percol"], r["gv_fp32_scores"], r["gs_fp32_scores"], r["gv_sorted"], r["gs_sorted"],
                        r["gv_atomic"], r["gs_atomic"]) for r in checks)
        res["check_ok"] = bool(worst < 1e-2 and all(r["finite_sorted"] and r["finite_atomic"] and r["sorted_bitwise_repeat"]
                                                    and r["fwd_fp32_scores"] <= 1.1 * r["fwd_percol_fp32_scores"]
                                                    and r["gv_fp32_scores"] <= 1.1 * r["gv_percol_fp32_scores"]
                                                    and all(r["value_tile_gv_bitwise"]) and r["value_tile_gs_rel"][0] < 1e-2
                                                    and r["value_tile_gs_rel"][1] < 1e-5 for r in checks))
        print(f"correctness: worst relative error {worst:.2e} -> {'OK' if res['check_ok'] else 'FAIL'}", flush=True)

    # timing
    for shape in shapes:
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
            r["triton_fwd_ms"] = bench(lambda: kernels.mem_lookup(values, rows, blocks, scores, E), rep)
            if T >= 4096:  # fp32 scores: fwd_sdot's score operand in two bf16 parts, two dots (bf16 scores: one)
                s32 = scores.float()
                r["triton_fwd_fp32_scores_ms"] = bench(lambda: kernels.mem_lookup(values, rows, blocks, s32, E), rep)
            kernels.set_backward_scheme("sorted")
            r["triton_bwd_sorted_ms"] = bench(lambda: kernels.mem_lookup_backward(gout, values, rows, blocks, scores, E), rep)
            with _lookup_config(bwd_value_tile=not kernels.CONFIG["bwd_value_tile"]):  # the other value-row scheme
                r["triton_bwd_sorted_other_vtile_ms"] = bench(
                    lambda: kernels.mem_lookup_backward(gout, values, rows, blocks, scores, E), rep)
            # the other score-gradient scheme (the value tile off, which would keep them in the sorted kernel)
            with _lookup_config(bwd_split_scores=not kernels._bwd_split(), bwd_value_tile=False):
                r["triton_bwd_sorted_other_split_ms"] = bench(
                    lambda: kernels.mem_lookup_backward(gout, values, rows, blocks, scores, E), rep)
            # decode sizes and 4,096 tokens: the launches replayed from a CUDA graph, without Python's overhead (an
            # eager backward at 4,096 tokens on shape (b) takes about 0.6 ms to launch its kernels, which then run
            # about 0.7 ms, most of it in the last two: session 19, scripts/profile_lookup_bwd.py)
            if T <= 4096:
                try:
                    for name, fn in (("fwd", lambda: kernels.mem_lookup(values, rows, blocks, scores, E)),
                                     ("bwd", lambda: kernels.mem_lookup_backward(gout, values, rows, blocks, scores, E))):
                        r[f"triton_{name}_graph_ms"] = graph_ms(fn, calls=1)
                except Exception as e:
                    r["graph_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
            kernels.set_backward_scheme("atomic")
            r["triton_bwd_atomic_ms"] = bench(lambda: kernels.mem_lookup_backward(gout, values, rows, blocks, scores, E), rep)
            kernels.set_backward_scheme("sorted")
            if T <= cfg["max_baseline_tokens"]:
                try:
                    _baselines(r, values, rows, blocks, scores, gout, E, T, K, rep, bench)
                except Exception as e:  # report and go on
                    r["baseline_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
            if cfg["sweep"] and T == 32768:  # launch parameters: forward and sorted backward
                fwd_lookup = lambda: kernels.mem_lookup(values, rows, blocks, scores, E)
                bwd_lookup = lambda: kernels.mem_lookup_backward(gout, values, rows, blocks, scores, E)
                # around the winners of sessions 5-7's sweeps (forward 128 columns, 32 slots per step, 4 warps;
                # backward 128 columns, R 16-32, 16-32 slots per step, 4 warps; docs/KERNELS.md), each with the
                # grid's order (*_cols_inner: the column tiles of a token / row tile consecutive) and the backward
                # with the value tile (bwd_value_tile), both new in session 7. Left out, as they lost in every
                # earlier sweep: 3 stages, the zero-filled backward, 64 slots per step, the whole row (0 columns)
                # or R 64 in the backward
                # and, new in session 12, the scores in the one-hot operand (fwd_sdot)
                for bd, bk, inner, sdot in itertools.product((64, 128, 256), (16, 32), (False, True), (False, True)):
                    with _lookup_config(fwd_block_d=bd, fwd_block_k=bk, fwd_warps=4, fwd_stages=1,
                                        fwd_cols_inner=inner, fwd_xcore_cols_inner=inner, fwd_sdot=sdot):
                        if sdot and kernels._fwd_tile(Dv, h, dtype)[:2] != (bd, True):
                            continue  # fwd_sdot would run another tile (or none) here: timed under its own name
                        tag = ("_inner" if inner else "") + ("_sdot" if sdot else "")
                        r[f"sweep_fwd{tag}_d{bd}_k{bk}_w4"] = timed(fwd_lookup, kernels.CONFIG)
                # bwd_sdot (its column tiles side by side) at the widest tile up to 128 inside an MCS core, at 2
                # and 4 warps (with the split score gradients it takes bwd_split_warps, 2 since session 16)
                bd = next((b for b in (128, 64, 32) if kernels._bwd_sdot(Dv, h, b, dtype)), None)
                for R, bi, w in itertools.product((16, 32), (16, 32), (2, 4)) if bd else ():
                    with _lookup_config(bwd_block_d=bd, bwd_rows=R, bwd_block_i=bi, bwd_warps=w, bwd_split_warps=w,
                                        bwd_zero_fill=False, bwd_value_tile=False, bwd_sdot=True):
                        r[f"sweep_bwd_sdot_d{bd}_r{R}_i{bi}_w{w}"] = timed(bwd_lookup, kernels.CONFIG)
                for R, bi, vt, inner in itertools.product((16, 32), (16, 32), (False, True), (False, True)):
                    with _lookup_config(bwd_block_d=128, bwd_rows=R, bwd_block_i=bi, bwd_warps=4, bwd_zero_fill=False,
                                        bwd_value_tile=vt, bwd_cols_inner=inner, bwd_sdot=False):
                        tag = ("_inner" if inner else "") + ("_vtile" if vt else "")
                        r[f"sweep_bwd{tag}_d128_r{R}_i{bi}_w4"] = timed(bwd_lookup, kernels.CONFIG)
                for part in ("fwd", "bwd"):
                    best = min((k for k in r if k.startswith(f"sweep_{part}_")), key=r.get)
                    print(f"sweep best {part} shape {shape}: {best} {r[best] * 1e3:.1f} us "
                          f"(default {r[f'triton_{part}' + ('_sorted' if part == 'bwd' else '') + '_ms'] * 1e3:.1f} us)", flush=True)
            r["fwd_TBps"] = fwd_bytes / r["triton_fwd_ms"] / 1e9
            r["bwd_TBps"] = bwd_bytes / r["triton_bwd_sorted_ms"] / 1e9
            res["rows"].append(r)
            print("time", {k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}, flush=True)
            torch.cuda.empty_cache()
        del values
        torch.cuda.empty_cache()

    # the retrieval's top-k: kernels.topk_indices' kernel vs torch.topk, on the shapes of the models' selections
    # (UltraMem-151M: n = 2 x knum 1100 row / column scores and the 80 x 80 grid, 32,768 tokens x 2 heads; the
    # small configs: 1136 (the x3 sparsity config's 2 x 568; the small PKM's 1,100 is close) and 32 x 32; the small
    # UltraMem's 2 x 1136 = 2272 is close to 2200), after decoding's shapes, in bf16 (UltraMem-1.6B at batch 1 and 64: the
    # row and column pre-selections of 2 heads in one call, 2 x 1788 = 3576 scores each, and the 42 x 42 grid);
    # last, the training pre-selections and the grid again in bf16, their dtype under autocast (16-bit keys)
    res["topk"] = []
    for rows_, L, k, dt in ((4, 3576, 42, torch.bfloat16), (256, 3576, 42, torch.bfloat16),
                            (2, 1764, 42, torch.bfloat16), (128, 1764, 42, torch.bfloat16),
                            (65536, 2200, 80, torch.float32), (65536, 6400, 80, torch.float32),
                            (65536, 1136, 32, torch.float32), (65536, 1024, 32, torch.float32),
                            (65536, 2200, 80, torch.bfloat16), (65536, 6400, 80, torch.bfloat16),
                            (65536, 1136, 32, torch.bfloat16)):
        r = {"rows": rows_, "L": L, "k": k, "dtype": str(dt)[6:]}
        try:  # report a failure and go on: the lookup numbers above are still worth having
            x = torch.randn(rows_, L, device=dev, generator=g).to(dt)
            got = kernels.topk_indices(x, k, sorted=False, impl="triton")
            r["ok"] = bool(torch.equal(x.gather(-1, got).sort(-1, descending=True).values, x.topk(k, dim=-1).values))
            r["torch_ms"] = bench(lambda: x.topk(k, dim=-1), 100)
            r["torch_unsorted_ms"] = bench(lambda: x.topk(k, dim=-1, sorted=False), 100)
            r["triton_ms"] = bench(lambda: kernels.topk_indices(x, k, sorted=False, impl="triton"), 100)
            r["triton_sorted_ms"] = bench(lambda: kernels.topk_indices(x, k, sorted=True, impl="triton"), 100)
            small = rows_ <= 4096  # decode sizes: also per call inside a CUDA graph, and the sweep so
            if small:
                r["torch_graph_ms"] = graph_ms(lambda: x.topk(k, dim=-1))
                r["torch_unsorted_graph_ms"] = graph_ms(lambda: x.topk(k, dim=-1, sorted=False))
                r["triton_graph_ms"] = graph_ms(lambda: kernels.topk_indices(x, k, sorted=False, impl="triton"))
            r["read_floor_ms"] = rows_ * L * x.element_size() / copy_bw / 1e9  # each row read once, at the copy bandwidth
            if cfg["sweep"]:  # the register kernel (filter=0): bits per search pass (1, 2: compares; 4, 8:
                # histograms) x warps per row; the filter kernel: elements per block x warps
                tk = dict(kernels.TOPK_CONFIG)
                # at most 32 elements of the padded row per thread: fewer warps did not finish a shape's sweep
                # in 110 s on the H200 (2026-11-29)
                least = triton.next_power_of_2(L) // 1024
                for bits, warps in itertools.product((1, 2, 4, 8), [w for w in (1, 2, 4, 8, 16) if w >= least]):
                    kernels.TOPK_CONFIG.update(filter=0, bits=bits, warps=warps)
                    r[f"sweep_b{bits}_w{warps}_ms"] = timed(
                        lambda: kernels.topk_indices(x, k, sorted=False, impl="triton"), kernels.TOPK_CONFIG,
                        graph_ms if small else None)
                kernels.TOPK_CONFIG.update(tk)
                for block, warps in itertools.product((128, 512, 1024), (2, 4)):
                    kernels.TOPK_CONFIG.update(block=block, filter_warps=warps)
                    if kernels._topk_filter_shape(L, k) is None:  # k above half the groups this block allows
                        continue
                    r[f"sweep_filter_block{block}_w{warps}_ms"] = timed(
                        lambda: kernels.topk_indices(x, k, sorted=False, impl="triton"), kernels.TOPK_CONFIG,
                        graph_ms if small else None)
                kernels.TOPK_CONFIG.update(tk)
            del x
        except Exception as e:
            r["error"] = f"{type(e).__name__}: {' | '.join(str(e).splitlines()[:6])[:600]}"
        res["topk"].append(r)
        print("topk", {a: (round(b, 4) if isinstance(b, float) else b) for a, b in r.items()}, flush=True)
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
    print(f"\ncopy {copy_bw:.2f} TB/s; times in us; TB/s = useful bytes / triton time; bwd_split: the sorted backward "
          f"with the other bwd_split_scores setting (value tile off)")
    print(f"{'shape':>5} {'T':>6} {'fwd':>8} {'fwd_gr':>8} {'bwd_gr':>8} {'TB/s':>5} {'bwd_sort':>9} {'bwd_split':>9} "
          f"{'bwd_atom':>9} {'bwTB/s':>6} {'eb_fwd':>8} {'eb_bwd':>8} {'ref_fwd':>8} {'ref_bwd':>8}")
    for r in res["rows"]:
        u = lambda k: f"{r[k] * 1e3:8.1f}" if k in r else f"{'-':>8}"
        print(f"{r['shape']:>5} {r['T']:>6} {u('triton_fwd_ms')} {u('triton_fwd_graph_ms')} {u('triton_bwd_graph_ms')} "
              f"{r['fwd_TBps']:5.2f} {u('triton_bwd_sorted_ms'):>9} {u('triton_bwd_sorted_other_split_ms'):>9} "
              f"{u('triton_bwd_atomic_ms'):>9} {r['bwd_TBps']:6.2f} {u('embag_fwd_ms')} {u('embag_bwd_ms')} "
              f"{u('ref_fwd_ms')} {u('ref_bwd_ms')}")
    return res


# ----------------------------------------------------------------------------------------------------
# settings


class BenchError(Exception):
    """A user-facing problem (no GPU, bad model config): printed as one `error:` line, exit status 2."""


def _int_list(v) -> list[int]:
    """"1,2,4" | 4 | (1, 2) | [1, 2] -> [1, 2, 4]. ("--batches=1,2" reaches us as the tuple (1, 2).)"""
    if isinstance(v, int):
        return [v]
    if isinstance(v, str):
        return [int(x) for x in v.replace(" ", "").split(",") if x]
    return [int(x) for x in v]


def _resolve_device(name: str) -> str:
    dev = ("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name
    if dev.startswith("cuda") and not torch.cuda.is_available():
        raise BenchError(f"device={name!r} but no CUDA GPU is available (pass --device=cpu for a CPU run)")
    if not (dev == "cpu" or dev.startswith("cuda")):
        raise BenchError(f"device must be 'cuda', 'cuda:N', 'cpu' or 'auto', got {name!r}")
    return dev


def _resolve_dtype(name: str, dev: str) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if dev.startswith("cuda") else torch.float32
    if name not in ("float32", "bfloat16", "float16"):
        raise BenchError(f"dtype must be 'auto', 'float32', 'bfloat16' or 'float16', got {name!r}")
    return getattr(torch, name)


def model_config(cfg: dict, min_block: int = 0):
    """GPTConfig from a bench/train config dict; vocab_size 0 (train.py: from the dataset) means 50304."""
    from dataclasses import fields
    from model import GPTConfig
    args = {f.name: cfg[f.name] for f in fields(GPTConfig)}
    args["dropout"] = 0.0
    if args["vocab_size"] == 0:
        args["vocab_size"] = 50304
    args["block_size"] = max(args["block_size"], min_block)
    try:
        return GPTConfig(**args)
    except ValueError as e:
        raise BenchError(f"bad model config: {e}") from None


def build_model(config, dev, dtype: torch.dtype | None):
    """Random weights built directly on dev (or "meta": shapes only, for counting), in dtype (None: fp32)."""
    from model import GPT
    prev = torch.get_default_dtype()
    try:
        torch.set_default_dtype(dtype or torch.float32)
        with torch.device(dev):
            return GPT(config)
    except ValueError as e:  # e.g. a memory placement outside the model's blocks
        raise BenchError(f"bad model config: {e}") from None
    finally:
        torch.set_default_dtype(prev)


def model_kind(c) -> str:
    """'moe' (ffn == "moe"), 'ultramem' / 'pkm' (memory != "none"), both joined by '+', else 'dense'."""
    kinds = (["moe"] if c.ffn == "moe" else []) + ([c.memory] if c.memory != "none" else [])
    return "+".join(kinds) or "dense"


# ----------------------------------------------------------------------------------------------------
# decode: the byte model (module docstring), one function per model kind


def sparse_param_ids(model) -> set[int]:
    """ids of the sparse parameters: MoE experts (w_fc, w_proj) and memory values."""
    from model import MoE
    ids = set()
    for m in model.modules():
        if isinstance(m, MoE):
            ids |= {id(m.w_fc), id(m.w_proj)}
    for m in model.memories:
        ids.add(id(m.values))
    return ids


def decode_bytes_dense(model, B: int, S: int, el: int) -> dict:
    """Every model: the non-sparse weights, read once per step, and the KV cache.
      weights = (all parameters, the tied embedding counted once, minus MoE experts and memory values) x el
      kv      = 2 (K and V) x n_layer x B x S x n_kv_head x head_dim x el,  S = kv_len + 1 positions."""
    c = model.config
    sparse = sparse_param_ids(model)
    seen, n_dense = set(), 0
    for p in model.parameters():  # parameters() yields a tied weight once
        if id(p) not in sparse and id(p) not in seen:
            seen.add(id(p))
            n_dense += p.numel()
    head_dim = c.n_embd // c.n_head
    return {"dense_params": n_dense, "weights_bytes": n_dense * el,
            "kv_bytes": 2 * c.n_layer * B * S * c.n_kv_head * head_dim * el}


def decode_bytes_moe(model, B: int, el: int) -> dict:
    """ffn == "moe": per MoE layer, the distinct experts B tokens touch with top-k of E experts each,
    expected under uniform routing: E (1 - (1 - k/E)^B); one expert is w_fc (D x F) + w_proj (F x D).
      experts = n_moe_layers x E (1 - (1 - k/E)^B) x 2 D F x el"""
    from model import MoE
    c = model.config
    layers = sum(isinstance(m, MoE) for m in model.modules())
    E, k = c.moe_num_experts, c.moe_top_k
    distinct = E * (1.0 - (1.0 - k / E) ** B)
    expert_bytes = 2 * c.n_embd * c.moe_hidden * el
    return {"moe_layers": layers, "experts_distinct": distinct, "expert_bytes": expert_bytes,
            "experts_bytes": layers * distinct * expert_bytes}


def decode_bytes_memory(model, B: int, el: int) -> dict:
    """memory != "none": per memory layer, B tokens read m x H value rows each (after IVE's decode, of the
    N = mem_knum^2 physical rows); the distinct rows, for B m H uniform draws: N (1 - (1 - 1/N)^(B m H)),
    at most min(B m H, N). One row is D_v elements.
      values = n_memory_layers x N (1 - (1 - 1/N)^(B m H)) x D_v x el"""
    layers = list(model.memories)
    if not layers:
        return {"memory_layers": 0, "values_rows": 0.0, "values_rows_max": 0, "values_bytes": 0.0}
    m0 = layers[0]
    N, draws = m0.N, B * m0.m * m0.H
    rows = -N * math.expm1(draws * math.log1p(-1.0 / N))  # N (1 - (1 - 1/N)^draws), stable for large N
    return {"memory_layers": len(layers), "values_rows": rows, "values_rows_max": min(draws, N),
            "row_bytes": m0.Dv * el, "values_bytes": len(layers) * rows * m0.Dv * el}


def decode_bytes(model, B: int, S: int, el: int) -> dict:
    """The three parts summed into total_bytes (parts that do not apply are absent)."""
    r = decode_bytes_dense(model, B, S, el)
    total = r["weights_bytes"] + r["kv_bytes"]
    if model.config.ffn == "moe":
        r.update(decode_bytes_moe(model, B, el))
        total += r["experts_bytes"]
    if model.config.memory != "none":
        r.update(decode_bytes_memory(model, B, el))
        total += r["values_bytes"]
    r["total_bytes"] = total
    return r


def memory_needed(meta_model, B: int, S: int, el: int, V: int) -> int:
    """Device bytes to decode at batch B: parameters and buffers, KV and query-conv caches, the causal mask,
    and a workspace margin (logits, activations, CUDA graph pools)."""
    c = meta_model.config
    params = sum(p.numel() * (el if p.is_floating_point() else p.element_size()) for p in meta_model.parameters())
    bufs = sum(b.numel() * (el if b.is_floating_point() else b.element_size()) for b in meta_model.buffers())
    kv = decode_bytes_dense(meta_model, B, S, el)["kv_bytes"]
    conv = sum(B * m.kconv * c.n_embd * el for m in meta_model.memories if m.conv is not None)
    return params + bufs + kv + conv + S * S + 8 * B * V * 4 + (2 << 30)


# ----------------------------------------------------------------------------------------------------
# decode: timing


def _copy_bandwidth(dev: str) -> float:
    """Bytes per second of a 1 GiB device-to-device copy, read + written counted (2 GiB of traffic; median
    of CUDA events)."""
    src = torch.randn(1 << 28, device=dev)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    ms = _time_cuda(lambda: dst.copy_(src), 50)
    del src, dst
    torch.cuda.empty_cache()
    return 2 * (1 << 28) * 4 / (ms / 1e3)


def _cuda_graph(fn):
    """fn run 3 times on a side stream (compilation, allocator warm-up), then captured into one CUDA graph;
    returns its replay (the step's inputs are fixed tensors, so replaying redoes the same step)."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def parse_grid(flag: str, spec: str, config: dict, name: str) -> dict:
    """A sweep grid from the command line, "key:v,v/key:v" -> {key: (v, v), key: (v,)}, each value a Python
    literal and each key one of `config`'s (named `name` in the message); exits with a one-line error otherwise
    (scripts/bench_moe.py's --fused_grid, scripts/sweep_lookup.py's --grid)."""
    items = [item.partition(":") for item in spec.split("/")]
    bad = [k for k, colon, vs in items if not colon or not vs or k not in config]
    if bad:
        sys.exit(f"{flag}: {', '.join(map(repr, bad))}: need key:v,v,... with keys of {name} ({', '.join(config)})")
    try:
        return {k: tuple(ast.literal_eval(v) for v in vs.split(",")) for k, _, vs in items}
    except (ValueError, SyntaxError) as e:
        sys.exit(f"{flag}: {spec!r}: the values must be Python literals ({type(e).__name__})")


def replay_seconds(fn, iters: int = 50) -> float:
    """Seconds per call of fn captured in a CUDA graph (_cuda_graph): the median of 3 timings of `iters` replays
    (scripts/bench_moe.py, scripts/bench_read_sizes.py)."""
    replay = _cuda_graph(fn)
    replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(3):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(iters):
            replay()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b) / iters / 1e3)
    return sorted(times)[1]


def _time_cuda(fn, iters: int) -> float:
    """Median milliseconds of fn, one CUDA event pair per call."""
    times = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def _time_cpu(fn, iters: int) -> float:
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def _fill_caches(model, kv_len: int, gen: torch.Generator) -> None:
    """Random KV cache content at positions 0..kv_len-1 and a random query-conv ring, written into the buffers."""
    for block in model.blocks:  # (B, KV heads, S, head_dim): in place, no temporary
        block.attn.kv_cache.k[:, :, :kv_len].normal_(generator=gen)
        block.attn.kv_cache.v[:, :, :kv_len].normal_(generator=gen)
    for m in model.memories:  # (B, kconv, D): a ring of the last inputs
        if getattr(m, "conv_cache", None) is not None:
            m.conv_cache.normal_(generator=gen)


@torch.no_grad()
def _measure_picks(model, idx, pos) -> dict:
    """One eager step with forward pre-hooks that count, per layer, the distinct experts the router picked
    (MoE) and the distinct physical value rows the memory picked; returns the sums over layers."""
    from model import MoE, decode_one_token, moe_route
    experts, rows, hooks = [], [], []

    def moe_hook(mod, args):
        x = args[0]
        logits = F.linear(x.reshape(-1, x.shape[-1]).float(), mod.router.weight.float())
        experts.append(moe_route(logits, mod.top_k, mod.renorm)[2].unique().numel())

    def mem_hook(mod, args):
        addr, _ = mod.select(*args)  # rewrites the conv cache at input_pos with what the step writes anyway
        rows.append((addr % mod.N).unique().numel())

    for m in model.modules():
        if isinstance(m, MoE):
            hooks.append(m.register_forward_pre_hook(moe_hook))
    for m in model.memories:
        hooks.append(m.register_forward_pre_hook(mem_hook))
    try:
        decode_one_token(model, idx, pos, 0.0, None)
    finally:
        for h in hooks:
            h.remove()
    out = {}
    if experts:
        out["experts_distinct_measured"] = sum(experts) / len(experts)
    if rows:
        out["values_rows_measured"] = sum(rows) / len(rows)
    return out


def bench_decode_model(name: str, cfg: dict, run: dict, dev: str, dtype: torch.dtype, copy_Bps: float | None) -> dict:
    from model import decode_one_token
    kv_len, el = run["kv_len"], torch.finfo(dtype).bits // 8
    S = kv_len + 1
    config = model_config(cfg, min_block=S)
    meta = build_model(config, "meta", dtype)
    batches = _int_list(run["batches"]) or [1 << i for i in range(run["max_batch"].bit_length()) if 1 << i <= run["max_batch"]]
    info = {"name": name, "kind": model_kind(config), "params": meta.num_params(),
            "activated_params": meta.num_params(activated=True), "block_size": config.block_size,
            "mem_decode": config.mem_decode if config.memory != "none" else None, "rows": [], "skipped": []}
    fit = list(batches)
    if dev.startswith("cuda"):
        free = torch.cuda.mem_get_info(torch.device(dev))[0]
        fit = [B for B in batches if memory_needed(meta, B, S, el, config.vocab_size) <= free]
        for B in batches:
            if B not in fit:
                need = memory_needed(meta, B, S, el, config.vocab_size)
                msg = f"{name}: batch {B} skipped: weights + KV cache ~{need / 1e9:.1f} GB > {free / 1e9:.1f} GB free"
                print(msg, flush=True)
                info["skipped"].append(msg)
    del meta
    print(f"\n== {name} ({info['kind']}): {info['params'] / 1e6:.2f}M parameters, {info['activated_params'] / 1e6:.2f}M "
          f"activated; batches {fit}, kv_len {kv_len}, {str(dtype)[6:]} on {dev}", flush=True)
    if not fit:
        return info
    model = None
    try:
        model = build_model(config, dev, dtype).eval().requires_grad_(False)
        model.refresh()
        model.setup_caches(max(fit), S)
        _fill_caches(model, kv_len, torch.Generator(device=dev).manual_seed(0))
        use_compile = cfg["compile"] if cfg["compile"] is not None else dev.startswith("cuda")
        step = decode_one_token
        blocks_scope = use_compile and run["compile_scope"] == "blocks"
        if blocks_scope:  # each block and memory layer compiled on its own; the step is replayed as one CUDA graph
            torch._dynamo.reset()
            for mod in list(model.blocks) + list(model.memories):
                mod.compile(fullgraph=True, dynamic=None if run["compile_dynamic"] else False,
                            mode="max-autotune-no-cudagraphs" if run["max_autotune"] else None)
        elif use_compile:
            torch._dynamo.reset()
            mode = ("max-autotune" if run["max_autotune"] else "reduce-overhead") if dev.startswith("cuda") else None
            step = torch.compile(decode_one_token, fullgraph=True, dynamic=None if run["compile_dynamic"] else False,
                                 mode=mode)
        info["compiled"] = bool(use_compile)
        info["compile_scope"] = run["compile_scope"] if use_compile else None
        pos = torch.tensor([kv_len], device=dev)
        gen = torch.Generator(device=dev).manual_seed(1)
        for B in fit:
            idx = torch.randint(0, config.vocab_size, (B, 1), device=dev, generator=gen)
            r = {"model": name, "kind": info["kind"], "batch": B, "kv_len": kv_len, "elem_bytes": el}
            r.update(decode_bytes(model, B, S, el))
            with torch.no_grad():
                if run["measure"]:
                    with torch.compiler.set_stance("force_eager"):  # compiled blocks: no recompile for the hooks
                        r.update(_measure_picks(model, idx, pos))
                    if "experts_distinct_measured" in r:
                        r["experts_bytes_measured"] = r["moe_layers"] * r["experts_distinct_measured"] * r["expert_bytes"]
                    if "values_rows_measured" in r:
                        r["values_bytes_measured"] = r["memory_layers"] * r["values_rows_measured"] * r["row_bytes"]
                fn = lambda: step(model, idx, pos, 0.0, None)
                t0 = time.perf_counter()
                if blocks_scope and dev.startswith("cuda"):
                    fn = _cuda_graph(fn)  # compiles the blocks (warm-up), then captures the whole step
                else:
                    fn()  # the first call compiles (CUDA: and the next ones record the CUDA graph)
                if dev.startswith("cuda"):
                    torch.cuda.synchronize()
                r["first_call_s"] = time.perf_counter() - t0
                for _ in range(run["warmup"]):
                    fn()
                if dev.startswith("cuda"):
                    torch.cuda.synchronize()
                    ms = _time_cuda(fn, run["iters"])
                else:
                    ms = _time_cpu(fn, run["iters"])
                if run["profile"] > 0:
                    r["profile"] = _profile(fn, run["profile"], dev.startswith("cuda"))
            r["latency_ms"] = ms
            r["tokens_per_s"] = B / (ms / 1e3)
            r["achieved_GBps"] = r["total_bytes"] / (ms / 1e3) / 1e9
            if copy_Bps:
                r["floor_ms"] = r["total_bytes"] / copy_Bps * 1e3
                r["latency_over_floor"] = ms / r["floor_ms"]
            info["rows"].append(r)
            extra = f", floor {r['floor_ms']:.3f} ms, x{r['latency_over_floor']:.2f}" if copy_Bps else ""
            meas = "".join(f", {k} {r[k]:.1f}" for k in ("experts_distinct_measured", "values_rows_measured") if k in r)
            print(f"{name} B={B}: {ms:.3f} ms, {r['tokens_per_s']:,.0f} tok/s, reads {_gb(r['total_bytes'])} "
                  f"(weights {_gb(r['weights_bytes'])}, kv {_gb(r['kv_bytes'])}"
                  + (f", experts {_gb(r['experts_bytes'])}" if "experts_bytes" in r else "")
                  + (f", values {_gb(r['values_bytes'])}" if "values_bytes" in r else "")
                  + f"), {r['achieved_GBps']:.1f} GB/s{extra}{meas}", flush=True)
    except torch.cuda.OutOfMemoryError:
        done = [r["batch"] for r in info["rows"]]
        msg = f"{name}: out of GPU memory after batches {done}: stopping this model's sweep"
        print(msg, flush=True)
        info["stopped"] = msg
    except Exception as e:  # e.g. a compile failure: report it, keep the other models' results
        import traceback
        traceback.print_exc()
        done = [r["batch"] for r in info["rows"]]
        info["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''} (after batches {done})"
        print(f"{name}: failed: {info['error']}", flush=True)
    finally:
        del model
        if dev.startswith("cuda"):
            torch._dynamo.reset()
            torch.cuda.empty_cache()
    return info


def _gb(n: float) -> str:
    return f"{n / 1e9:.3f} GB" if n >= 1e8 else f"{n / 1e6:.3f} MB"


def _free(dev: str) -> None:
    """Between models: drop compiled graphs (and their CUDA graph pools) and cached blocks."""
    gc.collect()
    if dev.startswith("cuda"):
        torch._dynamo.reset()
        gc.collect()
        torch.cuda.empty_cache()


def _ratios(models: list[dict]) -> list[dict]:
    """Per batch: MoE/UltraMem and UltraMem/Dense latency, MoE/UltraMem bytes (first model of each kind)."""
    first = {}
    for m in models:
        kind = "moe" if m["kind"].startswith("moe") else ("mem" if m["kind"] != "dense" else "dense")
        first.setdefault(kind, {r["batch"]: r for r in m["rows"]})
    out = []
    for B in sorted(set().union(*[set(v) for v in first.values()]) if first else []):
        r = {"batch": B}
        moe, mem, dense = (first.get(k, {}).get(B) for k in ("moe", "mem", "dense"))
        if moe and mem:
            r["moe_over_mem_latency"] = moe["latency_ms"] / mem["latency_ms"]
            r["moe_over_mem_bytes"] = moe["total_bytes"] / mem["total_bytes"]
            r["moe_over_mem_bytes_no_kv"] = (moe["total_bytes"] - moe["kv_bytes"]) / (mem["total_bytes"] - mem["kv_bytes"])
        if mem and dense:
            r["mem_over_dense_latency"] = mem["latency_ms"] / dense["latency_ms"]
        if len(r) > 1:
            out.append(r)
    return out


def _ratio_summary(ratios: list[dict], max_batch: int = 256) -> dict:
    """The issue's headline numbers from _ratios: MoE/UltraMem latency at its peak and the batch there (the
    paper: up to 6x), and the largest UltraMem/Dense latency ratio up to max_batch with its batch (target 1.3)."""
    out = {}
    moe = [r for r in ratios if "moe_over_mem_latency" in r]
    if moe:
        top = max(moe, key=lambda r: r["moe_over_mem_latency"])
        out["moe_over_mem_latency_peak"], out["moe_over_mem_latency_peak_batch"] = top["moe_over_mem_latency"], top["batch"]
    mem = [r for r in ratios if "mem_over_dense_latency" in r and r["batch"] <= max_batch]
    if mem:
        top = max(mem, key=lambda r: r["mem_over_dense_latency"])
        out["mem_over_dense_latency_max"], out["mem_over_dense_latency_max_batch"] = top["mem_over_dense_latency"], top["batch"]
    return out


def _plot(res: dict, path: str) -> str:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not importable: plot skipped"
    fig, ax = plt.subplots(figsize=(6, 4))
    for m in res["models"]:
        if m["rows"]:
            ax.plot([r["batch"] for r in m["rows"]], [r["latency_ms"] for r in m["rows"]], "o-", label=f"{m['name']} ({m['kind']})")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size")
    ax.set_ylabel("decode step latency (ms)")
    ax.set_title(f"one-token decode, KV cache {res['kv_len']}, {res['device_name']}")
    ax.legend()
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return f"plot written to {path}"


def bench_decode(run: dict, models: list[tuple[str, dict]]) -> dict:
    dev = _resolve_device(run["device"])
    dtype = _resolve_dtype(run["dtype"], dev)
    if run["kv_len"] < 1 or run["iters"] < 1 or run["warmup"] < 0 or run["max_batch"] < 1:
        raise BenchError("kv_len, iters and max_batch must be >= 1 and warmup >= 0")
    if run["compile_scope"] not in ("model", "blocks"):
        raise BenchError(f"compile_scope must be 'model' or 'blocks', got {run['compile_scope']!r}")
    import torch._inductor.config as inductor_config
    inductor_config.coordinate_descent_tuning = run["coordinate_descent"]
    if dev.startswith("cuda"):
        torch.cuda.set_device(torch.device(dev).index or 0)
        torch.backends.cuda.matmul.allow_tf32 = True
        import torch._dynamo.config as dcfg
        for key in ("cache_size_limit", "recompile_limit"):  # one compiled graph per batch size
            if hasattr(dcfg, key):
                setattr(dcfg, key, 64)
    res = {"mode": "decode", "date": time.strftime("%Y-%m-%d %H:%M:%S"), "device": dev,
           "device_name": torch.cuda.get_device_name(torch.device(dev)) if dev.startswith("cuda") else "cpu",
           "torch": torch.__version__, "dtype": str(dtype)[6:], "kv_len": run["kv_len"],
           "random_kv_cache": "the KV and query-conv caches hold random values written into the buffers (no prefill)",
           "copy_GBps": None, "models": [], "rows": []}
    copy_Bps = None
    if dev.startswith("cuda"):
        copy_Bps = _copy_bandwidth(dev)
        res["copy_GBps"] = copy_Bps / 1e9
        print(f"copy bandwidth {copy_Bps / 1e9:.0f} GB/s (read + written)", flush=True)
    else:
        print("CPU: no copy-bandwidth floor", flush=True)
    for name, cfg in models:
        torch.manual_seed(cfg["seed"])
        info = bench_decode_model(name, cfg, run, dev, dtype, copy_Bps)
        _free(dev)
        res["models"].append(info)
        res["rows"].extend(info["rows"])
    res["ratios"] = _ratios(res["models"])
    if res["ratios"]:
        print("\nratios per batch (first model of each kind):")
        for r in res["ratios"]:
            print(f"  B={r['batch']}: " + ", ".join(f"{k} {v:.2f}" for k, v in r.items() if k != "batch"))
        res["ratio_summary"] = s = _ratio_summary(res["ratios"])
        if "moe_over_mem_latency_peak" in s:
            print(f"MoE / UltraMem latency peaks at {s['moe_over_mem_latency_peak']:.2f}x at batch "
                  f"{s['moe_over_mem_latency_peak_batch']} (the paper: up to 6x)")
        if "mem_over_dense_latency_max" in s:
            print(f"UltraMem / Dense latency up to batch 256: at most {s['mem_over_dense_latency_max']:.2f}x "
                  f"(batch {s['mem_over_dense_latency_max_batch']}; the target: 1.3x)")
    with open(run["out"], "w") as f:
        json.dump(res, f, indent=1)
    print(f"JSON written to {run['out']}")
    print(_plot(res, os.path.splitext(run["out"])[0] + ".png"))
    return res


# ----------------------------------------------------------------------------------------------------
# train


def train_loader(cfg: dict, config, B: int):
    """train_data="dataset": train.py's TokenLoader over the config's train.bin (train.open_dataset: data_dir, else
    data/<dataset>), seeded by its seed. BenchError with a one-line message where the dataset is missing, malformed,
    too short for a batch, or holds token ids beyond the model's vocabulary."""
    import train
    try:
        data_dir, meta = train.open_dataset(cfg)
        if meta["vocab_size"] > config.vocab_size:
            raise train.Fatal(f"the dataset's vocab_size {meta['vocab_size']} exceeds the model's {config.vocab_size}")
        return train.TokenLoader(os.path.join(data_dir, "train.bin"), meta["dtype"], config.block_size, B, 0, 1,
                                 cfg["seed"])
    except train.Fatal as e:
        raise BenchError(f"train_data=dataset: {e}") from None


def bench_train_model(name: str, cfg: dict, run: dict, dev: str) -> dict:
    from contextlib import nullcontext
    cuda = dev.startswith("cuda")
    dt = _resolve_dtype(run["dtype"], dev)
    config = model_config(cfg)
    B, T = cfg["batch_size"], config.block_size
    info = {"model": name, "kind": model_kind(config), "batch_size": B, "block_size": T, "dtype": str(dt)[6:],
            "train_data": run["train_data"]}
    loader = train_loader(cfg, config, B) if run["train_data"] == "dataset" else None  # fails before the model
    model = opt = None
    try:
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        model = build_model(config, dev, None)
        info["params"], info["activated_params"] = model.num_params(), model.num_params(activated=True)
        print(f"\n== {name} ({info['kind']}): {info['params'] / 1e6:.2f}M parameters, batch {B} x {T} on {dev}", flush=True)
        groups = model.optim_groups(cfg["weight_decay"])
        for g in groups:
            g.pop("names")
        opt = torch.optim.AdamW(groups, lr=cfg["learning_rate"], betas=(cfg["beta1"], cfg["beta2"]), fused=cuda)
        autocast = torch.autocast("cuda" if cuda else "cpu", dtype=dt) if dt != torch.float32 else nullcontext()
        use_compile = cfg["compile"] if cfg["compile"] is not None else cuda
        info["compiled"] = ("blocks" if cfg["compile_blocks"] else "model") if use_compile else False
        fwd = model.compiled(cfg["compile_blocks"]) if use_compile else model  # as train.py compiles
        g = torch.Generator(device=dev).manual_seed(0)
        x = torch.randint(0, config.vocab_size, (B, T), device=dev, generator=g)
        y = torch.randint(0, config.vocab_size, (B, T), device=dev, generator=g)
        model.train()

        fed = [0]  # the sum of the token ids of the dataset batches fed (a check that they are the loader's)

        def next_batch():
            if loader is None:
                return x, y
            xb, yb = loader.next_batch()
            fed[0] += int(xb.sum())
            return xb.to(dev), yb.to(dev)

        def train_step(batch=None):
            xb, yb = batch if batch is not None else next_batch()
            model.refresh()
            with autocast:
                _, ce, aux = fwd(xb, yb)
                loss = ce + sum(aux.values()) if aux else ce
            loss.backward()
            if cfg["grad_clip"] > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
            opt.step()
            opt.zero_grad(set_to_none=True)
            return loss

        t0 = time.perf_counter()
        for i in range(run["warmup"]):
            train_step()
            if i == 0:  # the first step compiles (forward and backward): its time is the compile's cost
                if cuda:
                    torch.cuda.synchronize()
                info["first_step_s"] = time.perf_counter() - t0
        times = []
        for _ in range(run["iters"]):
            batch = next_batch()  # outside the timed region: the step alone, on either kind of data
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            loss = train_step(batch)
            loss.item()  # waits for the step
            times.append(time.perf_counter() - t0)
        step_s = statistics.median(times)
        if run["profile"] > 0:
            info["profile"] = _profile(train_step, run["profile"], cuda)
        info["step_ms"] = step_s * 1e3
        info["tokens_per_s"] = B * T / step_s
        info["mfu"] = model.estimate_mfu(info["tokens_per_s"], cfg["peak_tflops"] * 1e12)
        info["loss"] = loss.item()
        if loader is not None:
            info["data_windows"] = loader.cursor  # the batches drawn: one per step (warm-up, timed and profiled)
            info["data_token_sum"] = fed[0]
        if cuda:
            info["peak_mem_GB"] = torch.cuda.max_memory_allocated() / 1e9
        if "first_step_s" in info:
            print(f"{name}: first step (compiling: {info['compiled'] or 'no'}) {info['first_step_s']:.1f} s", flush=True)
        print(f"{name}: step {info['step_ms']:.1f} ms, {info['tokens_per_s']:,.0f} tok/s, MFU {100 * info['mfu']:.1f}% "
              f"(at {cfg['peak_tflops']} TFLOPS)" + (f", peak {info['peak_mem_GB']:.1f} GB" if cuda else ""), flush=True)
    except torch.cuda.OutOfMemoryError:
        info["error"] = f"out of GPU memory (batch {B} x {T})"
        print(f"{name}: {info['error']}: skipped", flush=True)
    finally:
        del model, opt
        if cuda:
            torch._dynamo.reset()
            torch.cuda.empty_cache()
    return info


# kernel name -> category, first match wins (kernels.py's lookup and MoE kernels, attention, top-k and sorting,
# cuBLAS / CUTLASS GEMMs, the fused optimizer and the clip's foreach norms, Inductor's Triton kernels, copies)
PROFILE_CATEGORIES = (("memory lookup", ("_lookup_",)),  # kernels.py's Triton lookup, forward and backward
                      ("moe kernels", ("_moe_grouped_mm", "_moe_gather", "_moe_logits", "_moe_decode", "_moe_cast")),  # kernels.py's MoE decode kernels
                      # attention before top-k (Inductor's FlexAttention kernel names say "sort") and before
                      # matmul (cuDNN's say "wgmma")
                      ("attention", ("sdpa", "flash", "fmha", "attention", "efficient", "compute_dot_do_o",
                                     "convert_dq", "_decode_attn_")),  # the last: kernels.decode_attention
                      ("top-k / sort", ("topk", "sort", "radix", "bitonic", "gather_topk")),
                      ("matmul", ("gemm", "xmma", "cutlass", "nvjet", "wgmma", "cublas")),
                      ("optimizer", ("adam", "multi_tensor", "foreach", "norm_kernel")),
                      ("inductor triton", ("triton",)),
                      ("copy / fill", ("copy", "fill", "memset", "memcpy")))


def _profile(step, n: int, cuda: bool) -> dict:
    """n steps under torch.profiler: device time per kernel, summed per category (PROFILE_CATEGORIES,
    else "other") and the top kernels, in ms per step; printed as a table. Measures where the step's time
    goes, not its speed (the profiler adds host overhead; the timed steps above are without it)."""
    from torch.profiler import ProfilerActivity, profile
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        for _ in range(n):
            step()
        if cuda:
            torch.cuda.synchronize()
    rows = []
    for e in prof.key_averages():
        t = getattr(e, "self_device_time_total", None)
        if t is None:
            t = getattr(e, "self_cuda_time_total", 0)
        if not cuda:
            t = e.self_cpu_time_total
        # '#' marks ranges, not kernels: the optimizer's "Optimizer.step#AdamW.step" and compiled graphs'
        # "## Call CompiledFxGraph ... ##", mirrored on the GPU timeline over the kernels they launch
        if t > 0 and "#" not in e.key and (not cuda or str(getattr(e, "device_type", "")).endswith("CUDA")):
            rows.append((e.key, t / 1e3 / n, e.count // n))
    cats: dict[str, float] = {}
    for key, ms, _ in rows:
        low = key.lower()
        cat = next((c for c, words in PROFILE_CATEGORIES if any(w in low for w in words)), "other")
        cats[cat] = cats.get(cat, 0.0) + ms
    rows.sort(key=lambda r: -r[1])
    total = sum(cats.values())
    print(f"profile ({n} steps, {'device' if cuda else 'CPU'} time per step): {total:.2f} ms in kernels", flush=True)
    for c, ms in sorted(cats.items(), key=lambda kv: -kv[1]):
        print(f"  {c:16s} {ms:8.2f} ms  {100 * ms / total:5.1f}%")
    for key, ms, count in rows[:25]:
        print(f"  {ms:8.3f} ms  x{count:<4d} {key[:110]}")
    return {"steps": n, "kernel_ms": total, "categories_ms": cats,
            "top": [{"kernel": k, "ms": ms, "calls": c} for k, ms, c in rows[:40]]}


def bench_train(run: dict, models: list[tuple[str, dict]]) -> dict:
    dev = _resolve_device(run["device"])
    _resolve_dtype(run["dtype"], dev)
    if run["iters"] < 1 or run["warmup"] < 0:
        raise BenchError("iters must be >= 1 and warmup >= 0")
    if run["train_data"] not in ("random", "dataset"):
        raise BenchError(f"train_data must be 'random' or 'dataset', got {run['train_data']!r}")
    if dev.startswith("cuda"):
        torch.cuda.set_device(torch.device(dev).index or 0)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    res = {"mode": "train", "date": time.strftime("%Y-%m-%d %H:%M:%S"), "device": dev,
           "device_name": torch.cuda.get_device_name(torch.device(dev)) if dev.startswith("cuda") else "cpu",
           "torch": torch.__version__, "rows": []}
    for name, cfg in models:
        torch.manual_seed(cfg["seed"])
        # the model's lookup_config: its config file's, or the command line's, which overrides it
        with _lookup_config(**lookup_overrides(cfg["lookup_config"])):
            res["rows"].append(bench_train_model(name, cfg, run, dev))
        _free(dev)
    with open(run["out"], "w") as f:
        json.dump(res, f, indent=1)
    print(f"JSON written to {run['out']}")
    return res


# ----------------------------------------------------------------------------------------------------
# command line


MODES = {"decode": bench_decode, "train": bench_train, "kernels": bench_kernels}

BENCH_KEYS = {
    "mode": "decode",                  # decode | train | kernels
    "out": "",                         # JSON of every number measured; "" = bench_<mode>.json
    # decode
    "batches": "",                     # "1,2,4" (or --batches=1,2,4); "" = powers of two 1..max_batch
    "max_batch": 1024,
    "kv_len": 2048,                    # cached positions before the decoded token
    "measure": True,                   # count the experts / value rows actually picked (one eager step)
    "compile_dynamic": False,          # False: one static compilation per batch size; True: dynamic=None
                                       # (dynamo generalises the batch after the second size: fewer compiles)
    "compile_scope": "blocks",         # "model": the whole step, mode="reduce-overhead" (gpt-fast's way);
                                       # "blocks": each block / memory layer compiled once for all of its
                                       # copies, the whole step captured in one CUDA graph (far less compile)
    "coordinate_descent": False,       # Inductor's coordinate_descent_tuning (gpt-fast turns it on for
                                       # decoding: tunes its kernels' launch parameters; longer compiles)
    "max_autotune": False,             # torch.compile's max-autotune: Triton GEMM templates autotuned against
                                       # cuBLAS per shape (the decode step's skinny GEMMs; far longer compiles)
    # train
    "train_data": "random",            # "random": one batch of random tokens, every step (the numbers recorded up to
                                       # session 18); "dataset": a new batch each step from the config's dataset
                                       # (data_dir or data/<dataset>, train.bin), drawn as train.py draws them. After
                                       # 10 steps on either, nearly every token of the UltraMem-151M selects the same
                                       # rows, and its step took the same time (docs/BENCHMARKS.md, session 19)
    # decode and train
    "warmup": 10,                      # untimed steps
    "iters": 50,                       # timed steps (median)
    "profile": 0,                      # > 0: profile that many steps after timing (torch.profiler), per
                                       # model (train) or per model and batch (decode)
    # kernels
    "shapes": "a,b",                   # keys of SHAPES; empty (--shapes=): time the top-k kernel only
    "tokens": "1,8,64,512,4096,32768,65536",
    "E": 4,
    "h": 2,
    "max_baseline_tokens": 32768,      # embedding_bag and the reference are timed up to this many tokens
    "check_compile": True,
    "sweep": True,                     # time a few launch configurations at 32,768 tokens
    # every mode: train.py's lookup_config (kernels.CONFIG overrides, "key=int,..."), from the command line for
    # the whole run; in train mode a config file's own lookup_config applies to its model
}
# train.py keys whose default bench changes (same meaning): a GPU is required unless --device=cpu
CHANGED_TRAIN_DEFAULTS = {"device": "cuda"}
RUN_KEYS = ("mode", "out", "device", "dtype", "batches", "max_batch", "kv_len", "measure", "compile_dynamic", "warmup", "iters",
            "profile", "compile_scope", "coordinate_descent", "max_autotune", "lookup_config", "train_data")


def lookup_overrides(spec: str) -> dict:
    """"key=int,key=int" -> those kernels.CONFIG entries, checked by kernels.parse_config. Raises BenchError for
    an unknown key or a value that is not an integer."""
    import kernels
    try:
        return kernels.parse_config(spec)
    except ValueError as e:
        raise BenchError(str(e)) from None


def apply_lookup_config(spec: str) -> dict:
    """lookup_overrides(spec), set in kernels.CONFIG; returns them."""
    import kernels
    got = lookup_overrides(spec)
    kernels.CONFIG.update(got)
    return got


LIST = (str, int, tuple, list)


def defaults_and_types() -> tuple[dict, dict]:
    import train
    base = train.default_config()
    clash = set(BENCH_KEYS) & set(base)
    assert not clash, f"bench keys clash with train.py / GPTConfig keys: {clash}"
    return {**base, **CHANGED_TRAIN_DEFAULTS, **BENCH_KEYS}, {**train.TYPES, "batches": LIST, "tokens": LIST}


def parse(argv: list[str]) -> tuple[dict, list[tuple[str, dict]]]:
    """argv -> (run settings, [(model name, settings)]): positional arguments are config files (one model
    each), --key=value overrides apply to every model."""
    defaults, types = defaults_and_types()
    files = [a for a in argv if not a.startswith("-")]
    overrides = [a for a in argv if a.startswith("-")]
    run = configure(defaults, overrides, types)
    models, names = [], set()
    for path in files or [None]:
        cfg = configure(defaults, ([path] if path else []) + overrides, types)
        name = os.path.splitext(os.path.basename(path))[0] if path else "defaults"
        base, i = name, 2
        while name in names:
            name, i = f"{base}_{i}", i + 1
        names.add(name)
        models.append((name, cfg))
    if run["mode"] not in MODES:
        raise ConfigError(f"unknown mode '{run['mode']}'; modes: {', '.join(MODES)}")
    run["out"] = run["out"] or f"bench_{run['mode']}.json"
    out_dir = os.path.dirname(os.path.abspath(run["out"]))
    try:  # before any timing: a run must not end in an unwritable JSON path
        os.makedirs(out_dir, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create the output folder {out_dir} of --out={run['out']}: {e.strerror}")
    if not os.access(out_dir, os.W_OK):
        raise ConfigError(f"the output folder {out_dir} of --out={run['out']} is not writable")
    run["tokens"] = ",".join(map(str, _int_list(run["tokens"])))
    return run, models


def main(argv: list[str]) -> None:
    if "--help" in argv or "-h" in argv:
        defaults, _ = defaults_and_types()
        print(f"usage: {sys.argv[0]} [config_file.py ...] [--key=value ...]   (one model per config file)\n\nkeys and defaults:")
        print(format_config(defaults))
        sys.exit(0)
    try:
        run, models = parse(argv)
        defaults, _ = defaults_and_types()
        for name, cfg in models:
            changed = {k: v for k, v in cfg.items() if defaults[k] != v and k not in RUN_KEYS}
            print(f"{name}: " + ", ".join(f"{k}={v!r}" for k, v in changed.items()), flush=True)
        print("run: " + ", ".join(f"{k}={run[k]!r}" for k in RUN_KEYS), flush=True)
        if run["lookup_config"]:
            print(f"kernels.CONFIG: {apply_lookup_config(run['lookup_config'])} set", flush=True)
        if run["mode"] == "kernels":
            bench_kernels(run)
        else:
            MODES[run["mode"]](run, models)
    except (ConfigError, BenchError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main(sys.argv[1:])
