import math
import os

import pytest
import torch

from configurator import read_config_file
from model import GPT, GPTConfig, decode_one_token

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny(**kw) -> GPTConfig:
    args = dict(n_layer=2, n_head=4, n_embd=64, block_size=32, vocab_size=101)
    args.update(kw)
    return GPTConfig(**args)


def config_file(name: str) -> dict:
    return read_config_file(os.path.join(ROOT, "config", name))


def test_shapes_and_initial_loss():
    torch.manual_seed(0)
    model = GPT(tiny())
    idx, targets = torch.randint(0, 101, (2, 3, 17))
    logits, loss, aux = model(idx, targets)
    assert logits.shape == (3, 17, 101)
    assert aux == {}
    # small init: the untrained model is close to uniform over the vocabulary
    assert abs(loss.item() - math.log(101)) < 0.1
    logits2, loss2, _ = model(idx)
    assert loss2 is None and torch.equal(logits, logits2)


@pytest.mark.parametrize("pos_emb,n_kv_head,attn_decode", [("rope", 4, "sdpa"), ("rope", 2, "sdpa"), ("learned", 1, "sdpa"),
                                                        ("rope", 4, "matmul"), ("rope", 1, "matmul"),
                                                        ("rope", 4, "flex"), ("rope", 2, "flex"),
                                                        ("rope", 4, "triton"), ("learned", 1, "triton")])
@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")  # eager: unfused, fine here
def test_cached_decoding_equals_full_forward(pos_emb, n_kv_head, attn_decode):
    torch.manual_seed(0)
    model = GPT(tiny(pos_emb=pos_emb, n_kv_head=n_kv_head, attn_decode=attn_decode)).eval()
    idx = torch.randint(0, 101, (2, 20))
    with torch.no_grad():
        full = model(idx)[0]
        model.setup_caches(batch_size=3, max_len=32)  # a cache for more sequences than the batch uses
        pre = model(idx[:, :11], input_pos=torch.arange(11))[0]
        steps = [model(idx[:, t : t + 1], input_pos=torch.tensor([t]))[0] for t in range(11, 20)]
    cached = torch.cat([pre] + steps, dim=1)
    torch.testing.assert_close(cached, full, rtol=1e-5, atol=1e-5)
    for block in model.blocks:  # only the first 2 sequences' rows and the 20 positions were written
        c = block.attn.kv_cache
        assert c.k[2:].abs().sum() == 0 and c.v[2:].abs().sum() == 0 and c.k[:, :, 20:].abs().sum() == 0
        assert c.k[:2, :, :20].abs().sum() > 0


def test_greedy_generate_matches_uncached_argmax():
    torch.manual_seed(0)
    model = GPT(tiny()).eval()
    prompt = torch.randint(0, 101, (2, 5))
    out = model.generate(prompt, max_new_tokens=8, temperature=0)
    ref = prompt
    with torch.no_grad():
        for _ in range(8):  # the nanoGPT way: recompute the whole prefix for every token
            ref = torch.cat([ref, model(ref)[0][:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, ref)
    with pytest.raises(ValueError, match="block_size"):
        model.generate(prompt, max_new_tokens=40)


@pytest.mark.parametrize("attn_decode", ["sdpa", "flex", "triton"])
@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")  # the eager reference run
def test_decode_step_compiles_fullgraph(attn_decode):
    torch.manual_seed(0)
    model = GPT(tiny(n_kv_head=2, attn_decode=attn_decode)).eval()
    prompt = torch.randint(0, 101, (2, 6))
    step = torch.compile(decode_one_token, fullgraph=True)  # fullgraph: any graph break raises
    out = model.generate(prompt, max_new_tokens=5, temperature=0, decode_step=step)
    ref = model.generate(prompt, max_new_tokens=5, temperature=0)
    assert torch.equal(out, ref)


def test_counters_by_hand():
    cfg = tiny(bias=False, pos_emb="learned")
    model = GPT(cfg)
    D, L, V, T, F = 64, 2, 101, 32, 256
    per_block = 2 * D + (D * 3 * D + D * D) + (D * F + F * D)  # 2 LayerNorms, attention, MLP
    total = V * D + T * D + L * per_block + D  # tied embedding counted once, positions, final norm
    assert model.num_params() == total
    assert model.num_params(activated=True) == total  # dense: everything is activated
    matmul = L * (4 * D * D + 2 * D * F) + D * V  # the tied embedding counts once, as the output head
    assert model.flops_per_token() == 2 * matmul
    assert model.flops_per_token(with_attention=True, seq_len=T) == 2 * matmul + 4 * L * D * T
    # MFU uses nanoGPT's count: 6N + 12 L H Q T with N the parameters without the position table
    n = total - T * D
    assert model.train_flops_per_token() == pytest.approx(6 * n - 6 * (2 * L * D + D) + 12 * L * D * T)
    assert model.estimate_mfu(1000.0, 1e12) == pytest.approx(1000 * model.train_flops_per_token() / 1e12)


TABLE_1 = {  # the paper's Table 1: total parameters, forward FLOPs per token
    "dense_151m.py": (0.15e9, 0.30e9), "dense_680m.py": (0.68e9, 1.36e9), "dense_1p6b.py": (1.61e9, 3.21e9),
    "moe_151m_2in32.py": (2.04e9, 0.35e9), "moe_680m_2in33.py": (8.95e9, 1.50e9), "moe_1p6b_2in34.py": (21.36e9, 3.52e9),
    "ultramem_151m.py": (2.03e9, 0.35e9), "ultramem_680m.py": (8.93e9, 1.49e9), "ultramem_1p6b.py": (21.41e9, 3.50e9),
}


@pytest.mark.parametrize("name", sorted(TABLE_1))
def test_configs_match_table_1(name):
    with torch.device("meta"):
        model = GPT(GPTConfig.from_dict(config_file(name)))
    params, flops = TABLE_1[name]
    assert abs(model.num_params() / params - 1) < 0.10
    assert abs(model.flops_per_token() / flops - 1) < 0.10
    if model.memories:  # "x12": sparse parameters about 12x the activated ones
        sparse = sum(m.values.numel() for m in model.memories)
        assert 9 < sparse / model.num_params(activated=True) < 13


FIG6C = {  # config/fig6c/*.py (and the x12 pair): billions of parameters as their comments state
    "fig6c/ultramem_6b.py": 6.63, "fig6c/ultramem_12b.py": 11.55, "ultramem_1p6b.py": 21.41, "fig6c/ultramem_41b.py": 41.10,
    "fig6c/moe_2in10.py": 6.58, "fig6c/moe_2in18.py": 11.37, "moe_1p6b_2in34.py": 20.93, "fig6c/moe_2in68.py": 41.25}


def test_fig6c_sweep_counts():
    """Figure 6c's sweep: each file is its x12 base with one key changed (read through the base), the total
    parameters its comment states, 1.72-1.81B activated, and UltraMem and MoE paired at equal totals (3%)."""
    totals = {}
    for name, billions in FIG6C.items():
        settings = config_file(name)
        if name.startswith("fig6c/"):
            assert settings["out_dir"] == "out/fig6c/" + name[6:-3] and settings["n_layer"] == 30
        with torch.device("meta"):
            model = GPT(GPTConfig.from_dict(settings))
        totals[name] = model.num_params() / 1e9
        assert totals[name] == pytest.approx(billions, abs=0.006), name
        assert 1.72 <= model.num_params(activated=True) / 1e9 <= 1.81, name
    mem, moe = [v for k, v in totals.items() if "ultramem" in k], [v for k, v in totals.items() if "moe" in k]
    assert all(abs(a / b - 1) < 0.03 for a, b in zip(mem, moe)), totals


def test_gpt2_small_matches_nanogpt():
    with torch.device("meta"):
        model = GPT(GPTConfig.from_dict(config_file("gpt2_small.py")))
    assert model.num_params() == 124_373_760  # nanoGPT GPT-2 with bias=False, vocab 50304: 123.59M + the 0.79M position table


def test_optimizer_groups_and_tags():
    model = GPT(tiny())
    model.blocks[0].ffn.param_tags = lambda: {"c_fc.weight": {"lr_mult": (4.0, 1.0)}}
    groups = model.optim_groups(weight_decay=0.1)
    by_name = {n: g for g in groups for n in g["names"]}
    assert by_name["blocks.0.ffn.c_fc.weight"]["lr_mult_start"] == 4.0
    assert by_name["blocks.1.ffn.c_fc.weight"]["lr_mult_start"] == 1.0
    for name, g in by_name.items():  # matrices decay, vectors (norm weights) do not
        p = dict(model.named_parameters())[name]
        assert g["weight_decay"] == (0.1 if p.dim() >= 2 else 0.0)
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


@pytest.mark.parametrize("kw,msg", [
    (dict(n_embd=60, n_head=7), "divisible by n_head"),
    (dict(n_kv_head=3), "divisible by n_kv_head"),
    (dict(pos_emb="alibi"), "pos_emb"),
    (dict(ffn="swiglu"), "ffn"),
])
def test_bad_model_config(kw, msg):
    with pytest.raises(ValueError, match=msg):
        tiny(**kw)


def test_state_dict_round_trip():
    torch.manual_seed(0)
    a = GPT(tiny())
    torch.manual_seed(1)
    b = GPT(tiny())
    b.load_state_dict(a.state_dict())
    idx = torch.randint(0, 101, (2, 9))
    assert torch.equal(a(idx)[0], b(idx)[0])
