"""scripts/eval_text.py: a checkpoint's loss on a text file, against the same loss computed directly."""

import json
import math
import os
import subprocess
import sys
from dataclasses import asdict

import pytest
import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from model import GPT, GPTConfig  # noqa: E402

SCRIPT = os.path.join(ROOT, "scripts", "eval_text.py")
CHARS = "abcdefghijklmnopqrstuvwxyz .,\n"
TEXT = "the cat sat on the mat, and the dog sat on the log.\nso it goes. " * 3  # 195 characters


def _checkpoint(folder, **kw) -> GPT:
    """A tiny UltraMem GPT (random weights) saved as train.py saves one, on the char tokenizer of CHARS."""
    args = dict(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=32, memory="ultramem", mem_layers="0:1",
                mem_knum=4, mem_kdim=8, mem_heads=2, mem_topm=3, mem_vdim=16, mem_qconv=3)
    args.update(kw)
    torch.manual_seed(0)
    model = GPT(GPTConfig(**args))
    os.makedirs(folder, exist_ok=True)
    meta = {"tokenizer": "char", "chars": CHARS, "vocab_size": len(CHARS) + 1, "eot_token": len(CHARS)}
    torch.save({"model": model.state_dict(), "model_args": asdict(model.config), "step": 7, "meta": meta},
               os.path.join(folder, "ckpt.pt"))
    return model.eval()


def _run(*args):
    return subprocess.run([sys.executable, SCRIPT, *args, "--progress=False"], capture_output=True, text=True,
                          timeout=300)


def _direct_loss(model: GPT, ids: list[int]) -> float:
    """Every id after the first predicted once from its window's context: windows of block_size inputs."""
    T, total, n = model.config.block_size, 0.0, len(ids) - 1
    with torch.no_grad():
        for s in range(0, n, T):
            x = torch.tensor(ids[s : min(s + T, n)])[None]
            y = torch.tensor(ids[s + 1 : min(s + T, n) + 1])
            total += F.cross_entropy(model(x)[0][0], y, reduction="sum").item()
    return total / n


@pytest.mark.parametrize("batch_size,max_tokens", [(3, 0), (1, 40)])  # a remainder window; a cut text
def test_loss_equals_the_direct_computation(tmp_path, batch_size, max_tokens):
    model = _checkpoint(tmp_path / "run")
    (tmp_path / "t.txt").write_text(TEXT)
    r = _run(f"--out_dir={tmp_path / 'run'}", f"--text={tmp_path / 't.txt'}", f"--batch_size={batch_size}",
             f"--max_tokens={max_tokens}", f"--out={tmp_path / 'r.json'}")
    assert r.returncode == 0, r.stderr
    res = json.loads((tmp_path / "r.json").read_text())
    chars = TEXT[:max_tokens] if max_tokens else TEXT
    ids = [len(CHARS)] + [CHARS.index(c) for c in chars]  # the eot id first, as after a document in training
    assert res["tokens"] == len(chars) and res["step"] == 7 and res["block_size"] == 16
    assert res["loss"] == pytest.approx(_direct_loss(model, ids), rel=1e-5)
    assert res["perplexity"] == pytest.approx(math.exp(res["loss"]))
    assert f"over {len(chars):,} tokens" in r.stdout


@pytest.mark.parametrize("case", ["no_ckpt", "no_text", "empty_text", "unknown_char", "block_too_big", "corrupt"])
def test_bad_inputs_are_one_line_errors(tmp_path, case):
    run = tmp_path / "run"
    if case != "no_ckpt":
        _checkpoint(run)
    text = tmp_path / "t.txt"
    text.write_text({"empty_text": "", "unknown_char": "Capital letters"}.get(case, TEXT))
    if case == "no_text":
        text.unlink()
    if case == "corrupt":
        (run / "ckpt.pt").write_bytes(b"not a checkpoint")
    extra = ["--block_size=64"] if case == "block_too_big" else []
    r = _run(f"--out_dir={run}", f"--text={text}", *extra)
    assert r.returncode == 1, (case, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), (case, r.stderr)


def test_mem_decode_is_the_checkpoints_unless_given(tmp_path):
    """--mem_decode: "" keeps the checkpoint's setting, "plain" or "fused" replaces it (train.model_from_checkpoint,
    shared with sample.py and data/facts/recall.py); both give the same loss; a bad value is a one-line error."""
    from train import load_checkpoint, model_from_checkpoint

    model = _checkpoint(tmp_path / "run", mem_decode="plain")
    ckpt = load_checkpoint(str(tmp_path / "run" / "ckpt.pt"))
    assert model.memories[0].tdqkr  # the setting matters only with TDQKR
    assert model_from_checkpoint(ckpt).config.mem_decode == "plain"
    loaded = model_from_checkpoint(ckpt, "fused")
    assert loaded.config.mem_decode == "fused" and not loaded.training
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    (tmp_path / "t.txt").write_text(TEXT)
    losses = []
    for setting, ran in (("", "plain"), ("fused", "fused")):
        r = _run(f"--out_dir={tmp_path / 'run'}", f"--text={tmp_path / 't.txt'}", f"--mem_decode={setting}",
                 f"--out={tmp_path / 'r.json'}")
        assert r.returncode == 0, r.stderr
        res = json.loads((tmp_path / "r.json").read_text())
        assert res["mem_decode"] == ran  # the setting the model ran with
        losses.append(res["loss"])
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)
    r = _run(f"--out_dir={tmp_path / 'run'}", f"--text={tmp_path / 't.txt'}", "--mem_decode=fast")
    assert r.returncode == 1 and r.stderr.strip().splitlines() == [
        "error: mem_decode must be '', 'plain' or 'fused', got 'fast'"], r.stderr
