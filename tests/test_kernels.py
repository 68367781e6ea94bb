"""Tests for kernels.py: the Triton lookup (under the interpreter, on CPU) against the PyTorch reference,
the reference's gradients by gradcheck, the custom op's autograd, and torch.compile(fullgraph=True).

TRITON_INTERPRET=1 must be set before triton is first imported in a process, and other test modules
import kernels (through memory.py) earlier in the same pytest run, so the interpreter checks run in a
subprocess: this file run as a script with --interp.
"""

import os
import sys

if __name__ == "__main__":  # the subprocess: set before anything imports triton
    os.environ["TRITON_INTERPRET"] = "1"

import pytest
import torch

import kernels
from kernel_checks import close as _close, compile_sm90, run_interpreter_checks



def _inputs(N, Dv, T, K, E, h, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    values = torch.randn(N, Dv, generator=g).to(dtype)
    rows = torch.randint(0, N, (T, K), generator=g)
    if K > 2:
        rows[:, 1] = rows[:, 0]  # duplicate rows within a token
    if T > 1:
        rows[T // 2:, -1] = rows[0, 0]  # and across tokens
    blocks = torch.randint(0, E, (T, K), generator=g)
    scores = torch.randn(T, K, h, generator=g).to(dtype)
    gout = torch.randn(T, E, Dv, generator=g).to(dtype)
    return values, rows, blocks, scores, gout


# --------------------------------------------------------------------------------------------------
# In-process tests (reference, custom op on CPU, compile)

def test_close_catches_nan_and_error():  # the comparison used everywhere can fail
    a = torch.ones(4)
    with pytest.raises(AssertionError):
        _close(torch.tensor([1.0, float("nan"), 1.0, 1.0]), a, torch.float32, "nan")
    with pytest.raises(AssertionError):
        _close(a * 1.01, a, torch.float32, "off")


def test_reference_gradcheck_float64():
    values, rows, blocks, scores, _ = _inputs(9, 6, 3, 5, 4, 2, torch.float64, 0)
    values.requires_grad_(True)
    scores.requires_grad_(True)
    f = lambda v, s: kernels.mem_lookup_reference(v, rows, blocks, s, 4)
    assert torch.autograd.gradcheck(f, (values, scores))


def test_backward_reference_matches_autograd():
    for E, h in ((1, 1), (4, 2)):
        values, rows, blocks, scores, gout = _inputs(11, 8, 4, 6, E, h, torch.float64, 1)
        v, s = values.clone().requires_grad_(True), scores.clone().requires_grad_(True)
        gv, gs = torch.autograd.grad(kernels.mem_lookup_reference(v, rows, blocks, s, E), (v, s), gout)
        rv, rs = kernels.mem_lookup_bwd_reference(gout, values, rows, blocks, scores, E)
        _close(rv, gv, torch.float32, "grad values")
        _close(rs, gs, torch.float32, "grad scores")


def test_op_autograd_on_cpu_matches_reference():
    values, rows, blocks, scores, gout = _inputs(13, 12, 5, 7, 4, 2, torch.float32, 2)
    v, s = values.clone().requires_grad_(True), scores.clone().requires_grad_(True)
    out = kernels.mem_lookup(v, rows, blocks, s, 4)
    _close(out, kernels.mem_lookup_reference(values, rows, blocks, scores, 4), torch.float32, "forward")
    gv, gs = torch.autograd.grad(out, (v, s), gout)
    rv, rs = kernels.mem_lookup_bwd_reference(gout, values, rows, blocks, scores, 4)
    _close(gv, rv, torch.float32, "grad values")
    _close(gs, rs, torch.float32, "grad scores")
    bv, bs = kernels.mem_lookup_backward(gout, values, rows, blocks, scores, 4)  # the benchmarks' entry point
    assert torch.equal(bv, gv) and torch.equal(bs, gs)


def test_bad_shapes_raise():
    values, rows, blocks, scores, _ = _inputs(13, 12, 5, 7, 4, 2, torch.float32, 3)
    with pytest.raises(ValueError):
        kernels.mem_lookup(values, rows, blocks[:, :3], scores, 4)
    with pytest.raises(ValueError):
        kernels.mem_lookup(values[:, :11], rows, blocks, scores, 4)  # Dv not divisible by h
    big = torch.zeros(1, 1, dtype=torch.long).expand(2 ** 16, 2 ** 15)  # 2**31 slots, no memory (stride 0)
    with pytest.raises(ValueError, match="2\\*\\*31"):
        kernels._check(values, big, big, scores[:1, :1].expand(2 ** 16, 2 ** 15, 2), 4)  # (the call would allocate)


def test_triton_on_cpu_without_interpreter_raises():
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("interpreter is on in this process")
    pytest.importorskip("triton")
    values, rows, blocks, scores, _ = _inputs(13, 12, 5, 7, 4, 2, torch.float32, 4)
    kernels.set_impl("triton")
    try:
        with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
            kernels.mem_lookup(values, rows, blocks, scores, 4)
    finally:
        kernels.set_impl("auto")


def test_compile_fullgraph_cpu():
    values, rows, blocks, scores, _ = _inputs(50, 16, 6, 8, 4, 2, torch.float32, 5)
    v, s = values.clone().requires_grad_(True), scores.clone().requires_grad_(True)
    f = lambda v, s: kernels.mem_lookup(v, rows, blocks, s, 4).square().sum()
    torch._dynamo.reset()
    cf = torch.compile(f, fullgraph=True)  # raises on any graph break
    gv, gs = torch.autograd.grad(cf(v, s), (v, s))
    rv, rs = torch.autograd.grad(f(v, s), (v, s))
    _close(gv, rv, torch.float32, "compiled grad values")
    _close(gs, rs, torch.float32, "compiled grad scores")


def test_compiled_graph_records_the_lookup_config():
    """The lookup's kernels.CONFIG, backward scheme and deterministic mode are part of the compiled graph (the ops'
    config argument): changing them recompiles, and the graphs (what torch.compile's caches key on) differ. Without
    it a cached graph ran an earlier run's kernels on the H200 (session 16)."""
    from torch._dynamo.testing import CompileCounterWithBackend
    values, rows, blocks, scores, _ = _inputs(50, 16, 6, 8, 4, 2, torch.float32, 5)
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm.code)
        return gm.forward

    counter = CompileCounterWithBackend(backend)
    torch._dynamo.reset()
    f = torch.compile(lambda v, s: kernels.mem_lookup(v, rows, blocks, s, 4), backend=counter, fullgraph=True)
    keep = dict(kernels.CONFIG)
    try:
        f(values, scores)
        f(values, scores)
        assert counter.frame_count == 1
        kernels.CONFIG["bwd_value_tile"] = not keep["bwd_value_tile"]
        f(values, scores)
        assert counter.frame_count == 2, "a lookup_config change did not recompile"
        kernels.CONFIG.update(keep)
        kernels.set_deterministic(True)
        f(values, scores)
        assert counter.frame_count == 3, "set_deterministic did not recompile"
    finally:
        kernels.set_deterministic(False)
        kernels.CONFIG.update(keep)
        torch._dynamo.reset()
    assert len(set(graphs)) == 3 and all("bwd_value_tile=" in g for g in graphs), graphs
    # the same for the inference ops, e.g. the MoE decode layer's deterministic mode (sample.py's default) and the
    # top-k kernel's configuration
    x, rw = torch.randn(3, 16), torch.randn(4, 16)
    w_fc, w_proj = torch.randn(4, 16, 24), torch.randn(4, 24, 16)
    for fn, config, key in ((lambda x: kernels.moe_decode(x, rw, w_fc, w_proj, 2, True), kernels.MOE_DECODE_CONFIG,
                             "proj_atomic"),
                            (lambda x: kernels.topk_indices(x, 3, impl="triton"), kernels.TOPK_CONFIG, "filter")):
        graphs.clear()
        counter = CompileCounterWithBackend(backend)
        torch._dynamo.reset()
        f = torch.compile(fn, backend=counter, fullgraph=True)
        keep = dict(config)
        try:
            with torch.no_grad():
                want = fn(x)
                assert torch.equal(f(x), want) and counter.frame_count == 1
                config[key] = 1 - int(keep[key])
                assert torch.equal(f(x), want) and counter.frame_count == 2, f"{key}: no recompile"
                kernels.set_deterministic(True)
                assert torch.equal(f(x), want) and counter.frame_count == 3, "set_deterministic: no recompile"
                kernels.set_deterministic(False)
                torch.use_deterministic_algorithms(True)  # is_deterministic() too
                assert torch.equal(f(x), want) and counter.frame_count == 4, "torch's deterministic mode: no recompile"
        finally:
            torch.use_deterministic_algorithms(False)
            kernels.set_deterministic(False)
            config.update(keep)
            torch._dynamo.reset()
        # every setting its own graph; torch's deterministic mode (graph 4) is in the key too, not only in Dynamo's
        # guards: its graph differs from graph 2's, the same settings without it
        assert len(set(graphs[:3])) == 3 and graphs[3] != graphs[1], f"{key}: graphs {graphs}"


def test_topk_indices_torch_path_and_checks():
    x = torch.randn(3, 4, 50)
    assert torch.equal(kernels.topk_indices(x, 7), x.topk(7, dim=-1).indices)
    with pytest.raises(ValueError):
        kernels.topk_indices(x, 51)
    with pytest.raises(ValueError):
        kernels.topk_indices(x, 0)
    with pytest.raises(ValueError, match="impl"):
        kernels.topk_indices(x, 3, impl="bogus")
    torch._dynamo.reset()  # the custom op: on CPU tensors its reference, also under compile
    f = torch.compile(lambda x: kernels.topk_indices(x, 7, impl="triton"), fullgraph=True)
    assert torch.equal(f(x), x.topk(7, dim=-1).indices)


def test_topk_auto_picks_the_measured_winner():
    """mem_topk="auto" (the memory layers' default): the kernels on CUDA where they were measured faster
    (docs/KERNELS.md): the filter kernel for k up to half its groups, any length; for larger k the register kernel on
    short or few rows; torch.topk for larger k on many long rows and on the CPU."""
    pick = lambda shape, k, cuda, dtype=torch.bfloat16: kernels.topk_auto_impl(shape, k, dtype, cuda)
    assert pick((1, 2, 2, 3576), 42, True) == "triton"  # UltraMem-1.6B decoding at batch 1: rows and columns at once
    assert pick((2048, 2, 2, 3576), 42, True) == "triton"  # and at batch 2,048
    assert pick((65536, 2, 2200), 80, True) == "triton"  # the 151M's training rows and its 80 x 80 grid
    assert pick((65536, 2, 6400), 80, True, torch.float32) == "triton"
    assert pick((4, 20000), 80, True) == "triton"  # the filter kernel takes any length
    big = kernels.TOPK_CONFIG["groups"] // 2 + 1  # above half the filter's groups: the register kernel's rules
    assert pick((2048, 2, 2, 3576), big, True) == "torch"
    assert pick((1024, 2, 2, 3576), big, True) == "triton"  # at most 4,096 rows
    assert pick((65536, 2, 1100), big, True) == "triton"  # rows of at most 1,536
    assert pick((65536, 2, 2200), big, True) == "torch"
    assert pick((4, 20000), big, True) == "torch"  # longer than the register kernel takes
    assert pick((4, 1000), 80, True, torch.float64) == "torch"  # a dtype they do not take
    assert pick((1, 2, 2, 3576), 42, False) == "torch"  # CPU
    keep = dict(kernels.TOPK_CONFIG)
    try:
        kernels.TOPK_CONFIG["filter"] = 0
        assert pick((65536, 2, 2200), 80, True) == "torch" and pick((65536, 2, 1100), 80, True) == "triton"
    finally:
        kernels.TOPK_CONFIG.update(keep)
    x = torch.randn(4, 3, 50)  # on the CPU "auto" is torch.topk, sorted or not
    assert torch.equal(kernels.topk_indices(x, 7, impl="auto"), x.topk(7, dim=-1).indices)
    assert torch.equal(kernels.topk_indices(x, 7, False).sort(-1).values, x.topk(7, dim=-1).indices.sort(-1).values)


@pytest.mark.parametrize("S", [1, 3, 8, 16, 100])
def test_bwd_work_covers_every_slot_once(S):
    """The sorted backward's work per program (kernels._bwd_work_reference, the PyTorch version of the kernels'
    _bwd_work; the interpreter tests run the kernels themselves with such S): every slot of every tile in exactly
    one program, a tile of at most S slots whole in its own program (part -1, even where it straddles a chunk
    boundary), a longer one in pieces of at most S, each a distinct scratch part below 2 C, which the combine order
    (C + c0, then c0, c0 + 1, ... for the tile's first boundary c0) visits in slot order."""
    pytest.importorskip("triton")  # triton.cdiv
    R = 4
    counts = torch.tensor([0, 5, 1, 17, 0, 0, 8, 3, 40, 2, 16, 16, 0, 33])
    toffs = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])
    NK, tiles = int(counts.sum()), len(counts)
    sorted_rows = torch.repeat_interleave(torch.arange(tiles) * R + torch.arange(tiles) % R, counts).to(torch.int32)
    work = kernels._bwd_work_reference(toffs, sorted_rows, S, R)
    C = -(-NK // S)
    assert work.shape == (tiles + C, 4) and torch.equal(work[:tiles, 0], torch.arange(tiles))
    live = work[work[:, 0] >= 0]
    assert (work[work[:, 0] < 0, 2] == work[work[:, 0] < 0, 1]).all() and (work[work[:, 0] < 0, 3] == -1).all()
    covered = torch.cat([torch.arange(a, b) for _, a, b, _ in live.tolist()]).sort().values
    assert torch.equal(covered, torch.arange(NK)), "every slot once"
    parts = []
    for tile, c in enumerate(counts.tolist()):
        mine = live[live[:, 0] == tile]
        assert ((mine[:, 1] >= toffs[tile]) & (mine[:, 2] <= toffs[tile + 1])).all()
        if c <= S:
            assert len(mine) == 1 and mine[0, 3] == -1 and mine[0, 2] - mine[0, 1] == c
            continue
        assert (mine[:, 2] - mine[:, 1] <= S).all() and (mine[:, 2] > mine[:, 1]).all() and (mine[:, 3] >= 0).all()
        c0 = int(toffs[tile]) // S + 1
        n = (int(toffs[tile + 1]) - 1) // S - int(toffs[tile]) // S  # the boundaries inside: the combine kernel's
        order = [C + c0] + list(range(c0, c0 + n))
        by_part = {int(q): (int(a), int(b)) for _, a, b, q in mine.tolist()}
        assert sorted(by_part) == sorted(order)
        spans = [by_part[q] for q in order]
        assert spans[0][0] == toffs[tile] and spans[-1][1] == toffs[tile + 1]
        assert all(x[1] == y[0] for x, y in zip(spans, spans[1:])), "pieces in slot order"
        parts += order
    assert len(set(parts)) == len(parts) and all(0 <= q < 2 * C for q in parts)


def test_lookup_kernels_compile_for_sm90():
    """The lookup's forward and sorted backward, as the GPU runs them (SPLIT=True), for every values dtype and
    the launch options (value tile, column tiles side by side, and for bf16 the scores in the one-hot operand, with
    bf16 and fp32 scores), and the top-k kernels: they must compile for sm_90 (an fp16 value tile once did not: a
    bf16 x fp16 dot in code after a constexpr return)."""
    pytest.importorskip("triton")
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("the kernels are interpreter functions in this process")
    for vdt in ("bf16", "fp16", "fp32"):
        for inner in (False, True):
            fwd = {"values_ptr": f"*{vdt}", "rows_ptr": "*i64", "blocks_ptr": "*i64", "scores_ptr": f"*{vdt}",
                   "out_ptr": f"*{vdt}", "T": "i32", "K": "i32", "Dv": "i32", "chunk": "i32", "n_ct": "i32"}
            for sdot in (False, True) if vdt == "bf16" else (False,):
                # fwd_sdot with bf16 scores (one dot) and fp32 scores (hi + lo)
                for sdt in (vdt, "fp32") if sdot else (vdt,):
                    compile_sm90(kernels._lookup_fwd_kernel, {**fwd, "scores_ptr": f"*{sdt}"},
                                 {"E": 4, "H": 2, "E_PAD": 16, "BLOCK_K": 32, "BLOCK_D": 128, "SPLIT": True,
                                  "COLS_INNER": inner, "SDOT": sdot, "TPP": 1 + inner,
                                  "XCORE": sdot and inner, "E_P": 4})
            for vtile in (False, True):
                bwd = {"gout_ptr": f"*{vdt}", "values_ptr": f"*{vdt}", "sscores_ptr": f"*{vdt}", "grows_ptr": "*i32",
                       "srows_ptr": "*i32", "toffs_ptr": "*i64", "gvalues_ptr": f"*{vdt}", "scratch_ptr": "*fp32",
                       "gs_part_ptr": "*fp32", "N": "i32", "NK": "i32", "Dv": "i32", "chunk": "i32", "n_ct": "i32",
                       "tiles": "i32", "S": "i32", "C": "i32"}
                for sdot in (False, True) if vdt == "bf16" else (False,):
                    for sdt in (vdt, "fp32") if sdot else (vdt,):  # bwd_sdot with bf16 and fp32 scores
                        # GS False: without the score gradients (bwd_split_scores, never with the value tile)
                        for gs in (True, False) if not vtile else (True,):
                            compile_sm90(kernels._lookup_bwd_sorted_kernel, {**bwd, "sscores_ptr": f"*{sdt}"},
                                         {"H": 2, "R": 16, "BLOCK_I": 32, "BLOCK_D": 128, "SPLIT": True,
                                          "SKIP_EMPTY": False, "VTILE": vtile, "V16": vdt != "fp32",
                                          "COLS_INNER": inner, "SDOT": sdot, "CARRY": sdot, "GS": gs})
            # bwd_split_scores: the score gradients' own kernel
            compile_sm90(kernels._lookup_bwd_scores_kernel,
                         {"gout_ptr": f"*{vdt}", "values_ptr": f"*{vdt}", "rows_ptr": "*i64", "blocks_ptr": "*i64",
                          "gscores_ptr": "*fp32", "K": "i32", "Dv": "i32", "chunk": "i32"},
                         {"E": 4, "H": 2, "H_P": 2, "BLOCK_K": 16, "BLOCK_D": 128, "N_CHUNKS": 3 + inner})
            # bwd_max_slots: the split tiles' pieces added
            compile_sm90(kernels._bwd_combine_kernel, {"scratch_ptr": "*fp32", "srows_ptr": "*i32",
                                                       "toffs_ptr": "*i64", "gvalues_ptr": f"*{vdt}", "N": "i32",
                                                       "NK": "i32", "Dv": "i32", "S": "i32", "C": "i32"},
                         {"R": 16 + 16 * inner, "BLOCK_D": 128})
            # bwd_prep: the per-slot inputs in row order
            compile_sm90(kernels._bwd_prep_kernel,
                         {"perm_ptr": "*i64", "blocks_ptr": "*i64", "scores_ptr": f"*{vdt}", "grows_ptr": "*i32",
                          "sscores_ptr": f"*{vdt}", "NK": "i32", "K": "i32"},
                         {"E": 4, "H": 2 - inner, "H_P": 2 - inner, "BLOCK": 1024})
    # the retrieval's top-k: the filter kernel (its whole-row path included) and the register kernel, on 16-bit (bf16)
    # and 32-bit keys
    for xdt, key_bits in (("bf16", 16), ("fp32", 32), ("fp16", 32)):
        compile_sm90(kernels._topk_filter_kernel, {"x_ptr": f"*{xdt}", "out_ptr": "*i64", "scratch_ptr": "*i32",
                                                   "L": "i32", "k": "i32"},
                     {"BLOCK": 512, "GROUPS": 256, "CAP": 256, "BITS": 4, "KEY_BITS": key_bits}, num_warps=2)
        compile_sm90(kernels._topk_kernel, {"x_ptr": f"*{xdt}", "out_ptr": "*i64", "L": "i32", "k": "i32"},
                     {"BLOCK_L": 4096, "BITS": 4, "KEY_BITS": key_bits}, num_warps=8)


def test_kernel_sources_survive_inductors_copy():
    """torch.compile copies a wrap_triton kernel's source (and its helpers') into its own module inside a plain
    (not raw) triple-quoted literal (torch/_inductor/codegen/wrapper.py), where escapes are read: an escaped newline
    in an inline-PTX string became a real one there, a syntax error on the H200 (session 21). Every Triton function
    in kernels.py must come out of that literal unchanged."""
    pytest.importorskip("triton")
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("the kernels are interpreter functions in this process")
    from triton.runtime.jit import JITFunction
    jit = {name: fn for name, fn in vars(kernels).items() if isinstance(fn, JITFunction)}
    assert len(jit) > 20, "the kernels were not found"
    for name, fn in jit.items():
        ns = {}
        exec(f"copied = '''\n{fn.src}\n'''", ns)  # as the generated module reads it
        assert ns["copied"] == f"\n{fn.src}\n", f"{name}: its source changes in Inductor's copy (an escape in it?)"


def test_score_dot_is_one_dot_for_bf16_scores():
    """fwd_sdot / bwd_sdot on the GPU (SPLIT=True, which the interpreter never runs): with bf16 scores the score
    operand is exact in bf16 and takes one tensor-core dot per slot block, with fp32 scores two (hi + lo); the
    per-column paths two (the weighted tile's hi + lo). Counted in the kernels compiled for sm_90."""
    pytest.importorskip("triton")
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("the kernels are interpreter functions in this process")
    dots = lambda k: k.asm["ttir"].count("tt.dot ")
    fwd = {"values_ptr": "*bf16", "rows_ptr": "*i64", "blocks_ptr": "*i64", "out_ptr": "*bf16", "T": "i32", "K": "i32",
           "Dv": "i32", "chunk": "i32", "n_ct": "i32"}
    bwd = {"gout_ptr": "*bf16", "values_ptr": "*bf16", "grows_ptr": "*i32", "srows_ptr": "*i32", "toffs_ptr": "*i64",
           "gvalues_ptr": "*bf16", "scratch_ptr": "*fp32", "gs_part_ptr": "*fp32", "N": "i32", "NK": "i32", "Dv": "i32",
           "chunk": "i32", "n_ct": "i32", "tiles": "i32", "S": "i32", "C": "i32"}
    for sdot, sdt, want in ((True, "bf16", 1), (True, "fp32", 2), (False, "bf16", 2)):
        for xcore in (False, True) if sdot else (False,):  # fwd_xcore: the same dots, over (core, block) rows
            k = compile_sm90(kernels._lookup_fwd_kernel, {**fwd, "scores_ptr": f"*{sdt}"},
                             {"E": 4, "H": 2, "E_PAD": 16, "BLOCK_K": 32, "BLOCK_D": 128, "SPLIT": True,
                              "COLS_INNER": True, "SDOT": sdot, "TPP": 1, "XCORE": xcore, "E_P": 4})
            assert dots(k) == want, f"forward, sdot={sdot}, xcore={xcore}, {sdt} scores: {dots(k)} dots, want {want}"
        k = compile_sm90(kernels._lookup_bwd_sorted_kernel, {**bwd, "sscores_ptr": f"*{sdt}"},
                         {"H": 2, "R": 16, "BLOCK_I": 32, "BLOCK_D": 128, "SPLIT": True, "SKIP_EMPTY": False,
                          "VTILE": False, "V16": True, "COLS_INNER": True, "SDOT": sdot, "CARRY": sdot, "GS": True})
        assert dots(k) == want, f"backward, sdot={sdot}, {sdt} scores: {dots(k)} dots, expected {want}"


def test_backward_sdot_rule():
    """kernels._bwd_sdot: the backward's scores go into the one-hot operand for bf16 output gradients where the
    column tile lies inside one MCS core (or h is 1), and only if CONFIG["bwd_sdot"]."""
    keep = dict(kernels.CONFIG)
    try:
        bf = torch.bfloat16
        assert kernels._bwd_sdot(512, 2, 128, bf)  # shape (a): cores of 256
        assert not kernels._bwd_sdot(384, 2, 128, bf)  # shape (b): 128 columns cross its cores of 192
        assert kernels._bwd_sdot(384, 2, 64, bf)
        assert kernels._bwd_sdot(48, 1, 64, bf)  # one core: any tile, also wider than the row
        assert not kernels._bwd_sdot(512, 2, 128, torch.float32)
        assert not kernels._bwd_sdot(512, 2, 128, torch.float16)
        kernels.CONFIG["bwd_sdot"] = False
        assert not kernels._bwd_sdot(512, 2, 128, bf)
    finally:
        kernels.CONFIG.update(keep)


@pytest.mark.parametrize("part", ["fwd", "bwd"])
def test_tile_rule(part):
    """kernels._fwd_tile (without fwd_xcore) / _bwd_tile (both _core_tile): fwd_sdot (bf16 values) / bwd_sdot (bf16
    output gradients) takes the *_block_d tile where it divides an MCS core or h is 1, else the largest power of two
    dividing the core if it is 64 or more (shape (b)), else the per-column path at *_block_d."""
    tile = (lambda *a: kernels._fwd_tile(*a)[:2]) if part == "fwd" else kernels._bwd_tile
    keep = dict(kernels.CONFIG)
    try:
        kernels.CONFIG.update({f"{part}_block_d": 128, f"{part}_sdot": True, "fwd_xcore": False})
        bf = torch.bfloat16
        assert tile(512, 2, bf) == (128, True)  # shape (a): cores of 256
        assert tile(384, 2, bf) == (64, True)  # shape (b): cores of 192
        assert tile(384, 4, bf) == (128, False)  # cores of 96: 32 would be too narrow
        assert tile(24, 2, bf) == (32, False)  # cores of 12
        assert tile(48, 1, bf) == (64, True)  # one core: any tile
        assert tile(512, 2, torch.float32) == (128, False)  # fp32: the per-column path
        assert tile(512, 2, torch.float16) == (128, False)
        kernels.CONFIG.update({f"{part}_block_d": 0})  # the whole row: 512 columns, wider than a core
        assert tile(384, 2, bf) == (64, True)
        kernels.CONFIG.update({f"{part}_block_d": 128, f"{part}_sdot": False})
        assert tile(512, 2, bf) == (128, False)
    finally:
        kernels.CONFIG.clear()
        kernels.CONFIG.update(keep)


def test_fwd_xcore_rule():
    """With fwd_xcore (the default) the forward's fwd_sdot path takes fwd_block_d across MCS core boundaries where the
    tile does not lie inside one core (shape (b): 128 columns over cores of 192), only for bf16 values and where
    the programs are many (not at decode sizes)."""
    keep = dict(kernels.CONFIG)
    try:
        kernels.CONFIG.update(fwd_block_d=128, fwd_sdot=True, fwd_xcore=True)
        bf = torch.bfloat16
        assert kernels._fwd_tile(512, 2, bf) == (128, True, False)  # shape (a): inside its cores of 256
        assert kernels._fwd_tile(384, 2, bf) == (128, True, True)  # shape (b): across its cores of 192
        assert kernels._fwd_tile(24, 2, bf) == (32, True, True)  # cores of 12: the whole row in one tile
        assert kernels._fwd_tile(48, 1, bf) == (64, True, False)  # one core
        assert kernels._fwd_tile(384, 2, bf, 32768) == (128, True, True)
        assert kernels._fwd_tile(384, 2, bf, 64) == (64, True, False)  # decode sizes: more programs
        assert kernels._fwd_tile(384, 2, torch.float32) == (128, False, False)  # fp32: the per-column path
        kernels.CONFIG.update(fwd_sdot=False)
        assert kernels._fwd_tile(384, 2, bf) == (128, False, False)
    finally:
        kernels.CONFIG.clear()
        kernels.CONFIG.update(keep)


def test_value_tile_split_is_exact():
    """The value-tile backward's fp32 values as three bf16 parts (hi + mid + lo) add back to the value exactly:
    what makes its one-hot picks exact on the tensor cores."""
    g = torch.Generator().manual_seed(0)
    v = torch.randn(100_000, generator=g) * torch.logspace(-20, 20, 100_000)
    hi = v.bfloat16()
    rest = v - hi.float()
    mid = rest.bfloat16()
    lo = (rest - mid.float()).bfloat16()
    assert torch.equal((hi.float() + mid.float()) + lo.float(), v)


def test_check_lookup_gpu_script_under_interpreter():
    """scripts/check_lookup_gpu.py (the GPU's check on random odd shapes) runs, and passes, on the CPU under the
    interpreter with --cpu: 3 small cases."""
    pytest.importorskip("triton")
    import subprocess
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, "scripts/check_lookup_gpu.py", "--cpu", "--cases=3", "--seed=1"], cwd=root,
                       env={**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": root}, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0 and "3 of 3 cases ok" in r.stdout, r.stdout + r.stderr


def test_triton_interpreter_against_reference():
    pytest.importorskip("triton")
    run_interpreter_checks(__file__)


# --------------------------------------------------------------------------------------------------
# The interpreter checks (run in the subprocess)

CASES = [  # N, Dv, T, K, E, h, dtype
    (37, 24, 5, 7, 4, 2, torch.float32),
    (37, 24, 5, 7, 4, 2, torch.bfloat16),
    (50, 40, 3, 17, 1, 1, torch.float32),   # E = 1, h = 1, K over one BLOCK_K
    (45, 12, 6, 9, 1, 2, torch.bfloat16),
    (70, 20, 4, 5, 4, 1, torch.float32),    # N over two row tiles of the backward
    (8, 6, 9, 11, 4, 2, torch.float32),     # more slots than rows: every row many times (backward tiles 16 x 32)
    (29, 18, 1, 3, 4, 2, torch.bfloat16),   # one token (decode)
    (41, 128, 3, 21, 4, 2, torch.bfloat16),  # cores of 64 columns: fwd_sdot's path (64-column tiles by default,
                                             # 16 and 32 in the variants)
    (33, 48, 2, 19, 1, 1, torch.bfloat16),   # E = 1, h = 1: fwd_sdot with a tile wider than the row
    (40, 36, 5, 13, 3, 3, torch.bfloat16),   # E = 3, h = 3: fwd_xcore's operand rows with padding in both
    (8, 32, 9, 11, 4, 2, torch.bfloat16),    # every row many times in bf16: with bwd_max_slots=40 the one tile's
                                             # 99 slots are three pieces of several bwd_sdot slot steps
]


def _interp_bwd_work() -> None:
    """kernels._bwd_work, the sorted backward's per-program work, against _bwd_work_reference for every program (a
    probe kernel that stores what _bwd_work returns): skewed tiles (empty ones, long ones), S from 1 to above every
    tile, and S = 0 (no splitting: every tile whole, no boundary programs)."""
    import triton
    import triton.language as tl

    @triton.jit
    def probe(srows_ptr, toffs_ptr, out_ptr, NK, tiles, S, C, R: tl.constexpr):
        pid = tl.program_id(0)
        tile, start, end, part = kernels._bwd_work(pid, srows_ptr, toffs_ptr, NK, tiles, S, C, R)
        tl.store(out_ptr + pid * 4, tile.to(tl.int64))
        tl.store(out_ptr + pid * 4 + 1, start.to(tl.int64))
        tl.store(out_ptr + pid * 4 + 2, end.to(tl.int64))
        tl.store(out_ptr + pid * 4 + 3, part.to(tl.int64))

    g = torch.Generator().manual_seed(11)
    for R, tiles in ((4, 1), (4, 9), (16, 30), (32, 64)):
        for S in (0, 1, 2, 3, 7, 16, 1000):
            counts = torch.randint(0, 12, (tiles,), generator=g) * (torch.rand(tiles, generator=g) < 0.7)
            counts[torch.randint(0, tiles, (2,), generator=g)] += torch.randint(0, 60, (2,), generator=g)  # hot tiles
            NK = int(counts.sum())
            toffs = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])
            rows = torch.repeat_interleave(torch.arange(tiles) * R, counts)
            rows += torch.randint(0, R, (NK,), generator=g)  # any row of the tile
            srows = rows.sort().values.to(torch.int32)
            S_k, C = kernels._bwd_chunks(NK, S)
            out = torch.full((tiles + C, 4), -7, dtype=torch.long)
            probe[(tiles + C,)](srows, toffs, out, NK, tiles, S_k, C, R=R)
            if S:
                want = kernels._bwd_work_reference(toffs, srows, S, R)
            else:
                want = torch.stack([torch.arange(tiles), toffs[:-1], toffs[1:], torch.full((tiles,), -1)], 1)
            assert torch.equal(out, want), f"_bwd_work, R={R}, {tiles} tiles, S={S}:\n{out}\n{want}"
    print("interp: bwd work ok", flush=True)


def _interp_main() -> None:
    assert os.environ.get("TRITON_INTERPRET") == "1"
    kernels.set_impl("triton")
    kernels.POISON_OUTPUTS = True
    _interp_bwd_work()
    for i, (N, Dv, T, K, E, h, dtype) in enumerate(CASES):
        values, rows, blocks, scores, gout = _inputs(N, Dv, T, K, E, h, dtype, 100 + i)
        tag = f"case {i} N={N} Dv={Dv} T={T} K={K} E={E} h={h} {dtype}"
        ref = kernels.mem_lookup_reference(values, rows, blocks, scores, E)
        _close(kernels._lookup_triton(values, rows, blocks, scores, E), ref, dtype, f"{tag}: forward")
        rv, rs = kernels.mem_lookup_bwd_reference(gout, values, rows, blocks, scores, E)
        grads = {}
        for scheme in ("sorted", "atomic"):
            kernels.set_backward_scheme(scheme)
            grads[scheme] = gv, gs = kernels._lookup_bwd_triton(gout, values, rows, blocks, scores, E)
            _close(gv, rv, dtype, f"{tag}: {scheme} grad values")
            _close(gs, rs, dtype, f"{tag}: {scheme} grad scores")
        kernels.set_backward_scheme("sorted")
        again = kernels._lookup_bwd_triton(gout, values, rows, blocks, scores, E)
        assert all(torch.equal(a, b) for a, b in zip(again, grads["sorted"])), f"{tag}: sorted backward not deterministic"
        # other launch configurations: column tiles of 16 (several per row, crossing MCS core boundaries
        # where Dv / h is not a multiple of 16), other slot blocks, the zero-filled backward
        variants = ({"fwd_block_d": 16, "bwd_block_d": 16, "fwd_block_k": 32, "bwd_block_i": 32, "bwd_rows": 16},
                    {"fwd_block_k": 4},  # several slot blocks, the last one partial
                    {"fwd_block_k": 4, "fwd_block_d": 16},
                    {"bwd_block_d": 16, "bwd_zero_fill": True, "fwd_block_k": 64, "fwd_warps": 8},  # one slot block
                    {"bwd_zero_fill": True, "bwd_rows": 64},
                    {"bwd_rows": 32, "bwd_block_i": 16},  # fixed tiles (the default, 0, picks by slots per row)
                    {"bwd_value_tile": True},  # the value rows read per tile and picked by a one-hot dot
                    {"bwd_value_tile": True, "bwd_rows": 16, "bwd_block_i": 32, "bwd_block_d": 16},
                    {"bwd_value_tile": True, "bwd_zero_fill": True, "bwd_rows": 64},
                    # a 1-D grid with the column tiles of a token / row tile consecutive
                    # (the forward's is the default), or the 2-D grid
                    {"bwd_cols_inner": True, "fwd_cols_inner": False, "fwd_block_d": 16, "bwd_block_d": 16},
                    {"bwd_cols_inner": True, "bwd_value_tile": True, "fwd_block_d": 16, "bwd_block_d": 16, "bwd_rows": 16,
                     "bwd_block_i": 32},
                    # bf16 values: the scores in the one-hot operand (fwd_sdot, the default) where the column tile
                    # divides an MCS core or h is 1 (the last two cases; the other bf16 cases take the per-column
                    # path), or per column
                    {"fwd_block_d": 32, "fwd_block_k": 4},
                    {"fwd_sdot": False, "fwd_block_d": 16},
                    {"fwd_sdot": False, "fwd_cols_inner": False, "fwd_block_k": 4},
                    # the backward's scores in the one-hot operand (bwd_sdot, the default for bf16 where the tile
                    # lies inside an MCS core; always with the 1-D grid), or per column
                    {"bwd_sdot": True, "bwd_block_d": 16},
                    {"bwd_sdot": False, "bwd_block_d": 16},
                    {"bwd_sdot": True, "bwd_block_d": 32, "bwd_cols_inner": True, "bwd_rows": 16, "bwd_block_i": 32},
                    {"bwd_sdot": True, "bwd_value_tile": True, "bwd_block_d": 16},
                    # with bwd_sdot the loop carries the next step's row numbers: several slot steps per tile
                    {"bwd_sdot": True, "bwd_block_d": 16, "bwd_rows": 16, "bwd_block_i": 16},
                    {"bwd_sdot": True, "bwd_block_d": 16, "bwd_rows": 32, "bwd_block_i": 16, "bwd_zero_fill": True},
                    # several tokens per forward program (the last group partial where 3 does not divide T)
                    {"fwd_tokens": 3, "fwd_block_k": 4},
                    {"fwd_tokens": 2, "fwd_cols_inner": False, "fwd_sdot": False, "fwd_block_d": 16},
                    {"fwd_tokens": 3, "fwd_block_d": 32, "fwd_block_k": 4},  # with fwd_sdot
                    # bf16 tiles across MCS cores: with fwd_xcore (the default; the whole row padded to a power of
                    # two, or 16 columns), or without it (the largest power of two in a core, or per column)
                    {"fwd_block_d": 0, "fwd_block_k": 4},
                    {"fwd_block_d": 16, "fwd_tokens": 2},
                    {"fwd_block_d": 16, "fwd_xcore_cols_inner": True, "fwd_block_k": 4},
                    {"fwd_xcore": False, "fwd_block_d": 32, "fwd_block_k": 4},
                    # the score gradients by their own kernel (bwd_split_scores, the default unless the value tile
                    # is on): several slot blocks and column tiles, one of each; or in the sorted kernel, with
                    # bwd_sdot (one and several slot steps) and per column
                    {"bwd_gs_block_k": 4, "bwd_gs_block_d": 16, "bwd_block_d": 16},
                    {"bwd_sdot": False, "bwd_rows": 16, "bwd_block_i": 16, "bwd_gs_block_k": 64},
                    {"bwd_split_scores": False},
                    {"bwd_split_scores": False, "bwd_sdot": True, "bwd_block_d": 16, "bwd_rows": 16, "bwd_block_i": 16},
                    {"bwd_split_scores": False, "bwd_sdot": False, "bwd_block_d": 16},
                    # row tiles with more than bwd_max_slots slots split into pieces, added by _bwd_combine_kernel
                    # (the case's hot row, rows[T // 2:, -1], makes one tile long): pieces shorter than a slot
                    # step, several steps (with bwd_sdot's carried loads), the zero-filled gradient, the value tile;
                    # and no splitting
                    {"bwd_max_slots": 4},
                    {"bwd_max_slots": 3, "bwd_rows": 16, "bwd_block_i": 16, "bwd_zero_fill": True},
                    {"bwd_max_slots": 40, "bwd_sdot": True, "bwd_block_d": 16, "bwd_rows": 16, "bwd_block_i": 16},
                    {"bwd_max_slots": 5, "bwd_split_scores": False, "bwd_value_tile": True, "bwd_block_d": 16},
                    {"bwd_max_slots": 5, "bwd_split_scores": False},  # the score gradients of gathered rows, per piece
                    {"bwd_max_slots": 1, "bwd_rows": 16, "bwd_block_i": 16},  # every slot of a split tile its own piece
                    {"bwd_max_slots": 0})
        keep = dict(kernels.CONFIG)
        # the variants take fwd_tokens (2 by default) and fwd_xcore at these small sizes
        keep_min, kernels.FWD_FEW_PROGRAMS = kernels.FWD_FEW_PROGRAMS, 1
        for variant in variants:
            kernels.CONFIG.update(variant)
            try:
                _close(kernels._lookup_triton(values, rows, blocks, scores, E), ref, dtype, f"{tag} {variant}: forward")
                gv, gs = kernels._lookup_bwd_triton(gout, values, rows, blocks, scores, E)
                _close(gv, rv, dtype, f"{tag} {variant}: grad values")
                _close(gs, rs, dtype, f"{tag} {variant}: grad scores")
                again = kernels._lookup_bwd_triton(gout, values, rows, blocks, scores, E)
                assert torch.equal(gv, again[0]) and torch.equal(gs, again[1]), f"{tag} {variant}: not deterministic"
            finally:
                kernels.CONFIG.clear()
                kernels.CONFIG.update(keep)
        kernels.FWD_FEW_PROGRAMS = keep_min
        # the value-tile backward picks each slot's value row exactly: the same gradients bit for bit here as the
        # sorted kernel's own score gradients (on the GPU only the value gradients are: the score gradients' sums
        # run in the dot's register layout there)
        kernels.CONFIG["bwd_split_scores"] = False
        try:
            gathered = kernels._lookup_bwd_triton(gout, values, rows, blocks, scores, E)
            kernels.CONFIG["bwd_value_tile"] = True
            vt = kernels._lookup_bwd_triton(gout, values, rows, blocks, scores, E)
        finally:
            kernels.CONFIG.update(keep)
        assert torch.equal(vt[0], gathered[0]) and torch.equal(vt[1], gathered[1]), f"{tag}: value tile"
        # the per-slot inputs put in row order by _bwd_prep_kernel (bwd_prep, the default) or by PyTorch: the same
        # inputs, so the same gradients bit for bit
        kernels.CONFIG["bwd_prep"] = False
        try:
            torch_prep = kernels._lookup_bwd_triton(gout, values, rows, blocks, scores, E)
        finally:
            kernels.CONFIG.update(keep)
        fused = kernels._lookup_bwd_triton(gout, values, rows, blocks, scores, E)
        assert torch.equal(fused[0], torch_prep[0]) and torch.equal(fused[1], torch_prep[1]), f"{tag}: bwd_prep"
        if dtype == torch.bfloat16:  # fp32 scores with bf16 values and output gradients (the sdot paths' hi + lo)
            s32 = scores.float() * 1.37
            ref32 = kernels.mem_lookup_reference(values.float(), rows, blocks, s32, E)
            out = kernels._lookup_triton(values, rows, blocks, s32, E)  # in the values' dtype, checked to bf16's
            _close(out.float(), ref32, dtype, f"{tag}: forward, fp32 scores")  # tolerance against the fp32 reference
            rv32, rs32 = kernels.mem_lookup_bwd_reference(gout.float(), values.float(), rows, blocks, s32, E)
            gv, gs = kernels._lookup_bwd_triton(gout, values, rows, blocks, s32, E)
            assert out.dtype == gv.dtype == dtype and gs.dtype == torch.float32, f"{tag}: dtypes with fp32 scores"
            _close(gv.float(), rv32, dtype, f"{tag}: grad values, fp32 scores")
            _close(gs, rs32, torch.float32, f"{tag}: grad scores, fp32 scores")  # exact bf16 products, fp32 sums
        print(f"interp: {tag} ok", flush=True)
    # through the op and autograd (the path memory.py takes), in deterministic mode: atomics refused
    kernels.set_backward_scheme("atomic")
    kernels.set_deterministic(True)
    values, rows, blocks, scores, gout = _inputs(31, 16, 4, 6, 4, 2, torch.float32, 7)
    v, s = values.clone().requires_grad_(True), scores.clone().requires_grad_(True)
    out = kernels.mem_lookup(v, rows, blocks, s, 4)
    gv, gs = torch.autograd.grad(out, (v, s), gout)
    rv, rs = kernels.mem_lookup_bwd_reference(gout, values, rows, blocks, scores, 4)
    _close(out, kernels.mem_lookup_reference(values, rows, blocks, scores, 4), torch.float32, "op forward")
    _close(gv, rv, torch.float32, "op grad values")
    _close(gs, rs, torch.float32, "op grad scores")
    _interp_topk()
    print("interp: all cases ok", flush=True)


def _interp_topk() -> None:
    """topk_indices' kernel against torch.topk: the same multiset of values (ties may pick other equal
    entries), k distinct indices, increasing index order unsorted, value order sorted; then TDQKR with it."""
    import memory

    g = torch.Generator().manual_seed(5)
    keep = dict(kernels.TOPK_CONFIG)
    reg, small = {"filter": 0}, {"block": 128, "groups": 128, "cap": 64}
    # L, k, dtype, bits per search pass (1, 2: compares; 4, 8: histograms), TOPK_CONFIG changes. The filter kernel
    # (the default for bits >= 3 and k <= groups / 2) at its defaults: blocks of 512, so 1, 2 or 3 of them per row;
    # with `small`, rows of several blocks; k above half the groups falls back to the register kernel; a row longer
    # than the register kernel takes. The rows of ties overflow the cap (the whole-row selection). The filter
    # kernel's positions must equal the register kernel's (ties to the lower index)
    cases = ((37, 5, torch.float32, 2, {}), (1100, 80, torch.float32, 2, {}), (64, 64, torch.float32, 1, {}),
             (300, 1, torch.bfloat16, 2, {}), (513, 40, torch.bfloat16, 1, {}),
             (1100, 80, torch.float32, 8, reg), (37, 37, torch.float32, 8, reg), (513, 40, torch.bfloat16, 4, reg),
             (1100, 80, torch.float32, 8, {}), (37, 37, torch.float32, 8, {}), (513, 40, torch.bfloat16, 4, {}),
             (700, 42, torch.bfloat16, 8, {}), (513, 40, torch.bfloat16, 4, small), (1100, 60, torch.float32, 4, small),
             (300, 40, torch.float32, 4, {"groups": 64}), (20000, 9, torch.bfloat16, 4, {}))
    for L, k, dtype, bits, change in cases:
        kernels.TOPK_CONFIG.update(change, bits=bits)
        x = torch.randn(7, L, generator=g).to(dtype)
        x[0, : min(L, 10)] = 1.5  # ties at the top
        x[1] = 0.0  # a row of equal values
        x[2, : L // 2] = -x[2, : L // 2].abs()  # negatives and
        x[2, 0], x[2, 1] = -0.0, float("-inf")  # signed zero, -inf
        x[3, L // 2] = float("inf")
        x[4] = torch.arange(L, dtype=torch.float32).to(dtype)  # increasing (in bf16 with runs of ties)
        for sorted_ in (False, True):
            got = kernels.topk_indices(x.view(7, 1, L), k, sorted=sorted_, impl="triton").view(7, k)
            vals = x.gather(-1, got).float()
            ref = x.float().topk(k, dim=-1).values
            assert torch.equal(vals.sort(-1, descending=True).values, ref), f"topk L={L} k={k} {dtype}: values differ"
            assert all(len(set(r.tolist())) == k for r in got), f"topk L={L} k={k}: repeated index"
            if sorted_:
                assert (vals.diff(dim=-1) <= 0).all(), "sorted: not by value"
            else:
                assert (got.diff(dim=-1) > 0).all(), "unsorted: the kernel's index order"
                if kernels._topk_filter_shape(L, k) is not None and L <= kernels.TOPK_MAX_L:
                    kernels.TOPK_CONFIG["filter"] = 0
                    want = kernels.topk_indices(x.view(7, 1, L), k, sorted=False, impl="triton").view(7, k)
                    kernels.TOPK_CONFIG["filter"] = 1
                    assert torch.equal(got, want), f"topk L={L} k={k} {dtype} {change}: not the register kernel's"
        print(f"interp: topk L={L} k={k} {dtype} bits={bits} {change} ok", flush=True)
        kernels.TOPK_CONFIG.clear()
        kernels.TOPK_CONFIG.update(keep)
    # the filter kernel with exactly `cap` survivors (the fast path's last slot): 256 keys at or above the lower bound
    # 5.0 (the 40th largest of the maxima of 128 groups of 4 columns), one of them, in the last slot, the largest
    x = torch.randn(3, 1100, generator=g) * 0.5
    x[:, :256] = 5.0
    x[:, 255] = 6.0
    kernels.TOPK_CONFIG.update(block=512, groups=128, cap=256)
    try:
        got = kernels.topk_indices(x, 40, sorted=False, impl="triton")
    finally:
        kernels.TOPK_CONFIG.update(keep)
    assert torch.equal(got, torch.tensor([*range(39), 255]).expand(3, 40)), "topk: cap survivors"
    # the whole-row selection on rows of distinct values too: the kernel launched with a cap below k, so that every
    # row overflows it; positions equal to the register kernel's
    for L, k, dtype in ((300, 20, torch.float32), (1100, 20, torch.bfloat16), (1100, 33, torch.float32)):
        x = torch.randn(4, L, generator=g).to(dtype)
        x[1, :50] = x[1, 50]  # a run of ties
        out = torch.full((4, k), -1, dtype=torch.int64)
        kernels._launch(kernels._topk_filter_kernel, (4,), False, x, out, torch.empty(4, 16, dtype=torch.int32), L, k,
                        BLOCK=128, GROUPS=64, CAP=16, BITS=4, KEY_BITS=16 if dtype == torch.bfloat16 else 32)
        kernels.TOPK_CONFIG.update(filter=0)
        try:
            want = kernels.topk_indices(x, k, sorted=False, impl="triton")
        finally:
            kernels.TOPK_CONFIG.update(keep)
        assert torch.equal(out, want), f"topk whole-row path L={L} k={k} {dtype}"
    # TDQKR through the kernel equals TDQKR through torch.topk (random scores: no ties)
    T, H, n, r, h, m = 5, 2, 40, 2, 2, 6
    s_row, s_col, cores = torch.randn(T, H, n, r, generator=g), torch.randn(T, H, n, r, generator=g), torch.randn(H, h, r, r, generator=g)
    u, t = torch.randn(H, r, generator=g), torch.randn(H, r, generator=g)
    canon = lambda row, col, sc: (lambda o: (row.gather(-1, o), col.gather(-1, o), sc.gather(2, o[..., None].expand_as(sc))))(
        (row * n + col).argsort(dim=-1))  # sorted by slot: the retrieval's order is arbitrary
    got = canon(*memory.tdqkr_retrieve(s_row, s_col, cores, u, t, m, topk="triton"))
    ref = canon(*memory.tdqkr_retrieve(s_row, s_col, cores, u, t, m, topk="torch"))
    assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1]), "tdqkr rows/cols differ with the topk kernel"
    _close(got[2], ref[2], torch.float32, "tdqkr scores with the topk kernel")
    s1, s2 = torch.randn(T, H, n, generator=g), torch.randn(T, H, n, generator=g)
    got, ref = canon(*memory.pkm_retrieve(s1, s2, m, topk="triton")), canon(*memory.pkm_retrieve(s1, s2, m, topk="torch"))
    assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1]), "pkm rows/cols differ with the topk kernel"
    _close(got[2], ref[2], torch.float32, "pkm scores with the topk kernel")
    print("interp: tdqkr and pkm with the topk kernel ok", flush=True)


if __name__ == "__main__":
    if sys.argv[1:] == ["--interp"]:
        _interp_main()
    else:
        sys.exit(pytest.main([__file__, "-q"]))
