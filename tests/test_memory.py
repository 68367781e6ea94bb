import io
import os

import pytest
import torch

import memory
import train
from memory import MemoryLayer, head_scores, pkm_retrieve, tdqkr_retrieve, tdqkr_retrieve_fused, tucker_aux_loss
from configurator import read_config_file
from model import GPT, GPTConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cfg(**kw) -> GPTConfig:
    """A tiny UltraMem GPT: every Table 2 step on (E=4, r=2, h=2, query conv 3)."""
    args = dict(n_layer=3, n_head=4, n_embd=32, block_size=32, vocab_size=61, memory="ultramem",
                mem_layers="0:1/1:2", mem_knum=6, mem_kdim=8, mem_heads=2, mem_topm=4, mem_vdim=16, mem_qconv=3)
    args.update(kw)
    return GPTConfig(**args)


def layer(**kw) -> MemoryLayer:
    torch.manual_seed(0)
    return MemoryLayer(cfg(**kw))


def config_file(name: str) -> dict:
    return read_config_file(os.path.join(ROOT, "config", name))


# ----------------------------------------------------------------------------------------------------
# retrieval


def by_slot(row, col, scores, n):
    """The retrieval's output (in no particular order) sorted by slot row * n + col, for comparisons."""
    order = (row * n + col).argsort(dim=-1)
    return row.gather(-1, order), col.gather(-1, order), scores.gather(2, order.unsqueeze(-1).expand_as(scores))


def test_rank1_cores_select_the_brute_force_top_m():
    """With rank-1 cores C = a u t^T (a > 0) and positive row/column scores, the rank-1 pre-selection loses
    nothing: TDQKR returns exactly the top-m of the whole n x n grid."""
    torch.manual_seed(0)
    T, H, n, r, h, m = 5, 2, 12, 2, 2, 6
    s_row, s_col = torch.rand(T, H, n, r) + 0.1, torch.rand(T, H, n, r) + 0.1
    u, t = torch.rand(H, r) + 0.1, torch.rand(H, r) + 0.1
    u, t = u / u.norm(dim=-1, keepdim=True), t / t.norm(dim=-1, keepdim=True)
    cores = torch.rand(H, h, 1, 1) * u[:, None, :, None] * t[:, None, None, :]  # (H, h, r, r) rank 1
    row, col, scores = tdqkr_retrieve(s_row, s_col, cores, u, t, m)
    full = torch.einsum("taik,akl,tajl->taij", s_row, cores.sum(1), s_col).flatten(2)  # (T, H, n*n)
    best = full.topk(m, dim=-1)
    assert torch.equal((row * n + col).sort(-1).values, best.indices.sort(-1).values)
    torch.testing.assert_close(scores.sum(-1).sort(-1).values, best.values.sort(-1).values)


def test_general_cores_return_exact_tucker_scores():
    torch.manual_seed(1)
    T, H, n, r, h, m = 4, 2, 10, 3, 2, 5
    s_row, s_col, cores = torch.randn(T, H, n, r), torch.randn(T, H, n, r), torch.randn(H, h, r, r)
    u, t = torch.randn(H, r), torch.randn(H, r)
    row, col, scores = tdqkr_retrieve(s_row, s_col, cores, u, t, m)  # scores (T, H, m, h)
    for b in range(T):
        for a in range(H):
            cand_r = set(torch.einsum("nk,k->n", s_row[b, a], u[a]).topk(m).indices.tolist())
            cand_c = set(torch.einsum("nk,k->n", s_col[b, a], t[a]).topk(m).indices.tolist())
            for k in range(m):
                i, j = row[b, a, k].item(), col[b, a, k].item()
                assert i in cand_r and j in cand_c  # chosen among the rank-1 pre-selected rows / columns
                for c in range(h):
                    exact = s_row[b, a, i] @ cores[a, c] @ s_col[b, a, j]
                    assert torch.allclose(scores[b, a, k, c], exact, atol=1e-5)
            # the final top-m is taken on the sum over cores: distinct slots, none better left out
            assert len(set((row[b, a] * n + col[b, a]).tolist())) == m
            cr, cc = sorted(cand_r), sorted(cand_c)
            summed = torch.stack([torch.stack([s_row[b, a, i] @ cores[a].sum(0) @ s_col[b, a, j] for j in cc]) for i in cr])
            torch.testing.assert_close(scores[b, a].sum(-1).sort(descending=True).values, summed.flatten().topk(m).values)


def tdqkr_einsum(s_row, s_col, cores, u, t, m):
    """TDQKR written with einsums over the full (T, H, h, m, m) candidate grid: the formulation
    tdqkr_retrieve replaced (fused multiply-sums, no grid in the backward); the two must agree."""
    T, H, n, r = s_row.shape
    h = cores.shape[1]
    sel_r = torch.einsum("tank,ak->tan", s_row, u).topk(m, dim=-1).indices
    sel_c = torch.einsum("tank,ak->tan", s_col, t).topk(m, dim=-1).indices
    sr = s_row.gather(2, sel_r.unsqueeze(-1).expand(T, H, m, r))
    sc = s_col.gather(2, sel_c.unsqueeze(-1).expand(T, H, m, r))
    grid = torch.einsum("tacil,tajl->tacij", torch.einsum("taik,ackl->tacil", sr, cores), sc)
    top = grid.sum(2).flatten(2).topk(m, dim=-1).indices
    scores = grid.flatten(3).gather(3, top.unsqueeze(2).expand(T, H, h, m)).transpose(2, 3)
    return sel_r.gather(2, top // m), sel_c.gather(2, top % m), scores


@pytest.mark.parametrize("r,h", [(2, 2), (3, 1)])
def test_tdqkr_equals_the_einsum_grid_with_gradients(r, h):
    torch.manual_seed(3)
    T, H, n, m = 6, 2, 9, 4
    leaf = lambda *shape: torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    s_row, s_col, cores = leaf(T, H, n, r), leaf(T, H, n, r), leaf(H, h, r, r)
    u, t = torch.randn(H, r, dtype=torch.float64), torch.randn(H, r, dtype=torch.float64)
    got, ref = tdqkr_retrieve(s_row, s_col, cores, u, t, m), tdqkr_einsum(s_row, s_col, cores, u, t, m)
    got, ref = by_slot(*got, n), by_slot(*ref, n)
    assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])
    torch.testing.assert_close(got[2], ref[2])
    w = torch.randn_like(got[2])
    g_got = torch.autograd.grad((got[2] * w).sum(), (s_row, s_col, cores))
    g_ref = torch.autograd.grad((ref[2] * w).sum(), (s_row, s_col, cores))
    for a, b in zip(g_got, g_ref):
        torch.testing.assert_close(a, b)
    with torch.no_grad():  # decoding: the same selection and scores without gradient
        dec = by_slot(*tdqkr_retrieve(s_row, s_col, cores, u, t, m), n)
    assert torch.equal(dec[0], got[0]) and torch.equal(dec[1], got[1])
    torch.testing.assert_close(dec[2], got[2].detach())


def test_head_scores_equal_the_batched_einsum_with_and_without_grad():
    """The per-GEMM scores with gradient and without (decoding: the same code since session 9) against one
    einsum, and the gradients."""
    torch.manual_seed(4)
    q = torch.randn(7, 3, 2, 8, dtype=torch.float64, requires_grad=True)
    keys = torch.randn(3, 2, 5, 2, 8, dtype=torch.float64, requires_grad=True)
    ref = torch.einsum("tabd,abnrd->tabnr", q, keys).unbind(2)
    got = head_scores(q, keys)
    torch.testing.assert_close(got, ref)
    w = [torch.randn_like(x) for x in ref]
    loss = lambda s: sum((x * y).sum() for x, y in zip(s, w))
    torch.testing.assert_close(torch.autograd.grad(loss(got), (q, keys)), torch.autograd.grad(loss(ref), (q, keys)))
    with torch.no_grad():
        torch.testing.assert_close(head_scores(q, keys), ref)
        shared = q[:, :1].expand(7, 3, 2, 8)  # mem_share_query: one query read by every head (a broadcast view)
        torch.testing.assert_close(head_scores(shared, keys), torch.einsum("tabd,abnrd->tabnr", shared, keys).unbind(2))


@pytest.mark.parametrize("T,H,n,r,h,m,dtype", [(7, 2, 9, 2, 2, 4, torch.float64), (33, 3, 20, 3, 1, 5, torch.float32),
                                                (5, 1, 7, 1, 2, 7, torch.float64), (1, 2, 11, 2, 2, 3, torch.float32)])
def test_fused_decode_retrieval_equals_the_plain_path(T, H, n, r, h, m, dtype):
    """mem_decode="fused" (one score matmul, one pre-selection top-m) selects the same (row, column) slots as
    head_scores + tdqkr_retrieve, with the same per-core scores (sums in another order: rounding apart), for a
    query per head and for one shared query (a broadcast view, mem_share_query)."""
    torch.manual_seed(T)
    Dk = 6
    keys, cores = torch.randn(H, 2, n, r, Dk, dtype=dtype), torch.randn(H, h, r, r, dtype=dtype)
    u, t = torch.randn(H, r, dtype=dtype), torch.randn(H, r, dtype=dtype)
    for q in (torch.randn(T, H, 2, Dk, dtype=dtype), torch.randn(T, 1, 2, Dk, dtype=dtype).expand(T, H, 2, Dk)):
        with torch.no_grad():
            plain = by_slot(*tdqkr_retrieve(*head_scores(q, keys), cores, u, t, m), n)
            fused = tdqkr_retrieve_fused(q, keys, cores, u, t, m)
        assert fused[0].shape == (T, H, m) and fused[2].shape == (T, H, m, h)
        fused = by_slot(*fused, n)
        assert torch.equal(fused[0], plain[0]) and torch.equal(fused[1], plain[1])
        torch.testing.assert_close(fused[2], plain[2])


def test_fused_decode_layer_equals_plain_eager_and_compiled(monkeypatch):
    """A GPT with mem_decode="fused" decodes (cached steps) and evaluates like the same weights with "plain";
    training (train mode, gradient on) and the init take the plain path; compiled (Inductor on this CPU) equals
    eager."""
    calls = []  # (grad enabled) per call of the fused retrieval
    fused_fn = memory.tdqkr_retrieve_fused
    monkeypatch.setattr(memory, "tdqkr_retrieve_fused", lambda *a: calls.append(torch.is_grad_enabled()) or fused_fn(*a))
    torch.manual_seed(0)
    plain = GPT(cfg(mem_decode="plain")).eval()
    torch.manual_seed(0)
    fused = GPT(cfg()).eval()  # the default
    assert fused.config.mem_decode == "fused"
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), fused.state_dict().values()))
    with torch.no_grad():
        for m in plain.memories:  # trained-like cores, so that the pre-selection matters
            m.cores.normal_()
        plain.refresh()
        fused.load_state_dict(plain.state_dict())
        idx = torch.randint(0, 61, (3, 10))
        torch.testing.assert_close(fused(idx)[0], plain(idx)[0], rtol=1e-5, atol=1e-5)
        assert calls == [False, False]  # the two memory layers of the fused model (none at construction: the init's
        # calibration, in train mode, takes the plain path, so both models start from the same weights)
        outs = []
        for model, step in ((plain, plain), (fused, fused), (fused, torch.compile(fused, fullgraph=True))):
            model.setup_caches(3, 10)  # the prefill eager, the one-token steps through `step`
            steps = [model(idx[:, :4], input_pos=torch.arange(4))[0]]
            steps += [step(idx[:, i:i + 1], input_pos=torch.tensor([i]))[0] for i in range(4, 10)]
            outs.append(torch.cat(steps, 1))
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(outs[2], outs[1], rtol=1e-4, atol=1e-5)
    assert len(calls) > 2 and not any(calls)
    n = len(calls)
    fused.train()
    _, loss, _ = fused(idx, idx)
    loss.backward()
    assert len(calls) == n  # with gradient: the plain path


def test_pkm_retrieve_is_exact_and_softmax_rows_sum_to_one():
    torch.manual_seed(2)
    s_row, s_col = torch.randn(3, 2, 9), torch.randn(3, 2, 9)
    row, col, scores = by_slot(*pkm_retrieve(s_row, s_col, 4), 9)
    full = (s_row[..., :, None] + s_col[..., None, :]).flatten(2).topk(4, dim=-1)
    order = full.indices.argsort(-1)
    assert torch.equal(row * 9 + col, full.indices.gather(-1, order))
    torch.testing.assert_close(scores[..., 0], full.values.gather(-1, order))
    mem = layer(memory="pkm", mem_vdim=0, mem_qconv=0)
    _, w = mem.select(torch.randn(2, 5, 32))  # (T, H*m, 1)
    sums = w.view(10, 2, 4).sum(-1)  # per token and head
    torch.testing.assert_close(sums, torch.ones_like(sums))
    assert (w > 0).all()


# ----------------------------------------------------------------------------------------------------
# IVE, MCS, shuffle


def test_ive_equals_the_materialized_expanded_table():
    """out = sum over slots and cores of score_c * V~[v]_c, with V~_p = V W_p (the E x larger virtual table,
    built explicitly), equals the layer's retrieve-then-expand output."""
    mem = layer()
    x = torch.randn(2, 5, 32)
    with torch.no_grad():
        y, _ = mem(x, None)
        addr, w = mem.select(x)  # (T, K), (T, K, h)
        N, E, Dv, h = mem.N, mem.E, mem.Dv, mem.h
        W = mem.value_proj.weight.T.reshape(E, Dv, 32)  # W_p (D_v, D)
        Vt = torch.einsum("ncj,pcjd->pncd", mem.values.view(N, h, Dv // h), W.view(E, h, Dv // h, 32))  # (E, N, h, D)
        Vt = Vt.reshape(E * N, h, 32)  # virtual address v = p * N + physical
        expected = torch.einsum("tkc,tkcd->td", w, Vt[addr])
    torch.testing.assert_close(y.view(-1, 32), expected, rtol=1e-5, atol=1e-6)
    assert addr.max() >= N  # the virtual blocks beyond the physical table are addressed


def test_mcs_core_c_scales_slice_c():
    """Zeroing core 1 leaves the selection (on the sum) well defined and makes the output blind to slice 1
    of every value, and only to it."""
    mem = layer()
    with torch.no_grad():
        mem.cores[:, 1] = 0
        mem.refresh()
        x = torch.randn(2, 5, 32)
        y = mem(x, None)[0]
        half = mem.Dv // 2
        mem.values[:, half:] += 1.0  # slice 1
        assert torch.equal(mem(x, None)[0], y)
        mem.values[:, :half] += 1.0  # slice 0
        assert not torch.allclose(mem(x, None)[0], y)


def test_shuffle_is_a_permutation_and_state_dict_round_trips():
    torch.manual_seed(3)
    a = GPT(cfg())
    torch.manual_seed(4)
    b = GPT(cfg())
    for m in a.memories:
        assert torch.equal(m.perm.sort().values, torch.arange(m.E * m.N))
        assert not torch.equal(m.perm, torch.arange(m.E * m.N))
    assert not torch.equal(a.memories[0].perm, b.memories[0].perm)
    sd = a.state_dict()
    assert {"memories.0.perm", "memories.0.u", "memories.0.t"} <= set(sd)
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    b.load_state_dict(torch.load(buf))
    for ma, mb in zip(a.memories, b.memories):
        for k in ("perm", "u", "t"):
            assert torch.equal(getattr(ma, k), getattr(mb, k))
    idx = torch.randint(0, 61, (2, 9))
    assert torch.equal(a(idx)[0], b(idx)[0])
    # the shuffle is applied: addresses are perm[row * n + col], and another permutation changes the output
    m, x = a.memories[0], torch.randn(1, 4, 32)
    row, col, _ = m.retrieve(m.query_conv(x, None).view(4, 32))
    assert torch.equal(m.select(x)[0], m.perm[(row * m.n + col).flatten(1)])
    y = m(x, None)[0]
    m.perm = m.perm.roll(1)
    assert not torch.allclose(m(x, None)[0], y)


def test_refresh_keeps_sign_continuity():
    mem = layer()
    u0, t0 = mem.u.clone(), mem.t.clone()
    assert (u0.sum(-1) >= 0).all()  # first time: the deterministic convention
    with torch.no_grad():
        mem.cores.add_(1e-3 * torch.randn_like(mem.cores))
        for s in (1.0, -1.0, 1.0):  # whatever sign the SVD returns, the new pair follows the previous one
            mem.u.copy_(s * u0), mem.t.copy_(s * t0)
            mem.refresh()
            assert torch.allclose(mem.u, s * u0, atol=1e-2) and torch.allclose(mem.t, s * t0, atol=1e-2)
    C = mem.cores.sum(1)
    U, S, Vh = torch.linalg.svd(C)
    torch.testing.assert_close(torch.einsum("ar,ars,as->a", mem.u, C, mem.t), S[:, 0])  # u^T C t = sigma_1


# ----------------------------------------------------------------------------------------------------
# training pieces: gradients, aux loss, value learning rate, init


def test_gradients_reach_every_part():
    mem = layer()
    y, aux = mem(torch.randn(2, 7, 32), None)
    (y.square().sum() + sum(aux.values())).backward()
    for name, p in mem.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    rows_hit = (mem.values.grad.abs().sum(-1) > 0).sum().item()
    assert 0 < rows_hit <= 14 * mem.H * mem.m  # only the selected value rows get a gradient


def test_lookup_dtype_autocast_reads_the_values_cast(monkeypatch):
    """mem_lookup_dtype="autocast": under autocast the lookup gets the value table in the autocast dtype (its scores
    too), and the value gradient reaches the fp32 parameter; without autocast, or with "param", the table as it is.
    The outputs and the value gradients agree to bf16 rounding."""
    seen = []
    lookup = memory.kernels.mem_lookup

    def spy(values, rows, blocks, scores, E):
        seen.append((values.dtype, scores.dtype))
        return lookup(values, rows, blocks, scores, E)

    monkeypatch.setattr(memory.kernels, "mem_lookup", spy)
    x = torch.randn(2, 7, 32)
    out = {}
    for mode in ("param", "autocast"):
        mem = layer(mem_lookup_dtype=mode)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y, _ = mem(x, None)
        y.float().square().sum().backward()
        assert mem.values.dtype == mem.values.grad.dtype == torch.float32 and mem.values.grad.abs().sum() > 0
        out[mode] = y.float()
        out[mode + " grad"] = mem.values.grad
        mem(x, None)  # no autocast: the table as it is
    assert seen == [(torch.float32, torch.float32), (torch.float32, torch.float32),
                    (torch.bfloat16, torch.bfloat16), (torch.float32, torch.float32)]
    for key in ("", " grad"):  # the output and the value gradient: equal up to bf16 rounding
        err = (out["autocast" + key] - out["param" + key]).norm() / out["param" + key].norm()
        assert 0 < err < 2e-2, (key, err)


def test_tucker_aux_loss_formula():
    cores = torch.zeros(2, 2, 3, 3)
    cores[0, 0] = torch.diag(torch.tensor([1.0, 0.5, 0.1]))  # head 0: lambda = 1, 0.5, 0.1
    cores[1, 1] = torch.diag(torch.tensor([2.0, 0.4, 0.3]))  # head 1: lambda = 2, 0.4, 0.3
    expected = 0.001 / 2 * ((0.5 - 0.15) ** 2 + 0 + (0.4 - 0.15) ** 2 + (0.3 - 0.15) ** 2) / 2  # mean over heads
    assert abs(tucker_aux_loss(cores, 0.001, 0.15).item() - expected) < 1e-9
    mem = layer()
    assert set(mem(torch.randn(1, 3, 32), None)[1]) == {"tucker"}
    assert mem(torch.randn(1, 3, 32), None)[1]["tucker"] == tucker_aux_loss(mem.cores, 0.001, 0.15)
    assert layer(mem_tucker_alpha=0.0)(torch.randn(1, 3, 32), None)[1] == {}
    mem.eval()  # inference (eval mode, no grad: decoding) skips it, and its SVD; evaluation with grad keeps it
    with torch.no_grad():
        assert mem(torch.randn(1, 3, 32), None)[1] == {}
    assert set(mem(torch.randn(1, 3, 32), None)[1]) == {"tucker"}


def test_value_lr_multiplier_tags():
    model = GPT(cfg(mem_value_lr_mult=4.0))
    groups = model.optim_groups(0.1)
    [g] = [g for g in groups if g["lr_mult_start"] != 1.0]
    assert sorted(g["names"]) == ["memories.0.values", "memories.1.values"]
    assert g["lr_mult_start"] == 4.0 and g["lr_mult_end"] == 1.0 and g["weight_decay"] == 0.1
    assert train.lr_mult_at(0, g, 100) == 4.0 and train.lr_mult_at(50, g, 100) == 2.5 and train.lr_mult_at(100, g, 100) == 1.0
    others = [n for g in groups if g["lr_mult_start"] == 1.0 for n in g["names"]]
    assert "memories.0.keys" in others and "memories.0.cores" in others


def test_paper_init_mean_top_m_score_is_one():
    mem = layer(mem_knum=16, mem_topm=8)
    assert abs(mem.values.std().item() ** 2 / (4 / (2 * 8 * 2 * 3)) - 1) < 0.1  # E / (2 m H L)
    with torch.no_grad():  # fresh inputs, not the Monte Carlo's
        scores = mem.retrieve(torch.randn(256, 32))[2].sum(-1)
    assert abs(scores.mean().item() - 1) < 0.15


# ----------------------------------------------------------------------------------------------------
# placement and validation


def test_skip_placement_reads_block_i_and_adds_after_block_j():
    torch.manual_seed(0)
    model = GPT(cfg(n_layer=4, mem_layers="1:2"))
    mem = model.memories[0]
    seen = {}
    model.blocks[1].ln_2.register_forward_hook(lambda m, i, o: seen.__setitem__("ln2", o))
    const = torch.randn(32)
    mem.forward = lambda h, input_pos: (seen.__setitem__("mem_in", h) or const.expand_as(h).clone(), {})
    outs = {}
    for i, b in enumerate(model.blocks):
        b.register_forward_hook(lambda m, i_, o, i=i: outs.__setitem__(f"out{i}", o[0]))
        b.register_forward_pre_hook(lambda m, a, i=i: outs.__setitem__(f"in{i}", a[0]))
    model(torch.randint(0, 61, (2, 5)))
    assert seen["mem_in"] is seen["ln2"]  # block 1's normalised FFN input
    assert torch.equal(outs["in2"], outs["out1"])  # nothing added between blocks 1 and 2
    assert torch.equal(outs["in3"], outs["out2"] + const)  # added right after block 2


def test_full_and_replace_ffn_placement():
    units = memory.build_memory_layers(cfg(mem_layers="full"))
    assert [(u.src, u.dst) for u in units] == [(0, 0), (1, 1), (2, 2)]
    model = GPT(cfg(memory="pkm", mem_layers="1:1", mem_replace_ffn=True, mem_vdim=0, mem_qconv=0))
    assert model.blocks[1].ffn is None and model.blocks[0].ffn is not None


@pytest.mark.parametrize("kw,msg", [
    (dict(mem_expand=3), "perfect square"),
    (dict(mem_topm=13), "larger than the number of row keys"),
    (dict(mem_vdim=15), "divisible by mem_cores"),
    (dict(mem_layers="1:3"), "outside the model"),
    (dict(mem_layers="2:1"), "src must be <= dst"),
    (dict(mem_layers="0-1"), "bad entry"),
    (dict(mem_layers="0:1", mem_replace_ffn=True), "mem_replace_ffn needs src == dst"),
    (dict(mem_cores=2, mem_tdqkr=False), "needs mem_tdqkr"),
    (dict(mem_value_proj=False), "needs mem_value_proj"),
    (dict(mem_value_proj=False, mem_expand=1), "mem_vdim must be n_embd"),
    (dict(memory="pkm", mem_expand=9, mem_qconv=0, mem_vdim=0), "memory='pkm' fixes mem_expand"),
    (dict(mem_qk_norm="bn"), "mem_qk_norm"),
    (dict(mem_decode="fast"), "mem_decode must be 'plain' or 'fused'"),
    (dict(mem_lookup_dtype="bf16"), "mem_lookup_dtype must be 'param' or 'autocast'"),
])
def test_bad_settings_fail_at_construction(kw, msg):
    with pytest.raises(ValueError, match=msg):
        GPT(cfg(**kw))


def test_pkm_preset_is_ultramem_with_every_step_off():
    off = dict(mem_softmax=True, mem_value_proj=False, mem_share_query=False, mem_qk_norm="none", mem_expand=1,
               mem_tdqkr=False, mem_cores=1, mem_init="pkm", mem_value_lr_mult=1.0, mem_qconv=0, mem_tucker_alpha=0.0)
    torch.manual_seed(0)
    a = GPT(cfg(memory="pkm", mem_vdim=0, mem_qconv=0))
    torch.manual_seed(0)
    b = GPT(cfg(mem_vdim=0, **off))
    idx = torch.randint(0, 61, (2, 7))
    assert torch.equal(a(idx)[0], b(idx)[0])


# ----------------------------------------------------------------------------------------------------
# decoding, sizes, compile


@pytest.mark.parametrize("prefill", [2, 5])  # shorter and longer than the conv window (the ring's size)
def test_cached_decoding_equals_full_forward(prefill):
    torch.manual_seed(0)
    model = GPT(cfg(mem_qconv=4)).eval()
    with torch.no_grad():
        for m in model.memories:  # a non-trivial conv, so a wrong cache would show
            m.conv.normal_()
        model.refresh()
        idx = torch.randint(0, 61, (2, 12))
        full = model(idx)[0]
        model.setup_caches(3, 12)  # a cache for more sequences than the batch uses
        steps = [model(idx[:, :prefill], input_pos=torch.arange(prefill))[0]]
        for t in range(prefill, 12):
            steps.append(model(idx[:, t:t + 1], input_pos=torch.tensor([t]))[0])
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-5, atol=1e-5)
    for m in model.memories:  # the third sequence's ring is untouched
        assert m.conv_cache[2:].abs().sum() == 0 and m.conv_cache[:2].abs().sum() > 0


def test_decoding_reads_the_keys_normalised_by_setup_cache():
    """A decode step normalises no keys: it reads setup_cache's copy (stale by design until the next
    setup_caches, which GPT.generate calls every time), so changing the keys afterwards changes nothing."""
    torch.manual_seed(0)
    model = GPT(cfg()).eval()
    idx = torch.randint(0, 61, (2, 1))
    with torch.no_grad():
        model.setup_caches(2, 4)
        before = model(idx, input_pos=torch.tensor([0]))[0]
        for m in model.memories:
            torch.testing.assert_close(m.keys_cache, m._norm(m.keys, m.key_norm))
            m.keys.mul_(-1)
        assert torch.equal(model(idx, input_pos=torch.tensor([0]))[0], before)
        model.setup_caches(2, 4)
        assert not torch.equal(model(idx, input_pos=torch.tensor([0]))[0], before)


def test_ablation_ladder_adds_one_step_per_row():
    names = sorted(os.listdir(os.path.join(ROOT, "config", "ablation")))
    assert len(names) == 12 and names[0] == "00_pkm.py" and names[-1] == "11_query_conv.py"
    resolved = []
    for n in names:
        c = GPTConfig.from_dict(config_file(os.path.join("ablation", n)))
        with torch.device("meta"):
            model = GPT(c)
        sparse = sum(m.values.numel() for m in model.memories)
        assert abs(sparse / 1.5e9 - 1) < 0.05 and abs(model.num_params(activated=True) / 151e6 - 1) < 0.2
        resolved.append({f: getattr(c, f) for f in vars(c) if f.startswith("mem_") and f != "mem_knum"})
    changed = [{k for k in a if a[k] != b[k]} for a, b in zip(resolved, resolved[1:])]
    assert changed == [{"mem_softmax"}, {"mem_value_proj"}, {"mem_share_query"}, {"mem_layers"}, {"mem_qk_norm"},
                       {"mem_expand"}, {"mem_tdqkr", "mem_tucker_alpha"}, {"mem_cores"}, {"mem_init"},
                       {"mem_value_lr_mult"}, {"mem_qconv"}]  # TDQKR comes with its aux loss
    full = GPTConfig.from_dict({**config_file("ablation/11_query_conv.py")})
    assert all(getattr(full, k) == f.default for k, f in GPTConfig.__dataclass_fields__.items()
               if k.startswith("mem_") and k not in ("mem_layers", "mem_knum", "mem_kdim", "mem_heads", "mem_topm"))


@pytest.mark.parametrize("name", ["ultramem_small.py", "pkm_small.py"])
def test_small_configs_train_a_step(name):
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_dict({**config_file(name), "vocab_size": 64, "block_size": 16}))
    idx = torch.randint(0, 64, (2, 16))
    _, loss, aux = model(idx, idx)
    (loss + sum(aux.values())).backward()
    assert torch.isfinite(loss) and model.memories[0].values.grad.abs().sum() > 0


def test_compiles_fullgraph_forward_backward():
    """One graph for forward and backward of a tiny UltraMem GPT (query conv, TDQKR, MCS, IVE, aux loss):
    no graph break. aot_eager traces the joint graph without the slow CPU code generation."""
    torch.manual_seed(0)
    model = GPT(cfg())
    idx = torch.randint(0, 61, (2, 9))
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return torch._dynamo.lookup_backend("aot_eager")(gm, example_inputs)

    def step(m):
        model.zero_grad()
        _, loss, aux = m(idx, idx)
        total = loss + sum(aux.values())
        total.backward()
        return total.detach(), [p.grad.clone() for p in model.memories.parameters()]

    torch._dynamo.reset()
    compiled_loss, compiled_grads = step(torch.compile(model, fullgraph=True, dynamic=False, backend=backend))
    assert len(graphs) == 1
    loss, grads = step(model)
    torch.testing.assert_close(compiled_loss, loss)
    for a, b in zip(compiled_grads, grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
