"""
Knowledge recall on the facts dataset: the fraction of facts a trained model states exactly.

    python data/facts/recall.py --out_dir=out/facts [--facts=data/facts/facts.jsonl] [--limit=0]

For every line of facts.jsonl, the prompt ("Saide Digar was born in the city of") is fed to the model and
the answer's length in tokens is decoded greedily with the KV cache; a fact counts as recalled when the
decoded text equals the answer exactly. Prompts of the same length are decoded together as one batch.
"""

import json
import os
import sys
from collections import defaultdict

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # repo root
import torch  # noqa: E402

from data.common import get_tokenizer  # noqa: E402
from model import GPT  # noqa: E402
from train import Fatal, load_checkpoint, model_from_checkpoint, run_or_exit  # noqa: E402

DEFAULTS = dict(out_dir="out/facts", facts="", limit=0, batch_size=256, device="auto",
                mem_decode="")  # mem_decode: "" = the checkpoint's, "plain" | "fused" (memory.py)


def recall(model: GPT, tok, facts: list[dict], batch_size: int, device: str) -> tuple[int, dict[str, list[int]]]:
    """Returns (number recalled, {attribute: [recalled, total]})."""
    groups = defaultdict(list)  # (prompt tokens, answer tokens) -> facts
    for f in facts:
        p, a = tok.encode(f["prompt"]), tok.encode(f["answer"])
        groups[(len(p), len(a))].append((p, a, f["attribute"]))
    hits, by_attr = 0, defaultdict(lambda: [0, 0])
    for (lp, la), items in groups.items():
        for i in range(0, len(items), batch_size):
            chunk = items[i : i + batch_size]
            idx = torch.tensor([p for p, _, _ in chunk], device=device)
            out = model.generate(idx, la, temperature=0, vocab_limit=tok.vocab_size)[:, lp:].tolist()
            for (_, a, attr), got in zip(chunk, out):
                ok = got == a
                hits += ok
                by_attr[attr][0] += ok
                by_attr[attr][1] += 1
    return hits, dict(by_attr)


def main(argv: list[str]) -> None:
    from configurator import configure_or_exit

    cfg = configure_or_exit(DEFAULTS, argv, print_config=False)
    device = cfg["device"] if cfg["device"] != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    ckpt = load_checkpoint(os.path.join(cfg["out_dir"], "ckpt.pt"))
    path = cfg["facts"] or os.path.join(ckpt["config"]["data_dir"] or os.path.join("data", ckpt["config"]["dataset"]), "facts.jsonl")
    if not os.path.exists(path):
        raise Fatal(f"facts file not found: {path} (run python data/facts/prepare.py, or pass --facts=PATH)")
    with open(path) as f:
        facts = [json.loads(line) for line in f]
    if cfg["limit"] > 0:
        facts = facts[: cfg["limit"]]
    model = model_from_checkpoint(ckpt, cfg["mem_decode"])
    model.to(device)
    tok = get_tokenizer(ckpt["meta"])
    try:
        hits, by_attr = recall(model, tok, facts, cfg["batch_size"], device)
    except ValueError as e:  # a character the model's tokenizer does not know
        raise Fatal(f"cannot encode a fact: {e}")
    print(f"recalled {hits} of {len(facts)} facts exactly ({100 * hits / len(facts):.1f}%)")
    for attr, (h, n) in sorted(by_attr.items()):
        print(f"  {attr:<12} {h:5d} / {n:<5d} ({100 * h / n:.1f}%)")


if __name__ == "__main__":
    run_or_exit(main, sys.argv[1:])
