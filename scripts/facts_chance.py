"""Chance levels of the knowledge-capacity score (data/facts/recall.py; docs/RESULTS.md): for the first LIMIT
facts of a facts.jsonl, the exact-recall rate of guessing each attribute's answer uniformly among the answers
that occur in the file, and of always giving each attribute's most common answer among the scored facts.

    python scripts/facts_chance.py data/facts_4000/facts.jsonl [--limit=6000]
"""
import json
import sys
from collections import Counter, defaultdict


def chance(path: str, limit: int) -> tuple[float, float]:
    """(uniform, most common) recall rates over the first `limit` facts (all if limit <= 0)."""
    with open(path, encoding="utf-8") as f:
        facts = [json.loads(line) for line in f if line.strip()]
    answers = defaultdict(set)  # attribute -> the answers that occur anywhere in the file
    for fact in facts:
        answers[fact["attribute"]].add(fact["answer"])
    scored = facts[:limit] if limit > 0 else facts
    counts = defaultdict(Counter)
    for fact in scored:
        counts[fact["attribute"]][fact["answer"]] += 1
    uniform = sum(1 / len(answers[fact["attribute"]]) for fact in scored) / len(scored)
    common = sum(c.most_common(1)[0][1] for c in counts.values()) / len(scored)
    return uniform, common


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--limit=")]
    limits = [int(a.split("=", 1)[1]) for a in sys.argv[1:] if a.startswith("--limit=")]
    if len(args) != 1:
        sys.exit(__doc__)
    try:
        u, c = chance(args[0], limits[-1] if limits else 6000)
    except OSError as e:
        sys.exit(f"error: cannot read {args[0]}: {e.strerror}")
    print(f"{args[0]}: uniform guessing {100 * u:.2f}%, most common answer {100 * c:.2f}%")
