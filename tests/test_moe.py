import math
import os

import pytest
import torch
import torch.nn.functional as F

from configurator import read_config_file
from model import GPT, GPTConfig, MoE

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def moe_cfg(**kw) -> GPTConfig:
    args = dict(n_layer=2, n_head=4, n_embd=64, block_size=32, vocab_size=128, ffn="moe",
                moe_num_experts=8, moe_top_k=2, moe_hidden=96, moe_aux_coef=0.01, moe_z_coef=1e-3)
    args.update(kw)
    return GPTConfig(**args)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def run(moe: MoE, x: torch.Tensor, impl: str, grad_out: torch.Tensor):
    """Output, aux and the gradients of x, w_fc, w_proj, router of sum(y * grad_out) + sum(aux)."""
    moe.impl = impl
    moe.zero_grad()
    x = x.detach().clone().requires_grad_()
    y, aux = moe(x)
    ((y.float() * grad_out).sum() + sum(aux.values())).backward()
    return y.detach(), aux, [x.grad, moe.w_fc.grad, moe.w_proj.grad, moe.router.weight.grad]


def by_hand(moe: MoE, x: torch.Tensor) -> torch.Tensor:
    """Each token's output from its own k experts, one token at a time (fp32)."""
    xs = x.reshape(-1, x.shape[-1]).float()
    out = []
    for t in range(xs.shape[0]):
        p = torch.softmax(xs[t] @ moe.router.weight.float().T, dim=-1).tolist()
        chosen = sorted(range(len(p)), key=lambda e: -p[e])[: moe.top_k]
        norm = sum(p[e] for e in chosen) if moe.renorm else 1.0
        y = sum(p[e] / norm * (F.gelu(xs[t] @ moe.w_fc[e].float()) @ moe.w_proj[e].float()) for e in chosen)
        out.append(y)
    return torch.stack(out).view(x.shape)


# ----------------------------------------------------------------------------------------------------
# the grouped path (sort by expert, torch._grouped_mm, un-permute) against the reference loop


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_grouped_equals_loop(dtype):
    torch.manual_seed(0)
    moe = MoE(moe_cfg()).to(dtype)
    x = torch.randn(3, 11, 64, dtype=dtype)
    g = torch.randn(3, 11, 64)
    y_ref, aux_ref, grads_ref = run(moe, x, "loop", g)
    y, aux, grads = run(moe, x, "grouped", g)
    # the grouped path computes in bf16 (its compile-time shape function accepts nothing else): ~0.5%
    # relative error. A permutation bug (a token getting another token's expert output) is ~100%.
    tol = 0.02
    assert rel_err(y, y_ref) < tol
    assert rel_err(y, y_ref[:, torch.randperm(11)]) > 0.5  # the tolerance does catch a permutation
    for name, a, b in zip(["x", "w_fc", "w_proj", "router"], grads, grads_ref):
        assert rel_err(a, b) < tol, name
    for k in aux_ref:  # routing is shared, so the auxiliary losses agree exactly
        assert torch.equal(aux[k], aux_ref[k])


@pytest.mark.parametrize("impl", ["loop", "grouped"])
def test_dropless_under_imbalance(impl):
    """Every token reaches its k experts, even when all tokens choose the same two (a capacity factor of
    1.25 would drop most of them)."""
    torch.manual_seed(0)
    moe = MoE(moe_cfg(moe_num_experts=4))
    with torch.no_grad():
        moe.router.weight.normal_(std=0.01)
        moe.router.weight[0] += 1.0 / 64  # positive inputs: experts 0 and 1 win for every token
        moe.router.weight[1] += 0.9 / 64
    x = torch.randn(2, 16, 64) + 3.0
    moe.impl = impl
    y, _ = moe(x)
    logits = x.reshape(-1, 64) @ moe.router.weight.T
    assert set(logits.topk(2, dim=-1).indices.flatten().tolist()) == {0, 1}
    torch.testing.assert_close(y, by_hand(moe, x), rtol=0.02, atol=0.02 * by_hand(moe, x).abs().max().item())
    # and with an ordinary random router, without renormalisation
    moe2 = MoE(moe_cfg(moe_renorm=False))
    moe2.impl = impl
    x2 = torch.randn(2, 16, 64)
    ref = by_hand(moe2, x2)
    assert rel_err(moe2(x2)[0], ref) < (1e-5 if impl == "loop" else 0.02)


def test_unused_experts_are_not_read_and_get_zero_gradient():
    """An expert no token chose contributes nothing (its weights may be NaN) and its gradient is exactly
    zero: the grouped kernel sees an empty group."""
    torch.manual_seed(0)
    for impl in ["loop", "grouped"]:
        moe = MoE(moe_cfg(moe_num_experts=4))
        with torch.no_grad():
            moe.router.weight.zero_()
            moe.router.weight[0] = 1.0 / 64
            moe.router.weight[1] = 0.9 / 64
        x = torch.randn(2, 8, 64) + 3.0
        ref = by_hand(moe, x)
        with torch.no_grad():
            moe.w_fc[2:] = float("nan")
            moe.w_proj[2:] = float("nan")
        moe.impl = impl
        y, _ = moe(x)
        assert torch.isfinite(y).all(), impl
        assert rel_err(y, ref) < 0.02
        y.sum().backward()
        assert torch.equal(moe.w_fc.grad[2:], torch.zeros_like(moe.w_fc.grad[2:])), impl
        assert moe.w_fc.grad[:2].abs().sum() > 0


# ----------------------------------------------------------------------------------------------------
# auxiliary losses


def test_balance_and_z_loss_on_hand_made_routing():
    # the router is the identity on the first 4 coordinates: each token's logits are written below
    moe = MoE(moe_cfg(n_embd=8, n_head=2, moe_num_experts=4, moe_hidden=8, moe_aux_coef=0.1, moe_z_coef=0.01))
    logits = [[2.0, 1.0, 0.0, 0.0],  # top-2: experts 0, 1
              [2.0, 0.0, 1.0, 0.0],  # 0, 2
              [0.0, 2.0, 0.0, 1.0],  # 1, 3
              [3.0, 0.0, 0.0, 1.0]]  # 0, 3
    with torch.no_grad():
        moe.router.weight.copy_(torch.eye(4, 8))
    x = torch.zeros(1, 4, 8)
    x[0, :, :4] = torch.tensor(logits)
    _, aux = moe(x)
    f = [3 / 8, 2 / 8, 1 / 8, 2 / 8]  # token-slots per expert over the 4 x 2 choices
    probs = [[math.exp(v) / sum(math.exp(u) for u in row) for v in row] for row in logits]
    P = [sum(p[e] for p in probs) / 4 for e in range(4)]
    balance = 0.1 * 4 * sum(fe * pe for fe, pe in zip(f, P))
    z = 0.01 * sum(math.log(sum(math.exp(v) for v in row)) ** 2 for row in logits) / 4
    assert aux["moe_balance"].item() == pytest.approx(balance, rel=1e-6)
    assert aux["moe_z"].item() == pytest.approx(z, rel=1e-6)
    assert balance > 0.1  # this imbalanced routing costs more than a uniform router's 1 x coef


def test_uniform_router_gives_one():
    moe = MoE(moe_cfg(moe_aux_coef=0.05, moe_z_coef=0.0))
    with torch.no_grad():
        moe.router.weight.zero_()
    _, aux = moe(torch.randn(2, 9, 64))
    assert set(aux) == {"moe_balance"}  # no z-loss when its coefficient is 0
    assert aux["moe_balance"].item() == pytest.approx(0.05, rel=1e-6)


# ----------------------------------------------------------------------------------------------------
# the model: counters, init, decoding, configs, compile


def test_counters_by_hand():
    cfg = moe_cfg(pos_emb="rope")
    model = GPT(cfg)
    D, L, V, E, k, Fh = 64, 2, 128, 8, 2, 96
    per_block = 2 * D + 4 * D * D + E * D + E * 2 * D * Fh  # 2 LayerNorms, attention, router, experts
    assert model.num_params() == V * D + L * per_block + D
    active_block = 2 * D + 4 * D * D + E * D + k * 2 * D * Fh  # the router and k experts
    assert model.num_params(activated=True) == V * D + L * active_block + D
    assert model.flops_per_token() == 2 * (L * (4 * D * D + E * D + k * 2 * D * Fh) + V * D)


def test_init():
    torch.manual_seed(0)
    model = GPT(moe_cfg(n_layer=8, moe_hidden=256, init_std=0.02))
    moe = model.blocks[0].ffn
    assert moe.w_fc.std().item() == pytest.approx(0.02, rel=0.02)
    assert moe.w_proj.std().item() == pytest.approx(0.02 / math.sqrt(16), rel=0.02)
    assert moe.router.weight.std().item() == pytest.approx(0.02, rel=0.05)


def test_gpt_aux_and_cached_decoding():
    torch.manual_seed(0)
    model = GPT(moe_cfg())
    idx = torch.randint(0, 128, (2, 20))
    with torch.no_grad():
        _, _, aux = model(idx, idx)  # training mode: the auxiliary objectives
        assert set(aux) == {"moe_balance", "moe_z"}
        assert 2 * 0.01 * 0.9 < aux["moe_balance"].item() < 2 * 0.01 * 2  # summed over 2 layers, near 1 each
        model.eval()
        full, loss, aux = model(idx, idx)
        assert aux == {}  # inference (eval, no grad): nothing to add to, so nothing computed
        model.setup_caches(batch_size=2, max_len=32)
        pre = model(idx[:, :11], input_pos=torch.arange(11))[0]
        steps = [model(idx[:, t : t + 1], input_pos=torch.tensor([t]))[0] for t in range(11, 20)]
    torch.testing.assert_close(torch.cat([pre] + steps, dim=1), full, rtol=1e-5, atol=1e-5)


def test_small_config_builds():
    cfg = read_config_file(os.path.join(ROOT, "config", "moe_small.py"))
    model = GPT(GPTConfig.from_dict({**cfg, "vocab_size": 128}))
    _, loss, aux = model(torch.randint(0, 128, (2, 16)), torch.randint(0, 128, (2, 16)))
    assert torch.isfinite(loss) and set(aux) == {"moe_balance", "moe_z"}


@pytest.mark.parametrize("kw,msg", [
    (dict(bias=True), "no biases"),
    (dict(moe_hidden=100), "multiples of 8"),
    (dict(moe_top_k=9), "moe_top_k"),
    (dict(moe_impl="scatter"), "moe_impl"),
])
def test_bad_moe_config(kw, msg):
    with pytest.raises(ValueError, match=msg):
        moe_cfg(**kw)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("impl", ["triton", "gather", "fused"])
def test_decode_paths_equal_loop(dtype, impl):
    """moe_impl="triton" (kernels.moe_grouped_mm), "gather" (kernels.moe_gather_mm) and "fused"
    (kernels.moe_decode, routing included), on the CPU their references, in inference equal the loop; under
    grad mode with trainable weights they refuse (inference only) instead of losing the gradient, and "fused",
    which computes no auxiliary losses, refuses training mode too."""
    torch.manual_seed(0)
    moe = MoE(moe_cfg()).to(dtype).eval()
    x = torch.randn(5, 1, 64, dtype=dtype)  # decoding: a token per sequence
    with torch.no_grad():
        moe.impl = "loop"
        ref, aux = moe(x)
        moe.impl = impl
        y, aux_impl = moe(x)
    assert aux == aux_impl == {}
    tol = 0.02 if impl == "triton" or dtype == torch.bfloat16 else 1e-5  # triton computes in bf16; gather in the weights' dtype
    assert rel_err(y, ref) < tol
    assert rel_err(y, ref[torch.randperm(5)]) > 0.5
    with pytest.raises(RuntimeError, match="inference only"):
        moe(x)
    if impl == "fused":
        moe.train()
        with torch.no_grad(), pytest.raises(RuntimeError, match="model.eval"):
            moe(x)


@pytest.mark.parametrize("impl", ["loop", "fused"])
def test_residual_added(impl):
    """MoE(x, residual=r) is r + MoE(x), as Block.forward takes it: the loop adds the rounded output, the fused
    layer (kernels.moe_decode) adds r to its fp32 sums and rounds once, so the two agree to a rounding."""
    torch.manual_seed(1)
    moe = MoE(moe_cfg()).to(torch.bfloat16).eval()
    moe.impl = impl
    x, r = torch.randn(5, 1, 64, dtype=torch.bfloat16), torch.randn(5, 1, 64, dtype=torch.bfloat16)
    with torch.no_grad():
        y, _ = moe(x)
        y_res, aux = moe(x, residual=r)
    assert aux == {} and y_res.dtype == torch.bfloat16 and y_res.shape == r.shape
    if impl == "loop":
        assert torch.equal(y_res, r + y)
    else:
        assert rel_err(y_res, r + y) < 1e-2 and not torch.equal(y_res, y)


def test_auto_impl_policy():
    """moe_impl="auto": the fused layer for inference of up to MOE_FUSED_MAX_TOKENS tokens (and at most
    MOE_DECODE_MAX_SLOTS token-slots), the Triton kernel up to MOE_TRITON_MAX_TOKENS, grouped for training and
    prefills, the loop on CPU."""
    import kernels
    import model
    moe = MoE(moe_cfg())
    assert moe.auto_impl(1, cuda=True) == "grouped"  # training mode, grad on
    moe.eval()
    assert moe.auto_impl(1, cuda=True) == "grouped"  # grad on: a training-like forward
    with torch.no_grad():
        assert moe.auto_impl(1, cuda=False) == "loop"
        assert moe.auto_impl(1, cuda=True) == "fused"
        assert moe.auto_impl(model.MOE_FUSED_MAX_TOKENS, cuda=True) == "fused"
        assert moe.auto_impl(model.MOE_FUSED_MAX_TOKENS + 1, cuda=True) == "triton"
        assert moe.auto_impl(model.MOE_TRITON_MAX_TOKENS + 1, cuda=True) == "grouped"
        moe.top_k = kernels.MOE_DECODE_MAX_SLOTS  # too many slots for the fused layer's tile
        assert moe.auto_impl(2, cuda=True) == "triton"
        moe.top_k = 2
        moe.train()
        assert moe.auto_impl(1, cuda=True) == "triton"  # training mode under no_grad: aux losses wanted


def test_compiles_fullgraph_forward_backward():
    """One compile with fullgraph=True (a graph break raises) and static shapes, through a backend that
    fails on any data-dependent value in the captured graph (torch 2.13 captures .item() and nonzero() as
    unbacked symbols instead of breaking the graph; on a GPU either is a host sync), then traces forward
    and backward with aot_eager (AOTAutograd as inductor uses it, without CPU code generation, which
    takes up to a minute here; the GPU runs compile with inductor)."""
    torch.manual_seed(0)
    cfg = moe_cfg(n_layer=1, n_head=2, n_embd=32, block_size=16, vocab_size=64, moe_num_experts=4, moe_hidden=32,
                  moe_impl="grouped")
    model = GPT(cfg)
    idx, tgt = torch.randint(0, 64, (2, 2, 8))
    seen = []

    def static_only(gm, example_inputs):
        for node in gm.graph.nodes:
            val = node.meta.get("example_value")
            vals = val if isinstance(val, (tuple, list)) else [val]
            for v in vals:
                sizes = list(v.shape) if isinstance(v, torch.Tensor) else [v]
                assert not any(isinstance(s, (torch.SymInt, torch.SymFloat, torch.SymBool)) for s in sizes), \
                    f"data-dependent value at {node.format_node()}"
        seen.append(gm)
        return torch._dynamo.lookup_backend("aot_eager")(gm, example_inputs)

    def step(m):
        model.zero_grad()
        _, loss, aux = m(idx, tgt)
        total = loss + sum(aux.values())
        total.backward()
        return total.detach(), [p.grad.clone() for p in model.blocks[0].ffn.parameters()]

    compiled_loss, compiled_grads = step(torch.compile(model, fullgraph=True, dynamic=False, backend=static_only))
    assert len(seen) == 1
    assert any(n.target is torch._grouped_mm for n in seen[0].graph.nodes)  # the grouped path was traced
    loss, grads = step(model)
    torch.testing.assert_close(compiled_loss, loss, rtol=1e-4, atol=1e-4)
    for a, b in zip(compiled_grads, grads):
        assert rel_err(a, b) < 0.02
