"""Tests for the split-KV decoding attention in kernels.py (decode_attention): the reference against
F.scaled_dot_product_attention, the Triton kernels (under the interpreter, on CPU) against the reference,
the custom op on CPU, the split count, its refusal of autograd and bad inputs, and torch.compile(fullgraph=True).

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
from kernel_checks import close as _close, run_interpreter_checks



def _inputs(B, KV, rep, T, S, D, dtype, seed):
    """q (B, H, T, D) as the model makes it (a transpose of (B, T, H, D)); k, v (B, KV, S, D) as batch-slices
    of bigger buffers whose extra batch row is NaN (a read past the slice shows), v with the layout of a
    (B, S, KV, D) buffer: other strides than k's."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, KV * rep, D, generator=g).to(dtype).transpose(1, 2)
    k_buf = torch.randn(B + 1, KV, S, D, generator=g).to(dtype)
    v_buf = torch.randn(B + 1, S, KV, D, generator=g).to(dtype).transpose(1, 2)
    k_buf[B] = float("nan")
    v_buf[B] = float("nan")
    return q, k_buf[:B], v_buf[:B]


def _sdpa(q, k, v, input_pos):
    """torch's attention with the decode mask: query t sees positions 0 .. input_pos[t]."""
    allowed = torch.arange(k.shape[2]) <= input_pos[:, None]  # (T, S)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, enable_gqa=True)


# --------------------------------------------------------------------------------------------------
# In-process tests (reference, custom op on CPU, split count, checks, compile)

def test_reference_matches_sdpa_float64():
    for B, KV, rep, T, S, D, pos in [(2, 2, 1, 1, 45, 16, [0]), (2, 2, 2, 1, 45, 16, [44]), (1, 2, 8, 1, 130, 64, [70]),
                                     (2, 1, 8, 3, 45, 16, [20, 21, 22]), (2, 2, 2, 3, 130, 64, [129, 0, 64])]:
        q, k, v = _inputs(B, KV, rep, T, S, D, torch.float64, 0)
        pos = torch.tensor(pos)
        ref = kernels.decode_attention_reference(q, k, v, pos)
        _close(ref, _sdpa(q, k, v, pos), torch.float64, f"reference vs sdpa B={B} KV={KV} rep={rep} T={T} pos={pos}")
        # and against the GQA pairing spelled out: head h reads KV head h // rep
        kr, vr = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        _close(ref, F.scaled_dot_product_attention(q, kr, vr, attn_mask=torch.arange(S) <= pos[:, None]),
               torch.float64, "reference vs sdpa on repeated heads")


def test_op_on_cpu_is_reference():
    q, k, v = _inputs(2, 2, 8, 3, 45, 16, torch.bfloat16, 1)
    pos = torch.tensor([10, 11, 12])
    assert torch.equal(kernels.decode_attention(q, k, v, pos), kernels.decode_attention_reference(q, k, v, pos))


def test_splits(monkeypatch):
    split = kernels._decode_attn_splits
    monkeypatch.setitem(kernels.DECODE_ATTN_CONFIG, "programs_per_sm", 4)  # the logic, not the tuned default
    assert split(1, 2, 2048, 64) == 32        # 264 wanted for 4 x 132 programs, capped at 2048 / 64 tiles
    assert split(8, 2, 2048, 64) == 32        # 33 -> 32
    assert split(64, 8, 2048, 64) == 2        # ceil(528 / 512)
    assert split(128, 8, 2048, 64) == 1       # the batch alone fills the GPU
    assert split(2, 2, 130, 64) == 3          # one split per tile
    assert split(1, 1, 1, 64) == 1
    monkeypatch.setitem(kernels.DECODE_ATTN_CONFIG, "max_splits", 8)
    assert split(1, 2, 2048, 64) == 8
    monkeypatch.setitem(kernels.DECODE_ATTN_CONFIG, "splits", 5)  # forced, over max_splits
    assert split(128, 8, 2048, 64) == 5
    assert split(2, 2, 130, 64) == 3          # but never more than the tiles


def test_block_s(monkeypatch):
    block_s = kernels._decode_attn_block_s    # (BLOCK_M, D, itemsize)
    monkeypatch.setitem(kernels.DECODE_ATTN_CONFIG, "stages", 3)  # the estimates below are for 3 stages
    assert block_s(16, 128, 2) == 64          # decode, bf16: the configured tile
    assert block_s(128, 128, 2) == 64
    assert block_s(32, 256, 2) == 64
    assert block_s(64, 256, 2) == 32          # 224 KiB at 64 (measured; the limit is 227), 128 KiB at 32
    assert block_s(128, 256, 2) == 16         # 256 KiB at 64
    assert block_s(16, 128, 4) == 64
    assert block_s(128, 256, 4) == 16         # no less than 16 (tl.dot), although the estimate is over


def test_requires_grad_raises_unless_no_grad():
    q, k, v = _inputs(1, 2, 2, 1, 45, 16, torch.float32, 2)
    pos = torch.tensor([7])
    for i in range(3):
        args = [q, k, v]
        args[i] = args[i].clone().requires_grad_(True)
        with pytest.raises(RuntimeError, match="inference only"):
            kernels.decode_attention(*args, pos)
    with torch.no_grad():
        out = kernels.decode_attention(*args, pos)
    with torch.inference_mode():
        assert torch.equal(kernels.decode_attention(*args, pos), out)


def test_bad_inputs_raise():
    q, k, v = _inputs(2, 2, 2, 1, 45, 16, torch.float32, 3)
    pos = torch.tensor([7])
    bad = {
        "head dim not a power of two": (q[..., :12], k[..., :12], v[..., :12], pos),
        "head dim < 16": (q[..., :8], k[..., :8], v[..., :8], pos),
        "head dim > 256": (q.repeat(1, 1, 1, 32), k.repeat(1, 1, 1, 32), v.repeat(1, 1, 1, 32), pos),
        "k, v last dim not contiguous": (q, k.transpose(2, 3).contiguous().transpose(2, 3)[:, :, :16], v[:, :, :16],
                                         pos),
        "dtype mismatch": (q, k.bfloat16(), v.bfloat16(), pos),
        "float64": (q.double(), k.double(), v.double(), pos),
        "H not a multiple of KV": (q[:, :3], k, v, pos),
        "k, v shapes differ": (q, k, v[:, :, :40], pos),
        "batch mismatch": (q[:1], k, v, pos),
        "one position per query token": (q, k, v, torch.tensor([6, 7])),
        "float positions": (q, k, v, pos.float()),
        "rep * T > 128 rows": (torch.randn(1, 16, 9, 16), torch.randn(1, 1, 45, 16), torch.randn(1, 1, 45, 16),
                               torch.arange(9)),
    }
    for what, args in bad.items():
        with pytest.raises(ValueError):
            kernels.decode_attention(*args)
            pytest.fail(f"no ValueError for {what}")


def test_triton_on_cpu_without_interpreter_raises():
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("interpreter is on in this process")
    pytest.importorskip("triton")
    q, k, v = _inputs(1, 2, 2, 1, 45, 16, torch.float32, 4)
    kernels.set_impl("triton")
    try:
        with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
            kernels.decode_attention(q, k, v, torch.tensor([7]))
    finally:
        kernels.set_impl("auto")


def test_compile_fullgraph_cpu():
    q, k, v = _inputs(2, 2, 4, 1, 45, 16, torch.float32, 5)
    f = lambda q, k, v, pos: kernels.decode_attention(q * 2, k, v, pos).sum(dim=1)
    torch._dynamo.reset()
    cf = torch.compile(f, fullgraph=True)  # raises on any graph break
    for p in (3, 44):  # a new position, same graph
        pos = torch.tensor([p])
        with torch.no_grad():
            _close(cf(q, k, v, pos), f(q, k, v, pos), torch.float32, f"compiled, position {p}")
    with pytest.raises(RuntimeError, match="inference only"):  # still refused when compiled
        cf(q.clone().requires_grad_(True), k, v, pos)


@pytest.mark.skipif(sys.platform == "win32", reason="subprocess with env")
def test_triton_interpreter_against_reference():
    pytest.importorskip("triton")
    run_interpreter_checks(__file__)


# --------------------------------------------------------------------------------------------------
# The interpreter checks (run in the subprocess)

def _positions(T, S):
    """Query positions to try: the first, a middle and the last position (T = 1); consecutive at the
    start and at the end, and out of order with gaps (T = 3)."""
    if T == 1:
        return [[0], [S // 2], [S - 1]]
    return [[0, 1, 2], [S - 3, S - 2, S - 1], [S - 1, 0, S // 2]]


CASES = [  # B, KV, D, rep, T, S, block_s: S = 45 in 16-tiles (3), S = 130 in 32-tiles (5: shares of 1-2 tiles)
    (B, KV, D, rep, T, S, 16 if S == 45 else 32)
    for D, S in ((16, 45), (64, 130)) for rep in (1, 2, 8) for T in (1, 3)
    for B, KV in [(2, 2) if rep < 8 else (2, 1)]
]


def _interp_main() -> None:
    assert os.environ.get("TRITON_INTERPRET") == "1"
    kernels.set_impl("triton")
    kernels.POISON_OUTPUTS = True  # output and workspaces start as NaN: an element left (or read) unwritten fails
    cfg = kernels.DECODE_ATTN_CONFIG
    defaults = dict(cfg)
    for i, (B, KV, D, rep, T, S, block_s) in enumerate(CASES):
        cfg.update(defaults, block_s=block_s)
        assert kernels._decode_attn_splits(B, KV, S, block_s) == -(-S // block_s) > 1, "the automatic choice splits"
        for dtype in (torch.float32, torch.bfloat16):
            q, k, v = _inputs(B, KV, rep, T, S, D, dtype, 100 + i)
            positions = _positions(T, S)
            if dtype == torch.bfloat16:  # (time) only the casts differ from fp32 in the interpreter: one of them
                positions = [positions[i % 3]]
            for j, pos in enumerate(positions):
                splits = (1, 3, None)[(i + j) % 3]  # forced to one, to three, or automatic (one per tile)
                cfg["splits"] = splits
                pos = torch.tensor(pos)
                tag = f"case {i} B={B} KV={KV} D={D} rep={rep} T={T} S={S} {dtype} pos={pos.tolist()} splits={splits}"
                out = kernels._decode_attention_triton(q, k, v, pos)
                _close(out, kernels.decode_attention_reference(q, k, v, pos), dtype, tag)
        print(f"interp: case {i} ok", flush=True)
    # the early exit: NaN past the last position read must not reach the output. 9 tiles of 16; position 42
    # ends in tile 2: with 3 splits the first ends partly past it and the others read nothing
    cfg.update(defaults, block_s=16)
    for T, pos in ((1, [42]), (3, [41, 42, 40])):
        q, k, v = _inputs(2, 2, 2, T, 130, 64, torch.float32, 7)
        pos = torch.tensor(pos)
        ref = kernels.decode_attention_reference(q, k, v, pos)
        k, v = k.clone(), v.clone()
        k[:, :, 43:] = float("nan")
        v[:, :, 43:] = float("nan")
        for splits in (1, 3, None):
            cfg["splits"] = splits
            _close(kernels._decode_attention_triton(q, k, v, pos), ref, torch.float32,
                   f"NaN past the end, T={T} splits={splits}")
    print("interp: early exit ok", flush=True)
    # D = 256: the combine takes 19 splits in two steps of BLOCK_SPLITS = 4096 / D = 16
    cfg.update(defaults, block_s=16)
    for dtype in (torch.float32, torch.bfloat16):
        q, k, v = _inputs(1, 2, 2, 1, 300, 256, dtype, 9)
        pos = torch.tensor([290])
        assert kernels._decode_attn_splits(1, 2, 300, 16) == 19
        _close(kernels._decode_attention_triton(q, k, v, pos), kernels.decode_attention_reference(q, k, v, pos), dtype,
               f"D=256, 19 splits, {dtype}")
    print("interp: two combine steps ok", flush=True)
    # a row with no allowed position (out of contract: input_pos < 0) comes out as zeros, not NaN
    cfg.update(defaults, block_s=16, splits=3)
    q, k, v = _inputs(2, 2, 2, 3, 45, 16, torch.float32, 10)
    pos = torch.tensor([-1, 5, 6])
    out = kernels._decode_attention_triton(q, k, v, pos)
    assert (out[:, :, 0] == 0).all(), "l = 0 must give zeros"
    ref = kernels.decode_attention_reference(q, k, v, pos)
    _close(out[:, :, 1:], ref[:, :, 1:], torch.float32, "beside an l = 0 row")
    print("interp: l = 0 guard ok", flush=True)
    # nothing to do: no launch (a grid of zero programs is an error)
    assert kernels._decode_attention_triton(q[:0], k[:0], v[:0], pos).shape == (0, 4, 3, 16)
    assert kernels._decode_attention_triton(q[:, :, :0], k, v, pos[:0]).shape == (2, 4, 0, 16)
    # through the op (the path model.py takes): fp16, int32 positions, the default config, a q whose last
    # dim is strided (copied), GQA with 4 query heads per KV head
    cfg.update(defaults)
    q, k, v = _inputs(2, 2, 4, 1, 130, 32, torch.float16, 8)
    qs = q.transpose(2, 3).contiguous().transpose(2, 3)
    pos = torch.tensor([100], dtype=torch.int32)
    with torch.no_grad():
        out = kernels.decode_attention(qs, k, v, pos)
    _close(out, kernels.decode_attention_reference(q, k, v, pos), torch.float16, "op, fp16, int32 positions, strided q")
    print("interp: all cases ok", flush=True)


if __name__ == "__main__":
    if sys.argv[1:] == ["--interp"]:
        _interp_main()
    else:
        sys.exit(pytest.main([__file__, "-q"]))
