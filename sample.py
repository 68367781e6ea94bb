"""
Sample from a trained checkpoint with the static KV cache (prefill, then one compiled step per token).

    python sample.py --out_dir=out/facts --start="Alia Brenmor was born in" --num_samples=3
    python sample.py --out_dir=out/dense_151m --start=FILE:prompt.txt --temperature=0.8 --top_k=200
"""

import os
import sys
import time
from contextlib import nullcontext

import torch

from model import decode_one_token
from train import Fatal, load_checkpoint, model_from_checkpoint, run_or_exit

DEFAULTS = dict(
    out_dir="out/facts",  # folder holding ckpt.pt
    start="\n",  # the prompt, or FILE:path to read it from a file
    num_samples=3,
    max_new_tokens=200,
    temperature=0.8,  # 0 is greedy
    top_k=200,  # keep the k most likely tokens; 0 keeps all
    seed=1337,
    device="auto",
    dtype="auto",  # "auto" (bfloat16 on CUDA, float32 on CPU) | "float32" | "bfloat16"
    compile=None,  # compile the decode step (fullgraph, CUDA graphs on GPU); None means on for CUDA
    mem_decode="",  # TDQKR's no-gradient retrieval: "" = the checkpoint's setting, "plain" | "fused" (memory.py)
    deterministic=True,  # kernels.set_deterministic: the MoE decode layer sums in a fixed order, so that the samples
    # of a seed do not vary with the order of its additions; False lets it add atomically, about 2 us faster per MoE
    # layer and token at batch 1 (docs/BENCHMARKS.md, MoE, session 14)
)


def main(argv: list[str]) -> None:
    from configurator import configure_or_exit
    from data.common import get_tokenizer

    cfg = configure_or_exit(DEFAULTS, argv, types={"compile": (bool, type(None))})
    import kernels
    kernels.set_deterministic(cfg["deterministic"])
    dev = cfg["device"] if cfg["device"] != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if dev.startswith("cuda") and not torch.cuda.is_available():
        raise Fatal(f"device={dev!r} but no CUDA device is available")
    device_type = "cuda" if dev.startswith("cuda") else "cpu"
    dtype = {"auto": torch.bfloat16 if device_type == "cuda" else torch.float32, "float32": torch.float32,
             "bfloat16": torch.bfloat16}.get(cfg["dtype"])
    if dtype is None:
        raise Fatal(f"dtype must be 'auto', 'float32' or 'bfloat16', got {cfg['dtype']!r}")
    if cfg["num_samples"] <= 0 or cfg["max_new_tokens"] <= 0:
        raise Fatal("num_samples and max_new_tokens must be positive")

    ckpt = load_checkpoint(os.path.join(cfg["out_dir"], "ckpt.pt"))
    model = model_from_checkpoint(ckpt, cfg["mem_decode"])
    model.to(device=dev, dtype=dtype)
    tok = get_tokenizer(ckpt["meta"])

    start = cfg["start"]
    if start.startswith("FILE:"):
        path = start[5:]
        if not os.path.exists(path):
            raise Fatal(f"prompt file not found: {path}")
        with open(path, encoding="utf-8") as f:
            start = f.read()
    try:
        ids = tok.encode(start) if start else []
    except ValueError as e:
        raise Fatal(f"cannot encode the prompt: {e}")
    ids = ids or [tok.eot_token]
    limit = model.config.block_size - cfg["max_new_tokens"]
    if len(ids) > limit:
        raise Fatal(f"prompt is {len(ids)} tokens; with max_new_tokens={cfg['max_new_tokens']} at most {limit} fit in block_size {model.config.block_size}")

    use_compile = cfg["compile"] if cfg["compile"] is not None else device_type == "cuda"
    step = decode_one_token
    if use_compile:
        step = torch.compile(decode_one_token, fullgraph=True, mode="reduce-overhead" if device_type == "cuda" else None)

    torch.manual_seed(cfg["seed"])
    idx = torch.tensor(ids, dtype=torch.long, device=dev)[None].repeat(cfg["num_samples"], 1)
    t0 = time.perf_counter()
    ctx = torch.autocast(device_type, dtype=dtype) if dtype != torch.float32 else nullcontext()
    with ctx:
        out = model.generate(idx, cfg["max_new_tokens"], temperature=cfg["temperature"],
                             top_k=cfg["top_k"] or None, decode_step=step, vocab_limit=tok.vocab_size)
    dt = time.perf_counter() - t0
    for row in out.tolist():
        print("-" * 60)
        print(tok.decode(row if start else row[1:]))  # an empty prompt starts from the end-of-text token
    n = cfg["num_samples"] * cfg["max_new_tokens"]
    print(f"{n} tokens in {dt:.2f} s ({n / dt:,.0f} tokens/s, compile included)", file=sys.stderr)


if __name__ == "__main__":
    run_or_exit(main, sys.argv[1:])
