"""Tests for the MoE grouped matmul in kernels.py (moe_grouped_mm): the Triton kernel (under the interpreter,
on CPU) against the PyTorch reference and torch._grouped_mm, the custom op on CPU, its refusal of autograd,
and torch.compile(fullgraph=True).

TRITON_INTERPRET=1 must be set before triton is first imported in a process, and other test modules
import kernels earlier in the same pytest run, so the interpreter checks run in a subprocess: this file
run as a script with --interp (as in test_kernels.py).
"""

import os
import sys

if __name__ == "__main__":  # the subprocess: set before anything imports triton
    os.environ["TRITON_INTERPRET"] = "1"

import pytest
import torch
import torch.nn.functional as F

import kernels
from kernel_checks import close as _close, compile_sm90, run_interpreter_checks



def _inputs(M, K, N, sizes, dtype, seed):
    """x (M, K), w (G, K, N) and int32 offs from the group sizes (len G); rows past sum(sizes) are in no group."""
    assert sum(sizes) <= M
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(M, K, generator=g).to(dtype)
    w = (torch.randn(len(sizes), K, N, generator=g) / K ** 0.5).to(dtype)
    offs = torch.tensor(sizes, dtype=torch.int64).cumsum(0).to(torch.int32)
    return x, w, offs


def _routed_sizes(M, G, seed):
    """Group sizes of M token-slots routed at random to G experts, the first and last expert left empty."""
    g = torch.Generator().manual_seed(seed)
    experts = torch.randint(1, G - 1, (M,), generator=g)
    return torch.bincount(experts, minlength=G).tolist()


def _grouped_mm(x, w, offs, gelu):
    """torch._grouped_mm (+ GeLU) on the rows in a group; it leaves the rows past offs[-1] unwritten."""
    n = int(offs[-1])
    y = torch._grouped_mm(x, w, offs=offs)[:n]
    return F.gelu(y) if gelu else y


# --------------------------------------------------------------------------------------------------
# In-process tests (reference, custom op on CPU, compile)

def test_reference_matches_grouped_mm():
    for dtype in (torch.float32, torch.bfloat16):
        for gelu in (False, True):
            x, w, offs = _inputs(40, 96, 200, [0, 30, 0, 7, 0], dtype, 0)
            ref = kernels.moe_grouped_mm_reference(x, w, offs, gelu)
            _close(ref[:37], _grouped_mm(x, w, offs, gelu), dtype, f"reference vs _grouped_mm {dtype} gelu={gelu}")
            assert (ref[37:] == 0).all(), "rows past offs[-1] must be zero"


def test_op_on_cpu_is_reference():
    x, w, offs = _inputs(24, 96, 72, _routed_sizes(24, 34, 1), torch.bfloat16, 1)
    assert torch.equal(kernels.moe_grouped_mm(x, w, offs, gelu=True), kernels.moe_grouped_mm_reference(x, w, offs, True))


def test_requires_grad_raises_unless_no_grad():
    x, w, offs = _inputs(12, 32, 48, [5, 0, 6], torch.float32, 2)
    w = torch.nn.Parameter(w)
    with pytest.raises(RuntimeError, match="inference only"):
        kernels.moe_grouped_mm(x, w, offs)
    with pytest.raises(RuntimeError, match="inference only"):
        kernels.moe_grouped_mm(x.clone().requires_grad_(True), w.detach(), offs)
    with torch.no_grad():
        out = kernels.moe_grouped_mm(x, w, offs)
    with torch.inference_mode():
        assert torch.equal(kernels.moe_grouped_mm(x, w, offs), out)


def test_bad_inputs_raise():
    x, w, offs = _inputs(12, 32, 48, [5, 0, 6], torch.float32, 3)
    with pytest.raises(ValueError):
        kernels.moe_grouped_mm(x[:, :31], w, offs)  # K mismatch
    with pytest.raises(ValueError):
        kernels.moe_grouped_mm(x, w, offs[:2])  # one offset per group
    with pytest.raises(ValueError):
        kernels.moe_grouped_mm(x, w.bfloat16(), offs)  # dtype mismatch
    with pytest.raises(ValueError):
        kernels.moe_grouped_mm(x, w, offs.float())


def test_block_m():
    pytest.importorskip("triton")
    assert kernels._moe_block_m(1, 64) == 16      # decode: one tile of the minimum
    assert kernels._moe_block_m(24, 5) == 16      # ceil(1.5 * 24 / 5) = 8, clamped up to 16
    assert kernels._moe_block_m(200, 5) == 64     # 60 -> 64
    assert kernels._moe_block_m(1000, 2) == 64    # clamped down


def test_triton_on_cpu_without_interpreter_raises():
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("interpreter is on in this process")
    pytest.importorskip("triton")
    x, w, offs = _inputs(12, 32, 48, [5, 0, 6], torch.float32, 4)
    kernels.set_impl("triton")
    try:
        with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
            kernels.moe_grouped_mm(x, w, offs)
    finally:
        kernels.set_impl("auto")


def test_compile_fullgraph_cpu():
    x, w_fc, offs = _inputs(24, 32, 64, _routed_sizes(22, 8, 5), torch.float32, 5)
    w_proj = torch.randn(8, 64, 32) / 8
    f = lambda x, offs: kernels.moe_grouped_mm(kernels.moe_grouped_mm(x, w_fc, offs, gelu=True), w_proj, offs) * 2
    torch._dynamo.reset()
    cf = torch.compile(f, fullgraph=True)  # raises on any graph break
    _close(cf(x, offs), f(x, offs), torch.float32, "compiled")
    offs2 = torch.tensor(_routed_sizes(24, 8, 6)).cumsum(0).to(torch.int32)  # new routing, same graph
    _close(cf(x, offs2), f(x, offs2), torch.float32, "compiled, new routing")
    with pytest.raises(RuntimeError, match="inference only"):  # still refused when compiled
        cf(x.clone().requires_grad_(True), offs)


def _gather_inputs(T, x_div, K, N, G, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, K, generator=g).to(dtype)
    w = (torch.randn(G, K, N, generator=g) / K ** 0.5).to(dtype)
    ids = torch.randint(0, G, (T * x_div,), generator=g)
    if ids.numel() > 2:
        ids[1] = ids[0]  # two rows of one expert
    return x, w, ids


def test_gather_reference_is_rowwise_matmul():
    x, w, ids = _gather_inputs(3, 2, 20, 12, 5, torch.float64, 10)
    ref = kernels.moe_gather_mm_reference(x, w, ids, 2)
    assert ref.dtype == torch.float64 and ref.shape == (6, 12)
    for m in range(6):
        torch.testing.assert_close(ref[m], x[m // 2] @ w[ids[m]])


def test_gather_op_on_cpu_checks_and_refuses_grad():
    x, w, ids = _gather_inputs(4, 2, 32, 24, 6, torch.bfloat16, 11)
    assert torch.equal(kernels.moe_gather_mm(x, w, ids, 2), kernels.moe_gather_mm_reference(x, w, ids, 2))
    with pytest.raises(ValueError):
        kernels.moe_gather_mm(x, w, ids[:7], 2)  # rows != x rows * x_div
    with pytest.raises(ValueError):
        kernels.moe_gather_mm(x, w.float(), ids, 2)  # dtype mismatch
    with pytest.raises(ValueError):
        kernels.moe_gather_mm(x[:, :31], w, ids, 2)  # K mismatch
    with pytest.raises(RuntimeError, match="inference only"):
        kernels.moe_gather_mm(x.float(), torch.nn.Parameter(w.float()), ids, 2)


def test_gather_splits():
    pytest.importorskip("triton")
    cfg = kernels.MOE_GATHER_CONFIG
    for M, N, K in ((2, 4864, 2048), (8, 2048, 4864), (1, 64, 100), (512, 4864, 2048)):
        n, per = kernels._moe_gather_splits(M, N, K)
        assert per % cfg["block_k"] == 0 and (n - 1) * per < K <= n * per  # every K covered, no empty split
    assert kernels._moe_gather_splits(512, 4864, 2048)[0] == 1  # many rows fill the GPU alone


def _decode_inputs(N, D, Fh, E, dtype, seed):
    """x (N, D), router_w (E, D), w_fc (E, D, Fh), w_proj (E, Fh, D) at unit-scale activations."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(N, D, generator=g).to(dtype), torch.randn(E, D, generator=g).to(dtype),
            (torch.randn(E, D, Fh, generator=g) / D ** 0.5).to(dtype),
            (torch.randn(E, Fh, D, generator=g) / Fh ** 0.5).to(dtype))


def test_decode_reference_is_the_layer():
    """moe_decode_reference against an independent per-token computation in float64 (softmax, top-k by sort,
    renormalisation, each chosen expert's MLP), with and without renormalisation, top-1, top-2 and top-3."""
    for k, renorm in ((2, True), (2, False), (1, True), (3, False)):
        x, rw, wf, wp = _decode_inputs(5, 24, 40, 6, torch.float64, 12 + k)
        ref = kernels.moe_decode_reference(x, rw, wf, wp, k, renorm)
        assert ref.dtype == torch.float64 and ref.shape == (5, 24)
        for t in range(5):
            p = torch.softmax(x[t] @ rw.T, dim=0)
            order = p.argsort(descending=True)[:k]
            w = p[order] / (p[order].sum() if renorm else 1.0)
            want = sum(w[j] * (F.gelu(x[t] @ wf[e]) @ wp[e]) for j, e in enumerate(order.tolist()))
            torch.testing.assert_close(ref[t], want)


def test_decode_op_on_cpu_checks_and_refuses_grad():
    x, rw, wf, wp = _decode_inputs(4, 32, 24, 6, torch.bfloat16, 13)
    got = kernels.moe_decode(x, rw, wf, wp, 2, True)  # in x's dtype, rounded from the fp32 sums
    ref = kernels.moe_decode_reference(x, rw, wf, wp, 2, True)
    assert got.dtype == x.dtype and torch.equal(got, ref.to(x.dtype))
    r = torch.randn(4, 32).bfloat16()  # a residual stream: added to the fp32 sums, rounded once
    assert torch.equal(kernels.moe_decode(x, rw, wf, wp, 2, True, residual=r), (ref + r.float()).to(x.dtype))
    with pytest.raises(ValueError, match="residual"):
        kernels.moe_decode(x, rw, wf, wp, 2, True, residual=r[:3])
    with pytest.raises(ValueError, match="residual"):
        kernels.moe_decode(x, rw, wf, wp, 2, True, residual=r.float())
    with pytest.raises(ValueError, match="bad shapes"):
        kernels.moe_decode(x[:, :31], rw, wf, wp, 2, True)  # D mismatch
    with pytest.raises(ValueError, match="bad shapes"):
        kernels.moe_decode(x, rw[:5], wf, wp, 2, True)  # router and experts disagree on E
    with pytest.raises(ValueError, match="share a dtype"):
        kernels.moe_decode(x, rw, wf.float(), wp, 2, True)
    with pytest.raises(ValueError, match="top_k"):
        kernels.moe_decode(x, rw, wf, wp, 7, True)
    xs = torch.randn(kernels.MOE_DECODE_MAX_SLOTS // 2 + 1, 32).bfloat16()
    with pytest.raises(ValueError, match="MOE_DECODE_MAX_SLOTS"):
        kernels.moe_decode(xs, rw, wf, wp, 2, True)
    with pytest.raises(RuntimeError, match="inference only"):
        kernels.moe_decode(x.float(), rw.float(), torch.nn.Parameter(wf.float()), wp.float(), 2, True)


def test_decode_compile_fullgraph_cpu():
    x, rw, wf, wp = _decode_inputs(3, 32, 48, 5, torch.float32, 14)
    f = lambda x: kernels.moe_decode(x, rw, wf, wp, 2, True) * 2
    torch._dynamo.reset()
    cf = torch.compile(f, fullgraph=True)  # raises on any graph break
    _close(cf(x), f(x), torch.float32, "compiled")


def test_decode_splits():
    pytest.importorskip("triton")
    cfg = kernels.MOE_DECODE_CONFIG
    for M, N, K in ((2, 4864, 2048), (2, 2048, 4864), (16, 2048, 4864), (1, 64, 100), (32, 4864, 2048)):
        n, per = kernels._moe_decode_splits(M, N, K, cfg["block_n"])
        assert per % cfg["block_k"] == 0 and (n - 1) * per < K <= n * per  # every K covered, no empty split
        assert n == 1 or per >= cfg["block_k"] * cfg["min_k_steps"]


def test_decode_atomic_rule():
    """proj's atomic adds are taken by default and never in deterministic mode (set_deterministic or
    torch.use_deterministic_algorithms), where the last-arriving program finishes each unit."""
    pytest.importorskip("triton")
    assert kernels.MOE_DECODE_CONFIG["proj_atomic"] and kernels._moe_decode_atomic()
    kernels.set_deterministic(True)
    try:
        assert not kernels._moe_decode_atomic()
    finally:
        kernels.set_deterministic(False)
    torch.use_deterministic_algorithms(True)
    try:
        assert not kernels._moe_decode_atomic()
    finally:
        torch.use_deterministic_algorithms(False)
    assert kernels._moe_decode_atomic()


def test_decode_kernels_compile_for_sm90():
    """moe_decode's kernels as the GPU runs them (tl.dot in bf16 and fp32, fc and proj, one and several K splits,
    top-1 and top-2, with and without PDL, and the PDL cast): they must compile for sm_90, which the interpreter does
    not check (nor run PDL at all)."""
    pytest.importorskip("triton")
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("the kernels are interpreter functions in this process")
    for dt in ("bf16", "fp32"):
        for pdl in (False, True):  # PDL: the launches chained (gdc wait / launch-dependents), which the interpreter lacks
            compile_sm90(kernels._moe_logits_kernel, {"x_ptr": f"*{dt}", "rw_ptr": f"*{dt}", "logits_ptr": "*fp32",
                                                      "cnt_ptr": "*i32", "n_cnt": "i32", "out_ptr": "*fp32",
                                                      "n_out": "i32", "E": "i32", "D": "i32", "sxm": "i32",
                                                      "sxd": "i32", "swe": "i32", "swd": "i32"},
                         {"BLOCK_D": 2048, "BLOCK_Z": 128, "PDL": pdl})
        for res in (False, True):  # the PDL chain's last launch, with and without the residual add
            compile_sm90(kernels._moe_cast_kernel, {"src_ptr": "*fp32", "res_ptr": f"*{dt}", "dst_ptr": f"*{dt}",
                                                    "n": "i32"}, {"RES": res, "BLOCK": 1024})
        mm = {"w_ptr": f"*{dt}", "logits_ptr": "*fp32", "part_ptr": "*fp32", "cnt_ptr": "*i32", "M": "i32",
              "N": "i32", "K": "i32", "E": "i32", "k_per_split": "i32", "sxm": "i32", "sxk": "i32", "swg": "i32",
              "swk": "i32", "swn": "i32"}
        # (FC, N_SPLITS, ATOMIC, TOP_K, PDL): fc unsplit (GeLU at once) and split (the last arriver's sum); proj with
        # the last-arriver finish or atomic adds, one and several splits, top-1 and top-2; with PDL as at 1 token
        for fc, splits, atomic, top_k, pdl in ((True, 1, False, 2, False), (True, 3, False, 2, False),
                                               (False, 1, False, 2, False), (False, 3, False, 2, False),
                                               (False, 2, False, 1, False), (False, 1, True, 2, False),
                                               (False, 5, True, 2, False), (False, 2, True, 1, False),
                                               (True, 2, False, 2, True), (False, 5, True, 2, True),
                                               (False, 5, False, 2, True)):
            compile_sm90(kernels._moe_decode_mm_kernel, {**mm, "x_ptr": f"*{dt}", "out_ptr": f"*{dt}" if fc else "*fp32"},
                         {"TOP_K": top_k, "RENORM": True, "FC": fc, "N_SPLITS": splits, "ATOMIC": atomic,
                          "DOT_FP32": dt == "fp32", "BLOCK_M": 16, "BLOCK_N": 64, "BLOCK_K": 64, "BLOCK_E": 64,
                          "PDL": pdl},
                         num_stages=4)


@pytest.mark.skipif(sys.platform == "win32", reason="subprocess with env")
def test_triton_interpreter_against_reference():
    pytest.importorskip("triton")
    run_interpreter_checks(__file__)


# --------------------------------------------------------------------------------------------------
# The interpreter checks (run in the subprocess)

CASES = [  # M, K, N, group sizes, MOE_CONFIG overrides
    (100, 96, 200, [100], {}),                         # G = 1, 100 rows > BLOCK_M = 64: two row tiles
    (75, 96, 200, [70], {}),                           # G = 1, 5 rows past offs[-1]
    (40, 96, 200, [0, 30, 0, 7, 0], {}),               # first and last empty, 30 rows > BLOCK_M = 16, 3 past
    (40, 96, 200, [9, 0, 20, 3, 5], {}),               # first and last full, 20 rows > BLOCK_M = 16, 3 past
    (40, 100, 72, [0, 30, 0, 7, 0], {"block_k": 32, "block_n": 32}),  # four K steps, a masked K tail
    (24, 96, 200, _routed_sizes(24, 34, 7), {}),       # decode: 12 tokens x top-2 over 34 experts
    (30, 96, 200, _routed_sizes(26, 34, 8), {}),       # and 4 rows past offs[-1]
]


def _interp_main() -> None:
    assert os.environ.get("TRITON_INTERPRET") == "1"
    kernels.set_impl("triton")
    kernels.POISON_OUTPUTS = True  # the output starts as NaN: an element the kernel leaves unwritten fails
    defaults = dict(kernels.MOE_CONFIG)
    for i, (M, K, N, sizes, cfg) in enumerate(CASES):
        kernels.MOE_CONFIG.update(defaults, **cfg)
        for dtype in (torch.float32, torch.bfloat16):
            x, w, offs = _inputs(M, K, N, sizes, dtype, 100 + i)
            n = int(offs[-1])
            for gelu in (False, True):
                tag = f"case {i} M={M} K={K} N={N} G={len(sizes)} {cfg} {dtype} gelu={gelu}"
                out = kernels._moe_grouped_mm_triton(x, w, offs, gelu)
                _close(out, kernels.moe_grouped_mm_reference(x, w, offs, gelu), dtype, f"{tag}: vs reference")
                assert (out[n:] == 0).all(), f"{tag}: rows past offs[-1] not zero"
                if K % 8 == 0:  # torch._grouped_mm wants 16-byte strides
                    _close(out[:n], _grouped_mm(x, w, offs, gelu), dtype, f"{tag}: vs torch._grouped_mm")
        print(f"interp: case {i} ok", flush=True)
    kernels.MOE_CONFIG.update(defaults)
    # through the op (the path model.py takes), with int64 offsets and a strided (transposed) w
    x, w, offs = _inputs(30, 96, 200, _routed_sizes(26, 34, 9), torch.bfloat16, 9)
    wt = w.transpose(1, 2).contiguous().transpose(1, 2)  # same values, N-major strides
    with torch.no_grad():
        out = kernels.moe_grouped_mm(x, wt, offs.long(), gelu=True)
    _close(out, kernels.moe_grouped_mm_reference(x, w, offs, True), torch.bfloat16, "op, int64 offs, strided w")
    # moe_gather_mm: odd sizes, masked K and N tails, one and several K splits, x_div 1 and 2, shared experts
    gdefaults = dict(kernels.MOE_GATHER_CONFIG)
    for i, (T, x_div, K, N, G, cfg) in enumerate([(1, 2, 96, 200, 34, {}), (3, 2, 100, 72, 5, {"block_k": 32}),
                                                   (5, 1, 70, 33, 3, {"block_n": 16, "block_k": 16}),
                                                   (2, 2, 64, 40, 4, {"programs_per_sm": 1, "sms": 1}),
                                                   (3, 2, 100, 72, 5, {"block_k": 32, "reduce_once": False}),
                                                   (1, 2, 70, 33, 34, {"block_n": 16, "block_k": 16, "reduce_once": False})]):
        kernels.MOE_GATHER_CONFIG.update(gdefaults, **cfg)
        for dtype in (torch.float32, torch.bfloat16):
            x, w, ids = _gather_inputs(T, x_div, K, N, G, dtype, 200 + i)
            tag = f"gather case {i} T={T} x_div={x_div} K={K} N={N} {cfg} {dtype} splits {kernels._moe_gather_splits(T * x_div, N, K)}"
            ref = kernels.moe_gather_mm_reference(x, w, ids, x_div)
            _close(kernels._moe_gather_mm_triton(x, w, ids, x_div), ref, torch.float32, tag)  # fp32 sums either way
            with torch.no_grad():  # through the op, strided w
                wt = w.transpose(1, 2).contiguous().transpose(1, 2)
                _close(kernels.moe_gather_mm(x, wt, ids.int(), x_div), ref, torch.float32, tag + " op")
        print(f"interp: {tag} ok", flush=True)
    kernels.MOE_GATHER_CONFIG.update(gdefaults)
    # moe_decode, the fused layer: one and several K splits in each projection (min_k_steps 1, few SMs), masked
    # K and N tails, experts shared by several tokens (E small) or not, top-1/2/3, renormalised or not, 1 to 16
    # tokens (16 x top-2 = MOE_DECODE_MAX_SLOTS, one full tile)
    ddefaults = dict(kernels.MOE_DECODE_CONFIG)
    for i, (N, k, D, Fh, E, renorm, cfg) in enumerate([
            (1, 2, 96, 200, 34, True, {}),
            (3, 2, 100, 72, 5, False, {"block_k": 32, "block_n": 32, "fc_block_n": 64, "min_k_steps": 1}),
            (5, 1, 70, 33, 3, True, {"block_k": 16, "block_n": 16, "fc_block_n": 16, "min_k_steps": 2}),
            (2, 3, 64, 40, 4, True, {"block_k": 16, "min_k_steps": 1, "programs_per_sm": 1, "sms": 1}),
            (16, 2, 48, 40, 34, True, {"block_k": 16, "block_n": 32, "fc_block_n": 64, "min_k_steps": 1, "sms": 16}),
            (4, 2, 40, 24, 2, True, {"block_k": 16, "block_n": 16, "fc_block_n": 16, "min_k_steps": 1, "sms": 64})]):
        kernels.MOE_DECODE_CONFIG.update(ddefaults, **cfg)
        for dtype in (torch.float32, torch.bfloat16)[1 if N == 16 else 0:]:  # the interpreter is slow at 32 slots
            x, rw, wf, wp = _decode_inputs(N, D, Fh, E, dtype, 300 + i)
            c = kernels.MOE_DECODE_CONFIG
            tag = (f"decode case {i} N={N} k={k} D={D} F={Fh} E={E} {cfg} {dtype} splits "
                   f"{kernels._moe_decode_splits(N * k, Fh, D, c['fc_block_n'])[0]}/"
                   f"{kernels._moe_decode_splits(N * k, D, Fh, c['block_n'])[0]}")
            ref = kernels.moe_decode_reference(x, rw, wf, wp, k, renorm).to(dtype)
            for atomic in (True, False):  # proj's output by atomic adds, or by the last-arriving program
                kernels.MOE_DECODE_CONFIG["proj_atomic"] = atomic
                with torch.no_grad():  # through the op, the expert weights strided
                    wft, wpt = (w.transpose(1, 2).contiguous().transpose(1, 2) for w in (wf, wp))
                    _close(kernels.moe_decode(x, rw, wft, wpt, k, renorm), ref, dtype, f"{tag} atomic={atomic}")
        print(f"interp: {tag} ok", flush=True)
    kernels.MOE_DECODE_CONFIG.update(ddefaults)
    # ties: experts 1 and 3 share a router row, so at top-1 they tie for some tokens; the kernels take the first
    # index (expert 1), whose MLP the output must then be
    x, rw, wf, wp = _decode_inputs(6, 32, 16, 5, torch.float32, 400)
    rw[3] = rw[1]
    rw[1] += 4 * x.mean(0) / x.mean(0).norm()  # make 1 (and so 3) the likely top choice
    rw[3] = rw[1]
    with torch.no_grad():
        got = kernels.moe_decode(x, rw, wf, wp, 1, True)
    top = (x @ rw.T).argmax(-1)
    tied = [t for t in range(6) if int(top[t]) in (1, 3)]
    assert tied, "the tie case did not arise"
    for t in tied:
        _close(got[t], F.gelu(x[t] @ wf[1]) @ wp[1], torch.float32, f"tie, token {t}")
    # a NaN token: its output is NaN (as the unfused path's), its routing stays within the experts (no read
    # past the weights), and the other tokens are unaffected
    x, rw, wf, wp = _decode_inputs(3, 32, 16, 5, torch.float32, 401)
    x[1, 4] = float("nan")
    with torch.no_grad():
        got = kernels.moe_decode(x, rw, wf, wp, 2, True)
    ref = kernels.moe_decode_reference(x, rw, wf, wp, 2, True)
    assert torch.isnan(got[1]).all()
    _close(got[[0, 2]], ref[[0, 2]], torch.float32, "the tokens beside a NaN token")
    print("interp: all cases ok", flush=True)


if __name__ == "__main__":
    if sys.argv[1:] == ["--interp"]:
        _interp_main()
    else:
        sys.exit(pytest.main([__file__, "-q"]))
