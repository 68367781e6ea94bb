"""
The dataset format shared by data/prepare.py, data/facts/prepare.py, train.py and sample.py.

A dataset is a folder data/<name>/ holding
    train.bin, val.bin  raw token ids, numpy uint16 (uint32 when the vocabulary has more than 65,535 ids);
                        documents are concatenated, each followed by the eot token
    meta.json           tokenizer ("gpt2"-style tiktoken encoding name, or "char"), vocab_size, dtype,
                        train_tokens, val_tokens, train_docs, val_docs, eot_token, source, source_sha256,
                        and for "char" the alphabet `chars` (id i is chars[i]; eot_token is len(chars))

Here: load_meta / open_split to read a dataset, get_tokenizer to encode and decode its ids, and
write_dataset, the one writer both preparers use (tmp files + os.replace, so a crash leaves no half dataset).
"""

import hashlib
import json
import os
import tempfile

import numpy as np

FORMAT_VERSION = 1
EOT_TEXT = "<|endoftext|>"  # what decode() shows for the eot id, as tiktoken's gpt2 does
REQUIRED_KEYS = ("tokenizer", "vocab_size", "dtype", "train_tokens", "val_tokens", "train_docs", "val_docs",
                 "eot_token", "source", "source_sha256")
SPLITS = ("train", "val")


# -----------------------------------------------------------------------------------------------------------
# tokenizers: both have .encode(str) -> list[int], .decode(ids) -> str, .eot_token, .vocab_size, .name


class CharTokenizer:
    """One id per character: id i is chars[i]; the eot id is len(chars), past the alphabet."""

    def __init__(self, chars: str):
        if not chars or len(set(chars)) != len(chars):
            raise ValueError("a char vocabulary needs a non-empty string of distinct characters")
        self.name = "char"
        self.chars = chars
        self.stoi = {c: i for i, c in enumerate(chars)}
        self.eot_token = len(chars)
        self.vocab_size = len(chars) + 1

    def encode(self, text: str, allow_eot: bool = False) -> list[int]:
        """Ids of text; with allow_eot, each "<|endoftext|>" becomes the eot id (off by default, like tiktoken)."""
        if allow_eot and EOT_TEXT in text:
            ids = []
            for k, part in enumerate(text.split(EOT_TEXT)):
                if k:
                    ids.append(self.eot_token)
                ids.extend(self.encode(part))
            return ids
        try:
            return [self.stoi[c] for c in text]
        except KeyError as e:
            c = e.args[0]
            raise ValueError(f"character {c!r} (U+{ord(c):04X}) is not in this char vocabulary of "
                             f"{len(self.chars)} characters") from None

    def decode(self, ids) -> str:
        n = len(self.chars)
        out = []
        for i in ids:
            i = int(i)
            if 0 <= i < n:
                out.append(self.chars[i])
            elif i == n:
                out.append(EOT_TEXT)
            else:
                raise ValueError(f"id {i} is outside this char vocabulary of {self.vocab_size} ids")
        return "".join(out)


class TiktokenTokenizer:
    """A tiktoken encoding. encode() is encode_ordinary: the text "<|endoftext|>" is encoded as plain text,
    never as the eot id, unless allow_eot=True (so no document can forge a document boundary)."""

    def __init__(self, name: str):
        self.name = name
        self.enc = load_tiktoken(name)
        self.eot_token = self.enc.eot_token
        self.vocab_size = self.enc.n_vocab

    def encode(self, text: str, allow_eot: bool = False) -> list[int]:
        if allow_eot:
            return self.enc.encode(text, allowed_special={EOT_TEXT}, disallowed_special=())
        return self.enc.encode_ordinary(text)

    def decode(self, ids) -> str:
        return self.enc.decode([int(i) for i in ids])


def load_tiktoken(name: str):
    """tiktoken.get_encoding(name) with one-line ValueErrors for an unknown name or missing BPE files."""
    try:
        import tiktoken
    except ImportError:
        raise ValueError(f"tokenizer {name!r} needs the tiktoken package (pip install tiktoken)") from None
    try:
        return tiktoken.get_encoding(name)
    except ValueError as e:
        if "Unknown encoding" not in str(e):
            raise
        valid = ", ".join(["char"] + tiktoken.list_encoding_names())
        raise ValueError(f"unknown encoding {name!r}; valid names: {valid}") from None
    except Exception as e:  # no network and no cached BPE files: requests/urllib errors of many kinds
        first = (str(e).strip().splitlines() or [""])[0][:100]
        raise ValueError(f"could not load tiktoken encoding {name!r} ({type(e).__name__}: {first}); offline, "
                         f"set TIKTOKEN_CACHE_DIR to a folder holding its cached files") from None


def get_tokenizer(meta):
    """The tokenizer of a dataset: meta is a meta.json dict (or just a tokenizer name other than "char")."""
    if isinstance(meta, str):
        meta = {"tokenizer": meta}
    name = meta.get("tokenizer")
    if name == "char":
        if not isinstance(meta.get("chars"), str):
            raise ValueError("a 'char' tokenizer needs the alphabet string 'chars' in meta.json")
        return CharTokenizer(meta["chars"])
    if not isinstance(name, str) or not name:
        raise ValueError(f"meta.json 'tokenizer' must be 'char' or a tiktoken encoding name, got {name!r}")
    return TiktokenTokenizer(name)


# -----------------------------------------------------------------------------------------------------------
# reading a dataset


def prepare_hint(data_dir: str) -> str:
    """The command that (re)builds data_dir, for error messages."""
    d = os.path.normpath(data_dir)
    if os.path.basename(d) == "facts":
        return f"python data/facts/prepare.py --out_dir={d}"
    if os.path.isfile(os.path.join(d, "prepare.py")):
        return f"python {os.path.join(d, 'prepare.py')}"
    return f"python data/prepare.py --input=PATH --out_dir={d}"


def load_meta(data_dir: str) -> dict:
    """Read and check data_dir/meta.json. FileNotFoundError / ValueError with a one-line message that names
    the prepare command to run."""
    path = os.path.join(data_dir, "meta.json")
    hint = prepare_hint(data_dir)
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"no dataset folder {data_dir}; build it with: {hint}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found (dataset not prepared); build it with: {hint}")
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not readable JSON ({str(e).splitlines()[0]}); rebuild it with: {hint}") from None
    problem = _meta_problem(meta)
    if problem:
        raise ValueError(f"{path} is malformed: {problem}; rebuild it with: {hint}")
    return meta


def _meta_problem(meta) -> str | None:
    if not isinstance(meta, dict):
        return "not a JSON object"
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing:
        return "missing " + ", ".join(missing)
    for k in ("vocab_size", "train_tokens", "val_tokens", "train_docs", "val_docs", "eot_token"):
        if not isinstance(meta[k], int) or isinstance(meta[k], bool) or meta[k] < 0:
            return f"{k} must be a non-negative integer, got {meta[k]!r}"
    if meta["dtype"] != dtype_for_vocab(meta["vocab_size"]):
        return f"dtype {meta['dtype']!r} does not fit vocab_size {meta['vocab_size']}"
    if not meta["eot_token"] < meta["vocab_size"]:
        return f"eot_token {meta['eot_token']} is not below vocab_size {meta['vocab_size']}"
    if meta["tokenizer"] == "char":
        chars = meta.get("chars")
        if not isinstance(chars, str) or len(chars) + 1 != meta["vocab_size"] or meta["eot_token"] != len(chars):
            return "a 'char' dataset needs 'chars' with vocab_size == len(chars) + 1 == eot_token + 1"
    elif not isinstance(meta["tokenizer"], str):
        return f"tokenizer must be a string, got {meta['tokenizer']!r}"
    return None


def open_split(data_dir: str, split: str, meta: dict | None = None) -> np.memmap:
    """The token ids of split ("train" | "val") as a read-only 1-D memmap of meta's dtype."""
    if split not in SPLITS:
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    meta = load_meta(data_dir) if meta is None else meta
    path = os.path.join(data_dir, f"{split}.bin")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found; rebuild the dataset with: {prepare_hint(data_dir)}")
    dtype = np.dtype(meta["dtype"])
    n = meta[f"{split}_tokens"]
    if os.path.getsize(path) != n * dtype.itemsize:
        raise ValueError(f"{path} holds {os.path.getsize(path)} bytes but meta.json says {n} {dtype.name} tokens; "
                         f"rebuild the dataset with: {prepare_hint(data_dir)}")
    return np.memmap(path, dtype=dtype, mode="r")


# -----------------------------------------------------------------------------------------------------------
# writing a dataset


def dtype_for_vocab(vocab_size: int) -> str:
    return "uint16" if vocab_size <= 65535 else "uint32"


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sha256_files(paths: list[str], root: str) -> str:
    """One hash for a set of files: sha256 over "relative path\\0file sha256\\n" lines in the given order."""
    h = hashlib.sha256()
    for p in paths:
        h.update(f"{os.path.relpath(p, root)}\0{sha256_file(p)}\n".encode())
    return h.hexdigest()


def _tmp_path(out_dir: str, name: str) -> str:
    fd, path = tempfile.mkstemp(dir=out_dir, prefix=f".{name}.", suffix=".tmp")
    os.close(fd)
    os.chmod(path, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the final file the usual permissions
    return path


_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write_text(path: str, text: str):
    """Write text to path through a tmp file in the same folder and os.replace."""
    tmp = _tmp_path(os.path.dirname(path) or ".", os.path.basename(path))
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


def _remove(path: str):
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def check_writable_dir(out_dir: str):
    """Create out_dir if needed and prove a file can be made in it (OSError otherwise)."""
    os.makedirs(out_dir, exist_ok=True)
    _remove(_tmp_path(out_dir, "probe"))


def write_dataset(out_dir: str, train_docs_tokens, val_docs_tokens, meta_extra: dict) -> dict:
    """Write train.bin, val.bin and meta.json into out_dir and return the meta dict.

    train_docs_tokens / val_docs_tokens: iterables of documents, each a sequence of token ids (list or
    numpy array), written in order, each followed by the eot token. meta_extra must hold tokenizer,
    vocab_size, eot_token, source, source_sha256 (and chars for "char"); any other keys are kept. The dtype
    is chosen from vocab_size. Everything goes to tmp files first; the old meta.json is removed before the
    bins are replaced and the new one written last, so an interrupted write never leaves a meta.json that
    disagrees with the bins."""
    for k in ("tokenizer", "vocab_size", "eot_token", "source", "source_sha256"):
        if k not in meta_extra:
            raise ValueError(f"write_dataset: meta_extra lacks {k!r}")
    vocab_size, eot = int(meta_extra["vocab_size"]), int(meta_extra["eot_token"])
    dtype = dtype_for_vocab(vocab_size)
    os.makedirs(out_dir, exist_ok=True)
    counts = {}
    tmps = {}
    try:
        for split, docs in (("train", train_docs_tokens), ("val", val_docs_tokens)):
            tmps[split] = _tmp_path(out_dir, f"{split}.bin")
            n_docs = n_tokens = 0
            eot_bytes = np.array([eot], dtype=dtype).tobytes()
            with open(tmps[split], "wb") as f:
                for doc in docs:
                    a = np.asarray(doc)
                    if a.size and (a.min() < 0 or a.max() >= vocab_size):
                        raise ValueError(f"write_dataset: {split} document {n_docs} has ids outside [0, {vocab_size})")
                    f.write(a.astype(dtype, copy=False).tobytes())
                    f.write(eot_bytes)
                    n_docs += 1
                    n_tokens += a.size + 1
            if n_docs == 0:
                raise ValueError(f"write_dataset: the {split} split has no documents")
            counts[split] = (n_docs, n_tokens)
        meta = {"format_version": FORMAT_VERSION, **meta_extra, "vocab_size": vocab_size, "eot_token": eot,
                "dtype": dtype, "train_tokens": counts["train"][1], "val_tokens": counts["val"][1],
                "train_docs": counts["train"][0], "val_docs": counts["val"][0]}
        problem = _meta_problem(meta)
        if problem:
            raise ValueError(f"write_dataset: {problem}")
        _remove(os.path.join(out_dir, "meta.json"))
        for split in SPLITS:
            os.replace(tmps[split], os.path.join(out_dir, f"{split}.bin"))
        atomic_write_text(os.path.join(out_dir, "meta.json"), json.dumps(meta, indent=1, ensure_ascii=False) + "\n")
        return meta
    finally:
        for tmp in tmps.values():
            _remove(tmp)
