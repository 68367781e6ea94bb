"""Diagnose the compiled memory layer against eager: one MemoryLayer of each config, random inputs, its
output and its retrieval (which rows and columns win) compiled and eager, in the three graphs that run: training
(train mode, gradient on), evaluation (eval mode, no gradient: train.py's eval_compile) and cached decoding
(setup_cache, input_pos, fullgraph, as sample.py and bench.py compile it; batch 4 x 1 token and 1 x 64 tokens).
Written when the session-8 GPU run's compiled evaluation gave validation losses 0.2-0.4 above the eager ones for
the TDQKR configs with mem_knum other than 1,136 (docs/RESULTS.md). An overlap near 1 (bf16 near-ties aside)
is right; near 0 means the compiled graph picked other rows.

    PYTHONPATH=. python scripts/diag_compiled_eval.py [TOKENS] CONFIG.py [CONFIG.py ...] [--key=value ...]

--key=value overrides a config setting in every file, e.g. --mem_topm=16. For a TDQKR layer the evaluation and
decoding graphs are checked with both no-gradient retrieval paths (mem_decode "fused", the default, and "plain",
which checkpoints from before session 10 keep), and the two are compared eagerly.

It exits 1, after a line naming each one, when any overlap is below DIAG_MIN_OVERLAP (default 0.9: right graphs
measured 0.973-0.996 on the H200 in sessions 9 and 10, wrong ones 0.0004-0.25), so it can gate a GPU run.

Session 9's run (docs/runs/2026-11-30_s9_diag_compiled_eval_before_fix.txt) found the part: the no-gradient path then
scored rows and columns in one batched matmul (head_scores returned strided views of its output) and pre-selected
both in one stacked top-k call; replacing either with the training path's code made the compiled graph right,
and memory.py now has one path for both (a DIAG_VARIANTS switch that swapped them is gone with them). The
"part" lines compile head_scores, tdqkr_retrieve and the pre-selection's top-k one at a time on eager inputs.
"""
import ast
import os
import sys
import time
from dataclasses import fields

import torch

import memory
from model import GPTConfig


def rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30)).item()


def key(r):
    """A retrieval's (row, col) pairs as one integer each."""
    return r[0] * 10**7 + r[1]


def overlap(a, b):
    """Mean fraction of each row's winners (integer keys, last dim) that the other also has."""
    return (a.unsqueeze(-1) == b.unsqueeze(-2)).any(-1).float().mean().item()


MIN_OVERLAP = float(os.environ.get("DIAG_MIN_OVERLAP", "0.9"))
FAILED = []  # (config, what, overlap) below MIN_OVERLAP


def report(path: str, what: str, value: float) -> float:
    if value < MIN_OVERLAP:
        FAILED.append((path, what, value))
    return value


def parts(layer, x, ac, path: str) -> None:
    """The no-gradient retrieval's parts compiled one at a time on the same eager inputs: head_scores (its
    scores), tdqkr_retrieve (its winners) and the rows' pre-selection top-k (its indices)."""
    with ac(), torch.no_grad():
        T = x.shape[0]
        q = layer._norm(layer.query_proj(x).view(T, layer.Hq, 2, layer.Dk), layer.query_norm).expand(T, layer.H, 2, layer.Dk)
        keys = layer._norm(layer.keys, layer.key_norm).to(q.dtype)
        se, sc = memory.head_scores(q, keys), torch.compile(memory.head_scores)(q, keys)
        print(f"    part head_scores: s_row rel {rel(sc[0], se[0]):.3e}, s_col rel {rel(sc[1], se[1]):.3e}", flush=True)
        args = (*se, layer.cores, layer.u, layer.t, layer.m, layer.topk)
        re, rc = memory.tdqkr_retrieve(*args), torch.compile(memory.tdqkr_retrieve)(*args)
        print(f"    part tdqkr_retrieve: winners overlap {report(path, 'part tdqkr_retrieve', overlap(key(rc), key(re))):.4f}", flush=True)
        pre = memory._rdot(se[0], layer.u.to(se[0].dtype)[None, :, None, :])  # the rows' rank-1 scores
        top = lambda p: memory.kernels.topk_indices(p, layer.m, False, layer.topk)
        impl = memory.kernels.topk_auto_impl(tuple(pre.shape), layer.m, pre.dtype, pre.is_cuda) if layer.topk == "auto" else layer.topk
        print(f"    part top-k of the rows' pre-selection {tuple(pre.shape)} {pre.dtype} ({impl}): overlap "
              f"{report(path, 'part top-k', overlap(torch.compile(top)(pre), top(pre))):.4f}, against torch.topk "
              f"{overlap(top(pre), pre.topk(layer.m).indices):.4f}",
              flush=True)


def check(path: str, T: int, dev: str, overrides: dict) -> None:
    cfg = {}
    exec(open(path).read(), cfg)
    cfg.update(overrides)
    torch._dynamo.reset()  # each config compiles afresh: the functions below are the same code objects for every
    # config, and their graphs from earlier configs would count against Dynamo's recompile limit (8; the session-10
    # run failed on the fifth config's fullgraph decode step)
    torch.manual_seed(0)
    with torch.device(dev):  # built on the device: a paper-size table (1.6B: 3.3G values per layer) is slow on the CPU
        layer = memory.MemoryLayer(GPTConfig.from_dict(cfg))
    with torch.no_grad():  # trained-like cores (not the init's), so that the rank-1 pre-selection matters
        if layer.cores is not None:
            layer.cores.normal_()
        layer.refresh()
    D, t0 = layer.D, time.time()
    ac = lambda: torch.autocast(dev, dtype=torch.bfloat16, enabled=dev == "cuda")
    h = torch.randn(max(1, T // 1024), min(T, 1024), D, device=dev)
    comp, sel = torch.compile(layer), torch.compile(layer.retrieve)
    x2 = h.reshape(-1, D)
    # the no-gradient graphs for both retrieval paths of a TDQKR layer: "fused" is the default, and a checkpoint
    # keeps the setting it was saved with (those from before session 10: "plain")
    modes = ("fused", "plain") if layer.tdqkr else (layer.decode,)
    for train, mode in ((True, layer.decode), *((False, m) for m in modes)):
        layer.train(train)
        layer.decode = mode
        with ac(), torch.set_grad_enabled(train):
            ye, yc = layer(h)[0].detach(), comp(h)[0].detach()
            re, rc = layer.retrieve(x2), sel(x2)
        what = 'train+grad' if train else 'eval+no_grad' + (f' ({mode})' if layer.tdqkr else '')
        print(f"  {what}: y rel {rel(yc, ye):.3e}, retrieval overlap {report(path, what, overlap(key(rc), key(re))):.4f}", flush=True)
    layer.eval()
    if layer.tdqkr:
        parts(layer, x2, ac, path)
        with ac(), torch.no_grad():  # the fused path against the plain one, both eager (bf16 near-ties apart)
            layer.decode = "fused"
            rf = layer.retrieve(x2)
            layer.decode = "plain"
            rp = layer.retrieve(x2)
        print(f"  eval fused vs plain, eager: retrieval overlap {report(path, 'fused vs plain', overlap(key(rf), key(rp))):.4f}", flush=True)
    for mode in modes:
        layer.decode = mode
        step = torch.compile(layer.select, fullgraph=True)
        for B, S in ((4, 1), (1, 64)):
            with ac(), torch.no_grad():
                x = torch.randn(B, S, D, device=dev)
                pos = torch.arange(S, device=dev)
                layer.setup_cache(B, 2048, torch.bfloat16 if dev == "cuda" else torch.float32, dev)
                ae = layer.select(x, pos)[0]
                layer.setup_cache(B, 2048, torch.bfloat16 if dev == "cuda" else torch.float32, dev)
                acmp = step(x, pos)[0]
            what = f"decode {B} x {S}" + (f" ({mode})" if layer.tdqkr else "")
            print(f"  {what}: address overlap {report(path, what, overlap(acmp, ae)):.4f}", flush=True)
    print(f"  ({time.time() - t0:.0f} s)", flush=True)


def main():
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    overrides, known = {}, {f.name for f in fields(GPTConfig)}
    for a in sys.argv[1:]:
        if a.startswith("--"):
            k, eq, v = a[2:].partition("=")
            if not eq or k not in known:  # GPTConfig.from_dict would drop an unknown key: a typo would check nothing
                sys.exit(f"diag_compiled_eval.py: {a!r} is not --key=value with a model setting (GPTConfig field)")
            try:
                overrides[k] = ast.literal_eval(v)
            except (ValueError, SyntaxError):
                overrides[k] = v  # a bare string
    T = int(args.pop(0)) if args and args[0].isdigit() else 8192
    for path in args:
        print(f"{path} (mem_knum from the file{''.join(f', {k}={v!r}' for k, v in overrides.items())}), {T} tokens on {dev}:", flush=True)
        check(path, T, dev, overrides)
    for path, what, value in FAILED:
        print(f"WRONG: {path} {what}: overlap {value:.4f} < {MIN_OVERLAP}", flush=True)
    print(f"{len(FAILED)} check(s) below an overlap of {MIN_OVERLAP}" if FAILED else "every compiled graph agrees with eager")
    sys.exit(1 if FAILED else 0)


if __name__ == "__main__":
    main()
