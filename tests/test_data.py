"""Tests for data/common.py, data/prepare.py and data/facts/prepare.py (small inputs, well under a minute)."""

import json
import lzma
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
# offline GPT-2 BPE files: ../shared/tiktoken_cache beside the repo, unless the caller chose a cache
_CACHE = REPO.parent / "shared" / "tiktoken_cache"
if "TIKTOKEN_CACHE_DIR" not in os.environ and _CACHE.is_dir():
    os.environ["TIKTOKEN_CACHE_DIR"] = str(_CACHE)

from data.common import (CharTokenizer, get_tokenizer, load_meta, open_split,  # noqa: E402
                         write_dataset)
from data.facts import prepare as facts  # noqa: E402

PREPARE = str(REPO / "data" / "prepare.py")
FACTS = str(REPO / "data" / "facts" / "prepare.py")


def _gpt2_problem():
    try:
        get_tokenizer("gpt2")
    except Exception as e:  # noqa: BLE001
        return (f"gpt2 BPE files not available: TIKTOKEN_CACHE_DIR={os.environ.get('TIKTOKEN_CACHE_DIR')!r} "
                f"(default {_CACHE}) lacks them and there is no network ({type(e).__name__})")
    return None


_GPT2 = _gpt2_problem()
needs_gpt2 = pytest.mark.skipif(_GPT2 is not None, reason=_GPT2 or "")


def run_prepare(*args):
    return subprocess.run([sys.executable, PREPARE, *args], capture_output=True, text=True, timeout=120)


def read_split_docs(out_dir, split):
    """The documents of a split, decoded, cut at the eot token."""
    meta = load_meta(out_dir)
    tok = get_tokenizer(meta)
    ids = np.asarray(open_split(out_dir, split))
    assert ids.dtype == np.uint16 and ids[-1] == meta["eot_token"]
    cuts = np.flatnonzero(ids == meta["eot_token"])
    starts = np.concatenate([[0], cuts[:-1] + 1])
    return [tok.decode(ids[s:e]) for s, e in zip(starts, cuts)]


DOCS = [f"Document {i}: caf\u00e9 \u2014 {'word ' * (i * 7)}end.\n\nSecond paragraph of {i}.\r\n" for i in range(12)]
DOCS[3] = "Text with <|endoftext|> inside, which must stay plain text."


# ------------------------------------------------------------------------------------------------ common


def test_char_tokenizer_roundtrip_and_unknown_char():
    tok = CharTokenizer("\n abc.")
    text = "a cab.\nab"
    assert tok.decode(tok.encode(text)) == text
    assert tok.eot_token == 6 and tok.vocab_size == 7
    assert tok.decode([0, 6]) == "\n<|endoftext|>"
    assert tok.encode("a<|endoftext|>b", allow_eot=True) == [2, 6, 3]
    with pytest.raises(ValueError, match="'z'"):
        tok.encode("abz")
    same = get_tokenizer({"tokenizer": "char", "chars": "\n abc."})
    assert same.encode("cab") == tok.encode("cab")


def test_write_dataset_load_meta_open_split(tmp_path):
    d = str(tmp_path / "ds")
    meta = write_dataset(d, [[0, 1, 2], np.array([3])], [[4]], {
        "tokenizer": "char", "chars": "abcde", "vocab_size": 6, "eot_token": 5, "source": "test",
        "source_sha256": "0" * 64})
    assert meta == load_meta(d)
    assert (meta["dtype"], meta["train_tokens"], meta["val_tokens"], meta["train_docs"], meta["val_docs"]) == \
        ("uint16", 6, 2, 2, 1)
    assert open_split(d, "train").tolist() == [0, 1, 2, 5, 3, 5] and open_split(d, "val").tolist() == [4, 5]
    assert sorted(os.listdir(d)) == ["meta.json", "train.bin", "val.bin"]  # no tmp files left behind
    big = write_dataset(d, [[70000]], [[1]], {"tokenizer": "x", "vocab_size": 70001, "eot_token": 0,
                                              "source": "t", "source_sha256": "0"})
    assert big["dtype"] == "uint32" and open_split(d, "train").tolist() == [70000, 0]
    with pytest.raises(ValueError, match="outside"):
        write_dataset(d, [[9]], [[1]], {"tokenizer": "char", "chars": "ab", "vocab_size": 3, "eot_token": 2,
                                        "source": "t", "source_sha256": "0"})


def test_load_meta_errors_name_the_prepare_command(tmp_path):
    cases = [(tmp_path / "nothing", FileNotFoundError, "data/prepare.py --input=PATH"),
             (tmp_path / "facts", FileNotFoundError, "data/facts/prepare.py"),
             (tmp_path, FileNotFoundError, "not prepared")]
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "meta.json").write_text("{not json")
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / "meta.json").write_text(json.dumps({"tokenizer": "gpt2"}))
    cases += [(tmp_path / "bad", ValueError, "not readable JSON"), (tmp_path / "partial", ValueError, "missing vocab_size")]
    for d, error, expected in cases:
        with pytest.raises(error) as e:
            load_meta(str(d))
        assert expected in str(e.value) and "prepare.py" in str(e.value) and "\n" not in str(e.value)


# ----------------------------------------------------------------------------------------------- prepare


@needs_gpt2
def test_prepare_txt_roundtrip(tmp_path):
    text = "".join(f"Paragraph {i}: the quick brown fox.\nLine two of {i}.\n\n" for i in range(300))
    (tmp_path / "one.txt").write_text(text)
    out = tmp_path / "out"
    r = run_prepare(f"--input={tmp_path / 'one.txt'}", f"--out_dir={out}", "--workers=1", "--val_fraction=0.1")
    assert r.returncode == 0, r.stderr
    train, val = read_split_docs(out, "train"), read_split_docs(out, "val")
    assert len(train) == len(val) == 1 and train[0] + val[0] == text
    assert val[0].startswith("Paragraph ") and 0.05 < len(val[0]) / len(text) < 0.15  # cut at a paragraph
    meta = load_meta(out)
    assert meta["tokenizer"] == "gpt2" and meta["vocab_size"] == 50257 and meta["eot_token"] == 50256
    assert meta["dtype"] == "uint16" and "position" in meta["split"] and len(meta["source_sha256"]) == 64
    assert "train:" in r.stdout and "val:" in r.stdout


@needs_gpt2
def test_prepare_folder_splits_by_document(tmp_path):
    src = tmp_path / "docs"
    src.mkdir()
    for i, d in enumerate(DOCS):
        (src / f"doc{i:02d}.txt").write_bytes(d.encode())
    out = tmp_path / "out"
    r = run_prepare(f"--input={src}", f"--out_dir={out}", "--workers=1", "--val_fraction=0.25")
    assert r.returncode == 0, r.stderr
    train, val = read_split_docs(out, "train"), read_split_docs(out, "val")
    assert len(val) == 3 and len(train) == 9
    assert sorted(train + val) == sorted(DOCS) and not set(train) & set(val)  # exact text, disjoint
    assert [d for d in DOCS if d in train] == train  # original order within a split
    meta = load_meta(out)
    assert (meta["train_docs"], meta["val_docs"]) == (9, 3) and meta["dtype"] == "uint16"
    assert meta["train_tokens"] == len(open_split(out, "train")) and meta["val_tokens"] == len(open_split(out, "val"))
    r2 = run_prepare(f"--input={src}", f"--out_dir={tmp_path / 'again'}", "--workers=1", "--val_fraction=0.25")
    assert r2.returncode == 0 and read_split_docs(tmp_path / "again", "val") == val  # seeded


@needs_gpt2
def test_prepare_jsonl_xz_in_parallel(tmp_path):
    path = tmp_path / "c.jsonl.xz"
    with lzma.open(path, "wt", encoding="utf-8") as f:
        for i, d in enumerate(DOCS):
            f.write(json.dumps({"id": i, "text": d}) + "\n")
    out = tmp_path / "out"
    r = run_prepare(f"--input={path}", f"--out_dir={out}", "--workers=2")
    assert r.returncode == 0, r.stderr
    train, val = read_split_docs(out, "train"), read_split_docs(out, "val")
    assert len(val) == 1 and sorted(train + val) == sorted(DOCS) and not set(train) & set(val)
    tok = get_tokenizer(load_meta(out))
    ids = np.asarray(open_split(out, "train" if DOCS[3] in train else "val"))
    assert (ids == tok.eot_token).sum() == (len(train) if DOCS[3] in train else 1)  # "<|endoftext|>" stays text


def test_prepare_char_encoding(tmp_path):
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS))
    out = tmp_path / "out"
    r = run_prepare(f"--input={tmp_path / 'a.jsonl'}", f"--out_dir={out}", "--encoding=char", "--workers=1")
    assert r.returncode == 0, r.stderr
    meta = load_meta(out)
    assert meta["tokenizer"] == "char" and meta["vocab_size"] == len(meta["chars"]) + 1
    assert sorted(read_split_docs(out, "train") + read_split_docs(out, "val")) == sorted(DOCS)


def _bad_inputs(tmp):
    (tmp / "notext.jsonl").write_text('{"text": "fine"}\n{"id": 2, "body": "no text here"}\n')
    (tmp / "empty.txt").write_text("")
    (tmp / "emptydir").mkdir()
    (tmp / "ok.txt").write_text("some text\n\nmore text\n")
    (tmp / "afile").write_text("x")
    return {
        "missing input": ([f"--input={tmp / 'nope.txt'}"], "does not exist"),
        "unknown encoding": ([f"--input={tmp / 'ok.txt'}", "--encoding=nope_base"], "unknown encoding"),
        "jsonl without text": ([f"--input={tmp / 'notext.jsonl'}", "--encoding=char"], ":2: no 'text' field"),
        "empty txt": ([f"--input={tmp / 'empty.txt'}", "--encoding=char"], "empty input"),
        "empty folder": ([f"--input={tmp / 'emptydir'}", "--encoding=char"], "empty input"),
        "out dir not writable": ([f"--input={tmp / 'ok.txt'}", "--encoding=char"], "not writable"),
    }


@pytest.mark.parametrize("case", ["missing input", "unknown encoding", "jsonl without text", "empty txt",
                                  "empty folder", "out dir not writable"])
def test_prepare_bad_input_is_one_line_error(tmp_path, case):
    args, expected = _bad_inputs(tmp_path)[case]
    out = tmp_path / "afile" / "sub" if case == "out dir not writable" else tmp_path / "out"
    r = run_prepare(*args, f"--out_dir={out}", "--workers=1")
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr and expected in lines[0], r.stderr
    assert not (tmp_path / "out" / "meta.json").exists() and not (tmp_path / "out" / "train.bin").exists()
    assert not [f for f in (os.listdir(tmp_path / "out") if (tmp_path / "out").exists() else []) if f.endswith(".tmp")]


# ------------------------------------------------------------------------------------------------- facts


def test_facts_generator_is_deterministic():
    a, b = facts.generate(seed=7, n_people=40), facts.generate(seed=7, n_people=40)
    assert a == b
    assert facts.generate(seed=8, n_people=40)[0] != a[0]
    train, val, fs, people = a
    assert len(people) == 40 and len({p["name"] for p in people}) == 40
    assert len(train) == 160 and len(val) == 40 and len(fs) == 40 * len(facts.ATTRIBUTES)
    assert not set(train) & set(val)


def test_facts_dataset_answers_follow_prompts_in_train(tmp_path):
    out = tmp_path / "facts"
    r = subprocess.run([sys.executable, FACTS, f"--out_dir={out}", "--n_people=60", "--seed=3"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "60 people" in r.stdout
    meta = load_meta(out)
    assert meta["tokenizer"] == "char" and meta["chars"] == facts.CHARS and meta["dtype"] == "uint16"
    assert (meta["train_docs"], meta["val_docs"], meta["n_facts"]) == (240, 60, 360)
    train, val = read_split_docs(out, "train"), read_split_docs(out, "val")
    train_text, val_text = "".join(train), "".join(val)
    fs = [json.loads(line) for line in (out / "facts.jsonl").read_text().splitlines()]
    assert len(fs) == 360
    for f in fs:
        assert f["answer"].startswith(" ") and f["prompt"] + f["answer"] in train_text
        assert f["answer"][1:] in val_text  # the held-out biographies state the same fact
    assert (train, val) == facts.generate(seed=3, n_people=60)[:2]
    r2 = subprocess.run([sys.executable, FACTS, f"--out_dir={tmp_path / 'f2'}", "--n_people=60", "--seed=3"],
                        capture_output=True, text=True, timeout=60)
    assert r2.returncode == 0
    for name in ("train.bin", "val.bin", "facts.jsonl"):
        assert (out / name).read_bytes() == (tmp_path / "f2" / name).read_bytes()


def test_facts_chance_levels(tmp_path):
    """scripts/facts_chance.py (docs/RESULTS.md's chance levels): uniform guessing over each attribute's answers
    in the file, and the most common answer among the first `limit` facts, on a hand-made file."""
    sys.path.insert(0, str(REPO / "scripts"))
    from facts_chance import chance

    rows = [("colour", " red"), ("colour", " red"), ("colour", " blue"), ("year", " 1990"),
            ("colour", " green")]  # the last one is past the limit but counts as a possible colour
    path = tmp_path / "facts.jsonl"
    path.write_text("".join(json.dumps({"person": "P", "attribute": a, "prompt": "p", "answer": v}) + "\n"
                            for a, v in rows))
    uniform, common = chance(str(path), 4)
    assert uniform == pytest.approx((1 / 3 + 1 / 3 + 1 / 3 + 1) / 4)
    assert common == pytest.approx((2 + 1) / 4)  # red twice, 1990 once
