"""
Loss of a trained checkpoint on any UTF-8 text: issue 7's check of the small models on English outside
medium_mix (docs/RESULTS.md), usable on any run of train.py.

    python scripts/eval_text.py --out_dir=out/small/ultramem_s1 --text=../shared/data/tinyshakespeare.txt
                                [--max_tokens=0] [--batch_size=8] [--block_size=0] [--device=auto] [--dtype=auto]
                                [--out=FILE.json] [--mem_decode=plain|fused]

The text is encoded with the checkpoint's own tokenizer (GPT-2 for medium_mix, the alphabet for a char
dataset) after one end-of-text token, as a document follows one in training. The ids are cut into
consecutive windows of block_size inputs (0: the model's), each input predicting the next id, so every id but
the leading end-of-text is predicted exactly once, the first ones of each window with a shorter context. The
mean cross-entropy per predicted token (nats) and its perplexity are printed, and written with the counts to
--out as JSON when given. --mem_decode replaces the checkpoint's setting of TDQKR's no-gradient retrieval
(memory.py; "" keeps it). max_tokens > 0 scores only the text's first max_tokens ids. A missing or corrupt
checkpoint, a missing or empty text, or a character the tokenizer does not know stops with one line and
status 1.
"""

import json
import math
import os
import sys
from contextlib import nullcontext

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # repo root
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from tqdm import tqdm  # noqa: E402

from data.common import get_tokenizer  # noqa: E402
from model import GPT  # noqa: E402
from train import Fatal, load_checkpoint, model_from_checkpoint, run_or_exit  # noqa: E402

DEFAULTS = dict(out_dir="", text="", max_tokens=0, batch_size=8, block_size=0, device="auto", dtype="auto", out="",
                progress=True, mem_decode="")  # mem_decode: "" = the checkpoint's, "plain" | "fused" (memory.py)


def encode_text(path: str, tok, max_tokens: int) -> torch.Tensor:
    """The eot id, then the text's ids (the first max_tokens of them when > 0), as int64."""
    if not os.path.isfile(path):
        raise Fatal(f"text file not found: {path}")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        ids = tok.encode(text)
    except ValueError as e:  # a character the char tokenizer does not know
        raise Fatal(f"cannot encode {path} with the checkpoint's tokenizer: {e}")
    if max_tokens > 0:
        ids = ids[:max_tokens]
    if not ids:
        raise Fatal(f"{path} holds no text to score")
    return torch.tensor([tok.eot_token] + ids, dtype=torch.long)


@torch.no_grad()
def text_loss(model: GPT, ids: torch.Tensor, block_size: int, batch_size: int, device: str, ctx=nullcontext(),
              progress: bool = False) -> tuple[float, int]:
    """(sum of the cross-entropies in nats, number of predicted tokens) of ids (n,) under model: windows
    ids[i : i + block_size] predict ids[i + 1 : i + block_size + 1], i = 0, block_size, 2 block_size, ...;
    the full windows go in batches, the last, shorter one alone."""
    n = ids.numel() - 1  # predicted tokens
    starts = list(range(0, n, block_size))
    full = [s for s in starts if s + block_size <= n]
    batches = [full[b : b + batch_size] for b in range(0, len(full), batch_size)]
    if len(full) < len(starts):
        batches.append(starts[-1:])  # the remainder, shorter than a window
    total = 0.0
    bar = tqdm(total=n, unit="tok", disable=not progress, desc="eval")
    for chunk in batches:  # windows of one length each
        x = torch.stack([ids[s : min(s + block_size, n)] for s in chunk]).to(device)
        y = torch.stack([ids[s + 1 : min(s + block_size, n) + 1] for s in chunk]).to(device)
        with ctx:
            logits = model(x)[0]
        total += F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum").item()
        bar.update(y.numel())
    bar.close()
    return total, n


def main(argv: list[str]) -> None:
    from configurator import configure_or_exit

    cfg = configure_or_exit(DEFAULTS, argv, print_config=False)
    if not cfg["out_dir"] or not cfg["text"]:
        raise Fatal("--out_dir=RUN_FOLDER and --text=FILE.txt are required")
    if cfg["batch_size"] < 1 or cfg["block_size"] < 0 or cfg["max_tokens"] < 0:
        raise Fatal("batch_size must be >= 1, block_size and max_tokens >= 0")
    device = cfg["device"] if cfg["device"] != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if cfg["dtype"] not in ("auto", "float32", "bfloat16"):
        raise Fatal(f"dtype must be auto, float32 or bfloat16, got {cfg['dtype']!r}")
    dtype = cfg["dtype"] if cfg["dtype"] != "auto" else ("bfloat16" if device.startswith("cuda") else "float32")
    ckpt = load_checkpoint(os.path.join(cfg["out_dir"], "ckpt.pt"))
    if "meta" not in ckpt:
        raise Fatal(f"checkpoint in {cfg['out_dir']} names no tokenizer (no meta): not written by train.py")
    tok = get_tokenizer(ckpt["meta"])
    ids = encode_text(cfg["text"], tok, cfg["max_tokens"])
    model = model_from_checkpoint(ckpt, cfg["mem_decode"])
    model.to(device)
    model.refresh()
    block = cfg["block_size"] or model.config.block_size
    if block > model.config.block_size:
        raise Fatal(f"block_size {block} exceeds the model's {model.config.block_size}")
    ctx = torch.autocast(device.split(":")[0], dtype=torch.bfloat16) if dtype == "bfloat16" else nullcontext()
    total, n = text_loss(model, ids, block, cfg["batch_size"], device, ctx, cfg["progress"])
    loss = total / n
    res = {"out_dir": cfg["out_dir"], "text": cfg["text"], "step": ckpt["step"], "tokens": n, "block_size": block,
           "dtype": dtype, "mem_decode": model.config.mem_decode, "loss": loss, "perplexity": math.exp(loss)}
    print(f"{cfg['text']}: loss {loss:.4f} nats/token (perplexity {math.exp(loss):.2f}) over {n:,} tokens, "
          f"{cfg['out_dir']} at step {ckpt['step']}")
    if cfg["out"]:
        with open(cfg["out"], "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    run_or_exit(main, sys.argv[1:])
