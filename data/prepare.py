"""
Turn a text corpus into a dataset folder (train.bin, val.bin, meta.json; format in data/common.py).

    python data/prepare.py --input=PATH --out_dir=data/NAME [--encoding=gpt2] [--val_fraction=0.005]
                           [--seed=1337] [--workers=N]

PATH is a .txt file (one document), a folder of .txt files (one document each, sorted by relative path,
subfolders included) or a .jsonl / .jsonl.xz file with a "text" field on every line (one document each).
--encoding is a tiktoken encoding name (gpt2, r50k_base, cl100k_base, ...) or "char" (the alphabet is
the set of characters in the corpus). Offline, point TIKTOKEN_CACHE_DIR at a folder of cached BPE files.

Train and validation are split by document: a seeded shuffle of the document ids puts round(n *
val_fraction) of them (at least one, and at least one left for train) into val. A corpus of one document
is split by position instead, at a paragraph boundary: its first paragraphs go to train, its last
~val_fraction to val. Errors are one line on stderr and exit status 1; nothing is written unless all went well.
"""

import argparse
import json
import lzma
import os
import random
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root, for `data`
from data.common import CharTokenizer, check_writable_dir, dtype_for_vocab, load_tiktoken, sha256_file, \
    sha256_files, write_dataset  # noqa: E402


class PrepareError(Exception):
    """A problem with the user's input: reported as one line, no traceback."""


# -----------------------------------------------------------------------------------------------------------
# reading the input into a list of documents


def read_documents(path: str) -> tuple[list[str], list[str]]:
    """(documents, files read). Empty documents are kept here and dropped by the caller."""
    if not os.path.exists(path):
        raise PrepareError(f"input {path} does not exist")
    if os.path.isdir(path):
        files = sorted((os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs if f.endswith(".txt")),
                       key=lambda p: os.path.relpath(p, path))
        if not files:
            raise PrepareError(f"empty input: folder {path} holds no .txt files")
        return [read_text(f) for f in files], files
    if path.endswith(".txt"):
        return [read_text(path)], [path]
    if path.endswith(".jsonl") or path.endswith(".jsonl.xz"):
        return read_jsonl(path), [path]
    raise PrepareError(f"input {path} is not a .txt file, a folder of .txt files, a .jsonl or a .jsonl.xz")


def read_text(path: str) -> str:
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8")  # bytes as they are: no newline translation
    except UnicodeDecodeError as e:
        raise PrepareError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from None


def read_jsonl(path: str) -> list[str]:
    docs = []
    opener = lzma.open if path.endswith(".xz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise PrepareError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
                if not isinstance(obj, dict) or "text" not in obj:
                    keys = ", ".join(map(str, obj)) if isinstance(obj, dict) else type(obj).__name__
                    raise PrepareError(f"{path}:{lineno}: no 'text' field (found: {keys or 'nothing'})")
                if not isinstance(obj["text"], str):
                    raise PrepareError(f"{path}:{lineno}: 'text' is a {type(obj['text']).__name__}, not a string")
                docs.append(obj["text"])
    except (lzma.LZMAError, EOFError, UnicodeDecodeError) as e:
        raise PrepareError(f"{path}: cannot read ({type(e).__name__}: {e})") from None
    return docs


def split_single_document(text: str, val_fraction: float) -> tuple[str, str]:
    """Cut one document in two at the paragraph boundary nearest to (1 - val_fraction) of its length; the
    two parts concatenate back to the text. Boundaries: after a blank line, else a newline, else a space."""
    target = round(len(text) * (1 - val_fraction))
    for sep in ("\n\n", "\n", " "):
        cuts = []
        i = text.find(sep)
        while i != -1:
            cuts.append(i + len(sep))
            i = text.find(sep, i + len(sep))
        cuts = [c for c in cuts if 0 < c < len(text)]
        if cuts:
            cut = min(cuts, key=lambda c: abs(c - target))
            return text[:cut], text[cut:]
    cut = min(max(target, 1), len(text) - 1)  # one long word: cut it
    return text[:cut], text[cut:]


# -----------------------------------------------------------------------------------------------------------
# tokenizing in parallel

_worker = {}


def _init_worker(encoding: str, chars: str | None, dtype: str):
    _worker["tok"] = CharTokenizer(chars) if encoding == "char" else load_tiktoken(encoding)
    _worker["encode"] = _worker["tok"].encode if encoding == "char" else _worker["tok"].encode_ordinary
    _worker["dtype"] = dtype


def _encode(text: str) -> np.ndarray:
    return np.array(_worker["encode"](text), dtype=_worker["dtype"])


def tokenize(docs: list[str], encoding: str, chars: str | None, dtype: str, workers: int) -> list[np.ndarray]:
    from tqdm import tqdm
    bar = tqdm(total=sum(len(d) for d in docs), unit="char", unit_scale=True, desc="tokenizing", disable=None)
    out = []
    if workers <= 1 or len(docs) == 1:
        _init_worker(encoding, chars, dtype)
        results = map(_encode, docs)
        pool = None
    else:
        import multiprocessing
        pool = multiprocessing.Pool(workers, initializer=_init_worker, initargs=(encoding, chars, dtype))
        results = pool.imap(_encode, docs, chunksize=max(1, len(docs) // (workers * 16)))  # order is kept
    try:
        for doc, ids in zip(docs, results):
            out.append(ids)
            bar.update(len(doc))
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
    return out


# -----------------------------------------------------------------------------------------------------------


def prepare(input_path: str, out_dir: str, encoding: str = "gpt2", val_fraction: float = 0.005,
            seed: int = 1337, workers: int = 1) -> dict:
    t0 = time.time()
    if not 0 < val_fraction < 1:
        raise PrepareError(f"--val_fraction must be between 0 and 1, got {val_fraction}")
    # check the cheap things first, so a bad setting fails before minutes of reading
    if not os.path.exists(input_path):
        raise PrepareError(f"input {input_path} does not exist")
    if encoding != "char":
        try:
            enc = load_tiktoken(encoding)
        except ValueError as e:
            raise PrepareError(str(e)) from None
        vocab_size, eot = enc.n_vocab, enc.eot_token
    try:
        check_writable_dir(out_dir)
    except OSError as e:
        raise PrepareError(f"output folder {out_dir} is not writable ({e.strerror or e})") from None

    docs, files = read_documents(input_path)
    n_empty = sum(1 for d in docs if not d)
    docs = [d for d in docs if d]
    if not docs:
        raise PrepareError(f"empty input: {input_path} holds no text")
    source_sha256 = sha256_files(files, input_path) if os.path.isdir(input_path) else sha256_file(input_path)

    if len(docs) == 1:
        docs = list(split_single_document(docs[0], val_fraction))
        train_ids, val_ids = [0], [1]
        share = 100 * len(docs[1]) / (len(docs[0]) + len(docs[1]))
        split = f"one document, so by position: cut at a paragraph boundary, last {share:.2f}% of its characters to val"
    else:
        order = list(range(len(docs)))
        random.Random(seed).shuffle(order)
        n_val = min(max(1, round(len(docs) * val_fraction)), len(docs) - 1)
        val_ids, train_ids = sorted(order[:n_val]), sorted(order[n_val:])
        split = f"by document: seeded shuffle (seed {seed}), {n_val} of {len(docs)} documents to val"

    chars = None
    if encoding == "char":
        chars = "".join(sorted(set().union(*map(set, docs))))
        vocab_size, eot = len(chars) + 1, len(chars)
    tokens = tokenize(docs, encoding, chars, dtype_for_vocab(vocab_size), workers)

    meta_extra = {"tokenizer": encoding, "vocab_size": vocab_size, "eot_token": eot,
                  "source": os.path.abspath(input_path), "source_sha256": source_sha256,
                  "split": split, "val_fraction": val_fraction, "seed": seed,
                  "skipped_empty_docs": n_empty}
    if chars is not None:
        meta_extra["chars"] = chars
    try:
        meta = write_dataset(out_dir, (tokens[i] for i in train_ids), (tokens[i] for i in val_ids), meta_extra)
    except OSError as e:
        raise PrepareError(f"cannot write {out_dir} ({e.strerror or e})") from None
    meta["seconds"] = round(time.time() - t0, 1)
    return meta


def main(argv=None):
    p = argparse.ArgumentParser(description="Tokenize a text corpus into train.bin / val.bin / meta.json.")
    p.add_argument("--input", required=True, help=".txt file, folder of .txt files, .jsonl or .jsonl.xz")
    p.add_argument("--out_dir", required=True, help="dataset folder to write, e.g. data/medium_mix")
    p.add_argument("--encoding", default="gpt2", help="tiktoken encoding name, or 'char' (default gpt2)")
    p.add_argument("--val_fraction", type=float, default=0.005, help="share of documents for val (default 0.005)")
    p.add_argument("--seed", type=int, default=1337, help="seed of the document shuffle (default 1337)")
    p.add_argument("--workers", type=int, default=min(os.cpu_count() or 1, 8), help="tokenizer processes")
    args = p.parse_args(argv)
    try:
        m = prepare(args.input, args.out_dir, args.encoding, args.val_fraction, args.seed, args.workers)
    except PrepareError as e:
        print(f"prepare.py: error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("prepare.py: interrupted, nothing written", file=sys.stderr)
        sys.exit(130)
    print(f"wrote {args.out_dir}: {m['tokenizer']} (vocab {m['vocab_size']}, {m['dtype']}), split {m['split']}")
    print(f"  train: {m['train_docs']:,} docs, {m['train_tokens']:,} tokens")
    print(f"  val:   {m['val_docs']:,} docs, {m['val_tokens']:,} tokens")
    print(f"  source sha256 {m['source_sha256'][:16]}..., {m['seconds']} s")


if __name__ == "__main__":
    main()
