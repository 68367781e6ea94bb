"""bench.py's decode and train modes on the CPU with tiny models (subprocesses), its argument parsing, and the
decode byte model checked by hand. Timings are never asserted, only that they are positive."""

import json
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = ["--device=cpu", "--iters=2", "--warmup=1"]
TINY = ["--n_layer=2", "--n_head=2", "--n_embd=64", "--vocab_size=512", "--block_size=64"]


def bench(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, os.path.join(ROOT, "bench.py"), *args], cwd=ROOT, capture_output=True,
                       text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    if check and p.returncode != 0:
        raise AssertionError(f"bench.py {' '.join(args)} failed ({p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}")
    return p


def one_line_error(p: subprocess.CompletedProcess, *words: str) -> None:
    assert p.returncode == 2, (p.returncode, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), p.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])


def expected_distinct(n: int, draws: int) -> float:
    return n * (1 - (1 - 1 / n) ** draws)


@pytest.fixture(scope="module")
def decode_small(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "x.json"
    bench("--mode=decode", "config/ultramem_small.py", "config/moe_small.py", "--batches=1,2", "--kv_len=16",
          f"--out={out}", *FAST)
    with open(out) as f:
        return json.load(f)


def test_decode_rows_per_model_and_batch(decode_small):
    res = decode_small
    assert [m["name"] for m in res["models"]] == ["ultramem_small", "moe_small"]
    assert [m["kind"] for m in res["models"]] == ["ultramem", "moe"]
    got = {(r["model"], r["batch"]) for r in res["rows"]}
    assert got == {(m, b) for m in ("ultramem_small", "moe_small") for b in (1, 2)}
    for r in res["rows"]:
        assert r["latency_ms"] > 0 and r["tokens_per_s"] > 0 and r["achieved_GBps"] > 0
        assert r["elem_bytes"] == 4  # dtype auto: float32 on the CPU
        for k in ("weights_bytes", "kv_bytes", "total_bytes"):
            assert r[k] > 0, k
        assert "floor_ms" not in r  # no copy-bandwidth floor on the CPU
    assert {r["batch"] for r in res["ratios"]} == {1, 2}
    assert all("moe_over_mem_latency" in r and "moe_over_mem_bytes" in r for r in res["ratios"])
    peak = max(res["ratios"], key=lambda r: r["moe_over_mem_latency"])
    assert res["ratio_summary"] == {"moe_over_mem_latency_peak": peak["moe_over_mem_latency"],
                                    "moe_over_mem_latency_peak_batch": peak["batch"]}  # no dense model here


def test_ratio_summary_peak_and_max_up_to_256():
    import bench

    ratios = [{"batch": 1, "moe_over_mem_latency": 1.2, "mem_over_dense_latency": 1.27},
              {"batch": 64, "moe_over_mem_latency": 3.5, "mem_over_dense_latency": 1.19},
              {"batch": 512, "moe_over_mem_latency": 1.8, "mem_over_dense_latency": 1.4}]
    assert bench._ratio_summary(ratios) == {"moe_over_mem_latency_peak": 3.5, "moe_over_mem_latency_peak_batch": 64,
                                            "mem_over_dense_latency_max": 1.27, "mem_over_dense_latency_max_batch": 1}
    assert bench._ratio_summary([]) == {}


def test_decode_bytes_memory_and_moe_by_hand(decode_small):
    """ultramem_small: 2 memory layers of N = 32^2 rows of D_v = 128/2 floats, m x H = 8 x 2 rows per token;
    moe_small: 4 MoE layers of 8 experts (top-2) of 2 x 128 x 256 floats; KV: 4 blocks x 4 heads x 32."""
    models = {m["name"]: m for m in decode_small["models"]}
    for r in decode_small["rows"]:
        B, S = r["batch"], 16 + 1
        assert r["kv_bytes"] == 2 * 4 * B * S * 4 * 32 * 4
        if r["model"] == "ultramem_small":
            assert r["values_rows"] == pytest.approx(expected_distinct(1024, B * 8 * 2))
            assert r["values_bytes"] == pytest.approx(2 * expected_distinct(1024, B * 16) * 64 * 4)
            assert r["values_rows_max"] == B * 16
            assert 0 < r["values_rows_measured"] <= B * 16
            # everything but the values is dense
            assert r["weights_bytes"] == (models["ultramem_small"]["params"] - 2 * 1024 * 64) * 4
            total = r["weights_bytes"] + r["kv_bytes"] + r["values_bytes"]
        else:
            assert r["experts_distinct"] == pytest.approx(8 * (1 - (1 - 2 / 8) ** B))
            assert r["experts_bytes"] == pytest.approx(4 * 8 * (1 - 0.75 ** B) * 2 * 128 * 256 * 4)
            assert 2 <= r["experts_distinct_measured"] <= min(8, 2 * B)
            assert r["weights_bytes"] == (models["moe_small"]["params"] - 4 * 8 * 2 * 128 * 256) * 4
            total = r["weights_bytes"] + r["kv_bytes"] + r["experts_bytes"]
        assert r["total_bytes"] == pytest.approx(total)


def test_decode_dense_bytes_by_hand(tmp_path):
    out = tmp_path / "d.json"
    bench(*TINY, "--batches=1,4", "--kv_len=8", f"--out={out}", *FAST)  # decode is the default mode
    with open(out) as f:
        res = json.load(f)
    L, D, V, H, hd = 2, 64, 512, 2, 32
    # per block: ln_1 (D), c_attn (3 D^2), attention c_proj (D^2), ln_2 (D), MLP (4 D^2 + 4 D^2); ln_f; the
    # embedding tied to lm_head counted once; no biases
    weights = (L * (12 * D * D + 2 * D) + D + V * D) * 4
    assert [r["batch"] for r in res["rows"]] == [1, 4]
    for r in res["rows"]:
        B = r["batch"]
        kv = 2 * L * B * (8 + 1) * H * hd * 4  # K and V, kv_len cached positions + the decoded one
        assert r["weights_bytes"] == weights
        assert r["kv_bytes"] == kv
        assert r["total_bytes"] == weights + kv
        assert "experts_bytes" not in r and "values_bytes" not in r
        assert r["latency_ms"] > 0


def test_train_mode(tmp_path):
    out = tmp_path / "t.json"
    p = bench("--mode=train", *TINY, "--batch_size=2", "--block_size=16", f"--out={out}", "--profile=1", *FAST)
    with open(out) as f:
        res = json.load(f)
    (r,) = res["rows"]
    assert r["tokens_per_s"] > 0 and r["step_ms"] > 0 and r["mfu"] > 0
    assert r["batch_size"] == 2 and r["block_size"] == 16 and r["compiled"] is False
    prof = r["profile"]  # on the CPU: operator self time per step, by category and the top operators
    assert prof["steps"] == 1 and prof["kernel_ms"] > 0 and prof["top"]
    assert abs(sum(prof["categories_ms"].values()) - prof["kernel_ms"]) < 1e-6 * prof["kernel_ms"] + 1e-9
    assert "profile (1 steps" in p.stdout


def test_train_mode_on_a_dataset(tmp_path):
    """--train_data=dataset: a new batch each step from the dataset's train.bin (train.py's loader), recorded in the
    row with the sum of their token ids (equal to the loader's); a missing dataset, a vocabulary larger than the
    model's, an empty train.bin and a bad value are one-line errors."""
    from data.common import write_dataset
    d = tmp_path / "data"
    rng = torch.Generator().manual_seed(0)
    docs = [torch.randint(0, 500, (300,), generator=rng).tolist() for _ in range(4)]
    write_dataset(str(d), docs, docs[:1], {"tokenizer": "test", "vocab_size": 501, "eot_token": 500, "source": "test",
                                           "source_sha256": "0"})
    out = tmp_path / "t.json"
    bench("--mode=train", *TINY, "--batch_size=2", "--block_size=16", f"--out={out}", *FAST, f"--data_dir={d}",
          "--train_data=dataset")
    (r,) = json.load(open(out))["rows"]
    assert r["train_data"] == "dataset" and r["step_ms"] > 0 and r["loss"] > 0
    assert r["data_windows"] == 2 * (1 + 2)  # batch 2, a new batch in each warm-up and timed step
    import train
    from data.common import load_meta
    loader = train.TokenLoader(str(d / "train.bin"), load_meta(str(d))["dtype"], 16, 2, 0, 1, train.default_config()["seed"])
    assert r["data_token_sum"] == sum(int(loader.next_batch()[0].sum()) for _ in range(3))  # the loader's batches
    one_line_error(bench("--mode=train", *TINY, *FAST, f"--data_dir={tmp_path / 'none'}", "--train_data=dataset",
                         check=False), "train_data=dataset", "no dataset folder")
    one_line_error(bench("--mode=train", *TINY, *FAST, "--vocab_size=256", f"--data_dir={d}", "--train_data=dataset",
                         check=False), "vocab_size 501 exceeds the model's 256")
    one_line_error(bench("--mode=train", *TINY, *FAST, "--train_data=text", check=False), "train_data must be")
    (d / "train.bin").write_bytes(b"")  # emptied: np.memmap cannot map it
    one_line_error(bench("--mode=train", *TINY, *FAST, f"--data_dir={d}", "--train_data=dataset", check=False),
                   "train_data=dataset", "prepare the dataset again")


def test_train_mode_compile_blocks_times_the_first_step(tmp_path):
    """--compile=True --compile_blocks=True: train.py's regional compilation, recorded as compiled "blocks", with
    the first (compiling) step's time."""
    out = tmp_path / "t.json"
    p = bench("--mode=train", *TINY, "--batch_size=2", "--block_size=16", f"--out={out}", *FAST, "--compile=True",
              "--compile_blocks=True")
    (r,) = json.load(open(out))["rows"]
    assert r["compiled"] == "blocks" and r["first_step_s"] > 0 and r["step_ms"] > 0
    assert "first step (compiling: blocks)" in p.stdout


def test_missing_config_file():
    one_line_error(bench("--device=cpu", "config/does_not_exist.py", check=False), "config file not found")


def test_cuda_missing():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    one_line_error(bench("--device=cuda", "--batches=1", check=False), "no CUDA GPU")
    one_line_error(bench("--mode=train", "--device=cuda", check=False), "no CUDA GPU")


def test_parse_several_models_not_merged():
    import bench as b
    run, models = b.parse(["config/moe_small.py", "config/ultramem_small.py", "--kv_len=4", "--batches=1,2"])
    assert [n for n, _ in models] == ["moe_small", "ultramem_small"]
    moe, mem = models[0][1], models[1][1]
    assert moe["ffn"] == "moe" and moe["memory"] == "none"
    assert mem["ffn"] == "dense" and mem["memory"] == "ultramem"
    assert moe["kv_len"] == mem["kv_len"] == run["kv_len"] == 4
    assert b._int_list(run["batches"]) == [1, 2]
    assert run["mode"] == "decode" and run["out"] == "bench_decode.json"
    run, models = b.parse([])
    assert [n for n, _ in models] == ["defaults"] and run["device"] == "cuda"


def test_lookup_config_sets_kernel_config():
    """--lookup_config=key=int,...: kernels.CONFIG entries for the run (bools from 0/1); a bad key or value is a
    one-line error."""
    import bench as b
    import kernels
    keep = dict(kernels.CONFIG)
    try:
        assert b.apply_lookup_config("bwd_value_tile=1, bwd_rows=16") == {"bwd_value_tile": True, "bwd_rows": 16}
        assert kernels.CONFIG["bwd_value_tile"] is True and kernels.CONFIG["bwd_rows"] == 16
        for bad in ("nope=1", "bwd_rows", "bwd_rows=x", "bwd_value_tile=2"):
            with pytest.raises(b.BenchError):
                b.apply_lookup_config(bad)
    finally:
        kernels.CONFIG.clear()
        kernels.CONFIG.update(keep)
    one_line_error(bench("config/ultramem_small.py", "--lookup_config=nope=1", "--device=cpu", check=False),
                   "lookup_config")


def test_lookup_config_of_a_config_file_is_its_models(tmp_path):
    """A config file's lookup_config (here the value tile, which config/ultramem_151m.py asked for until session 16)
    is its model's in train mode; the command line's overrides it."""
    import bench as b
    cfg = tmp_path / "ultramem_vtile.py"
    cfg.write_text(open("config/ultramem_151m.py").read() + '\nlookup_config = "bwd_value_tile=1"\n')
    _, models = b.parse([str(cfg), "config/dense_151m.py", "config/ultramem_151m.py"])
    assert [m["lookup_config"] for _, m in models] == ["bwd_value_tile=1", "", ""]
    run, models = b.parse([str(cfg), "--lookup_config=bwd_cols_inner=1"])
    assert run["lookup_config"] == models[0][1]["lookup_config"] == "bwd_cols_inner=1"
    assert b.lookup_overrides(models[0][1]["lookup_config"]) == {"bwd_cols_inner": True}


def test_lookup_config_block_restores_kernel_config():
    """bench.py's sweeps set kernels.CONFIG entries for a block; the entries come back after it, also on error."""
    import bench as b
    import kernels
    keep = dict(kernels.CONFIG)
    with b._lookup_config(bwd_value_tile=True, bwd_rows=16):
        assert kernels.CONFIG["bwd_value_tile"] is True and kernels.CONFIG["bwd_rows"] == 16
    assert kernels.CONFIG == keep
    with pytest.raises(RuntimeError):
        with b._lookup_config(bwd_cols_inner=True):
            raise RuntimeError("a failed launch")
    assert kernels.CONFIG == keep


def test_parse_grid():
    """The sweep grids of scripts/bench_moe.py (--fused_grid) and scripts/sweep_lookup.py (--grid): key:v,v/key:v
    with known keys and literal values, else a one-line exit."""
    import bench as b
    cfg = {"block_n": 64, "proj_atomic": True}
    assert b.parse_grid("--g", "block_n:32,64/proj_atomic:0", cfg, "C") == {"block_n": (32, 64), "proj_atomic": (0,)}
    for spec, said in (("nokey:1", "'nokey': need key:v,v"), ("block_n", "'block_n': need"), ("block_n:", "need"),
                       ("block_n:x", "must be Python literals")):
        with pytest.raises(SystemExit) as e:
            b.parse_grid("--g", spec, cfg, "C")
        assert said in str(e.value) and "\n" not in str(e.value), (spec, e.value)


def test_bad_model_config_is_one_line():
    one_line_error(bench("config/ultramem_small.py", "--n_layer=2", "--device=cpu", check=False), "bad model config")


def test_decode_blocks_compile_scope(tmp_path):
    """compile_scope="blocks": every block compiled once for all its copies (MoE blocks too, with the measuring
    hooks run eagerly so they cause no recompilation), several batch sizes, results beside the eager ones."""
    out = tmp_path / "b.json"
    bench("--mode=decode", "config/moe_small.py", *TINY, "--n_layer=3", "--batches=1,2,3", "--kv_len=8",
          "--compile=True", "--compile_scope=blocks", f"--out={out}", *FAST)
    with open(out) as f:
        (m,) = json.load(f)["models"]
    assert m["compiled"] is True and m["compile_scope"] == "blocks" and "error" not in m
    assert [r["batch"] for r in m["rows"]] == [1, 2, 3] and all(r["latency_ms"] > 0 for r in m["rows"])


def test_bad_compile_scope():
    one_line_error(bench("--compile_scope=layer", "--device=cpu", check=False), "compile_scope")


def test_out_folder_is_created_or_refused_before_timing(tmp_path):
    """--out's folder is made up front; one that cannot be made stops the run at once with one line."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    one_line_error(bench(f"--out={blocker}/sub/y.json", "--device=cpu", check=False), "output folder")


def test_bench_moe_script_dry_run_on_cpu():
    """scripts/bench_moe.py's logic on the CPU with tiny shapes (the kernels run their references there): the
    layer tables of the decode paths and the fused layer's launch-parameter sweep, which adopts its best."""
    p = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "bench_moe.py"), "--impls=fused,gather,triton",
                        "--tune=fused", "--fused_tune_tokens=1,2", "--decode_only"], cwd=ROOT, capture_output=True,
                       text=True, env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "fused: adopted" in p.stdout
    for impl in ("fused", "gather", "triton"):
        assert f"moe_impl={impl}" in p.stdout
    rows = [line.split() for line in p.stdout.splitlines() if line[:6].strip().isdigit()]
    assert [int(r[0]) for r in rows] == [1, 2, 4, 8, 16] * 2 + [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
    assert all(float(r[3]) > 0 for r in rows)  # us per layer
    assert "_grouped_mm" not in p.stdout  # --decode_only skips sections 2 and 3
