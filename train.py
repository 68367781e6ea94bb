"""
Train a dense, MoE, PKM or UltraMem GPT: one device (CUDA or CPU), or DDP under torchrun.

    python train.py config/facts.py [--key=value ...]
    torchrun --standalone --nproc_per_node=2 train.py config/dense_151m.py
    python train.py config/facts.py --init_from=resume          # continue exactly where the run stopped

The defaults below are plain variables (nanoGPT style); every GPTConfig field (model.py, memory.py) is a
key too. A config file and --key=value overrides are applied over them by configurator.py.
"""

import json
import math
import os
import random
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, fields

import numpy as np
import torch
from tqdm import tqdm

import kernels
from model import GPT, GPTConfig

# ----------------------------------------------------------------------------------------------------
# defaults: the embedded quick start (data/facts, a small model that trains on a CPU in minutes)
out_dir = "out/facts"
dataset = "facts"  # reads data/<dataset>/{train,val}.bin and meta.json
data_dir = ""  # a dataset folder anywhere; overrides dataset
init_from = "scratch"  # "scratch" | "resume" (from out_dir/ckpt.pt)
overwrite = False  # allow a scratch run to replace an existing checkpoint in out_dir
seed = 1337
# batches: tokens per optimizer step = batch_size * grad_accum * block_size * world size
batch_size = 16  # sequences per micro-batch per device
grad_accum = 1  # micro-batches per optimizer step per device
# AdamW with the paper's defaults (spec 7.3)
learning_rate = 1e-3
max_iters = 2000  # optimizer steps; the schedule's length
warmup_ratio = 0.01  # linear warmup over this fraction of max_iters
min_lr_ratio = 0.1  # cosine decay to this fraction of the peak
weight_decay = 0.1  # on matrices only
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0  # 0 disables
# evaluation, logging, checkpoints
eval_interval = 250
eval_iters = 20  # fixed validation batches (the same windows every time: comparable across runs)
log_interval = 10
ckpt_interval = 0  # steps between checkpoints; 0 means at every evaluation
stop_iter = 0  # stop (with a checkpoint) after this step without changing the schedule; 0 = run to max_iters
progress = True  # tqdm progress bar
# system
device = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N"
dtype = "auto"  # "auto" (bfloat16 autocast on CUDA, float32 on CPU) | "float32" | "bfloat16"
compile = None  # torch.compile the model; None means on for CUDA, off for CPU
compile_blocks = False  # with compile on, compile each block, memory layer and the loss on its own (regional
# compilation: model.GPT.compile_blocks; the loop between blocks eager) instead of the whole model. On the H200
# (session 9, cold caches) the small UltraMem's first step took 21.7 s against 42.3 s whole, its step 66.8 against
# 67.0 ms; scripts/gpu_results.sh's set parts use it
eval_compile = False  # with compile on, evaluate through the compiled model too (one more compilation, for eval
# mode without grad). Off: eager evaluation costs 10-13% of a small run's time, the eval graph's compile about 12 s
# of a 550-step run's. (Session 8 found this graph wrong on the H200 for TDQKR layers; fixed in session 9, memory.py's
# head_scores, and checked by scripts/diag_compiled_eval.py; docs/RESULTS.md)
lookup_config = ""  # kernels.CONFIG overrides for the memory lookup, "key=int,key=int" (kernels.parse_config), e.g.
# "bwd_value_tile=1": the UltraMem-151M step 3.5% faster on the H200 (docs/BENCHMARKS.md, session 8)
peak_tflops = 672.0  # for MFU: the H200's measured dense bf16 matmul rate (platform_notes.md)
# model: a small GPT for the facts dataset (every GPTConfig field is a key; these override its defaults)
n_layer = 4
n_head = 4
n_embd = 128
block_size = 128
vocab_size = 0  # 0: taken from the dataset's meta.json (padded to a multiple of 64)
dropout = 0.0
# ----------------------------------------------------------------------------------------------------

TRAIN_KEYS = [k for k, v in list(globals().items()) if not k.startswith("_") and isinstance(v, (int, float, bool, str, type(None)))]
TYPES = {"compile": (bool, type(None))}
NOT_RESTORED = {"init_from", "overwrite", "stop_iter", "progress", "device", "compile", "compile_blocks", "eval_compile"}  # a resume's own controls
RUNTIME_MODEL_KEYS = {"dropout", "mem_decode", "mem_lookup_dtype"}  # model settings a resume may change: no parameter depends on them


def default_config() -> dict:
    """The effective defaults: GPTConfig's fields, overridden by the training defaults above."""
    cfg = {f.name: f.default for f in fields(GPTConfig)}
    cfg.update({k: globals()[k] for k in TRAIN_KEYS})
    return cfg


class Fatal(Exception):
    """A user-facing error: printed as one line, exit status 1."""


def run_or_exit(main, argv: list[str]) -> None:
    """A script's main(argv), with a Fatal printed as `error: ...` on one line and exit status 1."""
    try:
        main(argv)
    except Fatal as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


# ----------------------------------------------------------------------------------------------------
# data


def open_dataset(cfg: dict) -> tuple[str, dict]:
    """The config's dataset folder (data_dir, else data/<dataset> beside this file) and its checked meta.json;
    Fatal with a one-line message where the folder, its meta.json or a split's .bin is missing or malformed."""
    from data.common import load_meta
    data_dir = cfg["data_dir"] or os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", cfg["dataset"])
    try:
        meta = load_meta(data_dir)
    except (FileNotFoundError, ValueError) as e:
        raise Fatal(str(e))
    for split in ("train", "val"):
        if not os.path.exists(os.path.join(data_dir, f"{split}.bin")):
            raise Fatal(f"{os.path.join(data_dir, split + '.bin')} not found: prepare the dataset first (see data/README.md)")
    return data_dir, meta


class TokenLoader:
    """Batches of non-overlapping windows of block_size + 1 tokens from a token file, visited in a
    seeded random order, one epoch after another. The state is a single cursor (windows consumed by all
    ranks together), so a resumed run draws exactly the batches the uninterrupted run would have."""

    def __init__(self, path: str, np_dtype: str, block_size: int, batch_size: int, rank: int, world: int, seed: int):
        try:
            self.data = np.memmap(path, dtype=np_dtype, mode="r")
        except ValueError as e:  # an empty or truncated file
            raise Fatal(f"{path} is not readable as {np_dtype} tokens ({e}); prepare the dataset again (see data/README.md)")
        self.T, self.B, self.rank, self.world, self.seed = block_size, batch_size, rank, world, seed
        self.n = (len(self.data) - 1) // block_size
        if self.n < batch_size * world:
            raise Fatal(f"{path} holds {len(self.data)} tokens: too few for one batch of {batch_size * world} x {block_size + 1}")
        self.cursor = 0
        self._epoch, self._order = -1, None

    def _window(self, i: int) -> int:
        epoch, j = divmod(i, self.n)
        if epoch != self._epoch:
            self._epoch, self._order = epoch, np.random.default_rng([self.seed, epoch]).permutation(self.n)
        return int(self._order[j])

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        start = self.cursor + self.rank * self.B
        self.cursor += self.B * self.world
        return self.windows([self._window(start + b) for b in range(self.B)])

    def windows(self, ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        T = self.T
        buf = np.stack([self.data[w * T : w * T + T + 1] for w in ids]).astype(np.int64)
        x = torch.from_numpy(buf)
        return x[:, :-1], x[:, 1:]

    def state_dict(self) -> dict:
        return {"cursor": self.cursor}

    def load_state_dict(self, state: dict) -> None:
        self.cursor = int(state["cursor"])


def lr_at(step: int, cfg: dict) -> float:
    """Linear warmup over warmup_ratio of the steps, then cosine decay to min_lr_ratio of the peak."""
    lr, total = cfg["learning_rate"], cfg["max_iters"]
    warmup = max(1, round(cfg["warmup_ratio"] * total))
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return lr * (cfg["min_lr_ratio"] + (1 - cfg["min_lr_ratio"]) * 0.5 * (1 + math.cos(math.pi * progress)))


def lr_mult_at(step: int, group: dict, max_iters: int) -> float:
    """A group's learning-rate multiplier, decaying linearly from lr_mult_start to lr_mult_end over the
    run (UltraMem's value learning rate, spec 7.2; 1 -> 1 for ordinary parameters)."""
    start, end = group["lr_mult_start"], group["lr_mult_end"]
    return end + (start - end) * max(0.0, 1.0 - step / max_iters)


# ----------------------------------------------------------------------------------------------------
# checkpoints: written to a temporary file in the same folder, then renamed over the old one, so a crash
# mid-write leaves the previous checkpoint intact


def save_checkpoint(obj: dict, path: str) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_checkpoint(path: str, map_location="cpu") -> dict:
    if not os.path.exists(path):
        raise Fatal(f"no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)  # our own file: holds RNG states
    except Exception as e:  # truncated, not a torch file, ...
        raise Fatal(f"checkpoint {path} is corrupt or unreadable ({type(e).__name__}: {str(e).splitlines()[0][:120]})")
    if not isinstance(ckpt, dict) or not {"model", "model_args", "step"} <= set(ckpt):
        raise Fatal(f"checkpoint {path} is not a checkpoint of this project (missing model, model_args or step)")
    return ckpt


def model_from_checkpoint(ckpt: dict, mem_decode: str = "") -> GPT:
    """The checkpoint's model with its weights, in eval mode on the CPU (sample.py, scripts/eval_text.py,
    data/facts/recall.py). mem_decode "" keeps the checkpoint's setting; "plain" or "fused" replaces it (a
    RUNTIME_MODEL_KEYS setting: no weight depends on it). Checked here, since a model without memory layers
    does not check its memory settings."""
    if mem_decode not in ("", "plain", "fused"):
        raise Fatal(f"mem_decode must be '', 'plain' or 'fused', got {mem_decode!r}")
    args = dict(ckpt["model_args"], **({"mem_decode": mem_decode} if mem_decode else {}))
    try:
        model = GPT(GPTConfig(**args))
    except ValueError as e:
        raise Fatal(f"bad model config: {e}")
    model.load_state_dict(ckpt["model"])
    return model.eval()


def truncate_metrics(path: str, step: int) -> None:
    """A resumed run repeats the steps after its checkpoint: drop their records from a killed run's log."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        keep = [line for line in f if line.strip() and json.loads(line).get("step", 0) <= step]
    with open(path + ".tmp", "w") as f:
        f.writelines(keep)
    os.replace(path + ".tmp", path)


def rng_state(device_type: str) -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if device_type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict, device_type: str) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if device_type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"])


# ----------------------------------------------------------------------------------------------------


def main(argv: list[str]) -> None:
    from configurator import configure_or_exit, format_config

    master_env = int(os.environ.get("RANK", 0)) == 0
    touched: set[str] = set()
    cfg = configure_or_exit(default_config(), argv, types=TYPES, print_config=False, touched=touched)
    # a resumed run continues with the checkpoint's settings: only what this command sets changes them
    # (run controls such as stop_iter and the device are this command's own)
    ckpt_path = os.path.join(cfg["out_dir"], "ckpt.pt")
    ckpt = None
    if cfg["init_from"] == "resume":
        ckpt = load_checkpoint(ckpt_path)
        saved = {k: v for k, v in ckpt.get("config", {}).items() if k in cfg and k not in NOT_RESTORED}
        cfg.update({k: v for k, v in saved.items() if k not in touched})
    if master_env:
        print(format_config(cfg, default_config()), flush=True)

    # --- distributed and device -------------------------------------------------------------------
    ddp = int(os.environ.get("RANK", -1)) != -1
    if ddp:
        import torch.distributed as dist

        rank, local_rank, world = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"])
        if cfg["device"] in ("auto", "cuda") and torch.cuda.is_available():
            dev = f"cuda:{local_rank}"
            torch.cuda.set_device(dev)
        else:
            dev = "cpu"
        dist.init_process_group(backend="nccl" if dev.startswith("cuda") else "gloo")
    else:
        rank, local_rank, world = 0, 0, 1
        dev = cfg["device"]
        if dev == "auto":
            dev = "cuda" if torch.cuda.is_available() else "cpu"
        if dev.startswith("cuda") and not torch.cuda.is_available():
            raise Fatal(f"device={dev!r} but no CUDA device is available")
    master = rank == 0
    if ddp:
        print(f"rank {rank}/{world} on {dev}", flush=True)
    device_type = "cuda" if dev.startswith("cuda") else "cpu"
    dtype = cfg["dtype"] if cfg["dtype"] != "auto" else ("bfloat16" if device_type == "cuda" else "float32")
    if dtype not in ("float32", "bfloat16"):
        raise Fatal(f"dtype must be 'auto', 'float32' or 'bfloat16', got {dtype!r}")
    autocast = nullcontext() if dtype == "float32" else torch.autocast(device_type, dtype=torch.bfloat16)
    use_compile = cfg["compile"] if cfg["compile"] is not None else device_type == "cuda"
    if device_type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    for key in ("batch_size", "grad_accum", "max_iters", "eval_iters", "log_interval", "eval_interval"):
        if cfg[key] <= 0:
            raise Fatal(f"{key} must be positive, got {cfg[key]}")
    try:
        lookup = kernels.parse_config(cfg["lookup_config"])
    except ValueError as e:
        raise Fatal(str(e))
    kernels.CONFIG.update(lookup)  # before the model compiles: the kernels read it when they launch

    # --- data ---------------------------------------------------------------------------------------
    data_dir, meta = open_dataset(cfg)

    # --- checkpoint and model -----------------------------------------------------------------------
    if ckpt is not None:
        model_args = dict(ckpt["model_args"])
        changed = [k for k in touched if k in model_args and k not in RUNTIME_MODEL_KEYS and cfg[k] != model_args[k]]
        if changed:  # the architecture of a checkpoint cannot change
            raise Fatal(f"cannot resume with other model settings ({', '.join(f'{k}={cfg[k]!r}' for k in sorted(changed))}); "
                        f"the checkpoint has {', '.join(f'{k}={model_args[k]!r}' for k in sorted(changed))}")
        model_args.update({k: cfg[k] for k in RUNTIME_MODEL_KEYS})
    elif cfg["init_from"] == "scratch":
        if os.path.exists(ckpt_path) and not cfg["overwrite"]:
            raise Fatal(f"{ckpt_path} exists: continue it with --init_from=resume, or pass --overwrite=True or another out_dir")
        model_args = {k: cfg[k] for k in (f.name for f in fields(GPTConfig))}
        if model_args["vocab_size"] == 0:
            model_args["vocab_size"] = (meta["vocab_size"] + 63) // 64 * 64
        elif model_args["vocab_size"] < meta["vocab_size"]:
            raise Fatal(f"vocab_size={model_args['vocab_size']} is smaller than the dataset's {meta['vocab_size']}")
    else:
        raise Fatal(f"init_from must be 'scratch' or 'resume', got {cfg['init_from']!r}")

    torch.manual_seed(cfg["seed"])  # the same initial weights on every rank
    try:
        model_config = GPTConfig(**model_args)
        model = GPT(model_config)
    except ValueError as e:
        raise Fatal(f"bad model config: {e}")
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
    model.to(dev)
    torch.manual_seed(cfg["seed"] + rank)  # dropout differs across ranks

    T = model_config.block_size
    train_loader = TokenLoader(os.path.join(data_dir, "train.bin"), meta["dtype"], T, cfg["batch_size"], rank, world, cfg["seed"])
    val_loader = TokenLoader(os.path.join(data_dir, "val.bin"), meta["dtype"], T, cfg["batch_size"], 0, 1, cfg["seed"])

    groups = model.optim_groups(cfg["weight_decay"])
    for g in groups:
        g.pop("names")
    optimizer = torch.optim.AdamW(groups, lr=cfg["learning_rate"], betas=(cfg["beta1"], cfg["beta2"]), fused=device_type == "cuda")
    step, ckpt_step = 0, None
    best_val = float("inf")
    if ckpt is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
        step = ckpt_step = ckpt["step"]
        best_val = ckpt.get("best_val_loss", best_val)
        train_loader.load_state_dict(ckpt["loader"])
        rngs = ckpt["rng"]
        set_rng_state(rngs[rank] if rank < len(rngs) else rngs[0], device_type)
        del ckpt

    n_total, n_act = model.num_params(), model.num_params(activated=True)
    tokens_per_step = cfg["batch_size"] * cfg["grad_accum"] * T * world
    if master:
        os.makedirs(cfg["out_dir"], exist_ok=True)
        metrics_path = os.path.join(cfg["out_dir"], "metrics.jsonl")
        if ckpt_step is not None:
            truncate_metrics(metrics_path, ckpt_step)
        elif os.path.exists(metrics_path):  # a scratch run starts its own log (a run killed before its first
            # checkpoint, or the one --overwrite replaces, would otherwise run on in it); the old one is kept aside
            os.replace(metrics_path, metrics_path + ".prev")
            print(f"note: the earlier {metrics_path} is now {metrics_path}.prev")
        print(f"model: {n_total / 1e6:.2f}M parameters, {n_act / 1e6:.2f}M activated, "
              f"{model.flops_per_token() / 1e9:.3f} GFLOPs/token forward (paper's count); "
              f"{tokens_per_step:,} tokens per step on {world} x {dev} in {dtype}")
    raw_model = model
    if use_compile:  # by blocks: in place, raw_model's blocks, memory layers and loss are compiled
        model = raw_model.compiled(cfg["compile_blocks"])
    eval_model = model if use_compile and cfg["eval_compile"] else raw_model  # not through DDP: no gradients to sync
    # compiled blocks are part of raw_model: an eager evaluation must tell torch.compile to stand aside
    eval_stance = "force_eager" if use_compile and not cfg["eval_compile"] and cfg["compile_blocks"] else "default"
    if use_compile and master:
        print("compiled: " + ("blocks" if cfg["compile_blocks"] else "model") + ", training"
              + (" and evaluation" if cfg["eval_compile"] else " (evaluation eager)"))
    if ddp:
        from torch.nn.parallel import DistributedDataParallel as DDP

        # buffers (rope tables, shuffle permutations, rank-1 vectors) are identical functions of the
        # weights on every rank, so they need no broadcast
        model = DDP(model, device_ids=[local_rank] if device_type == "cuda" else None, broadcast_buffers=False)

    # --- evaluation on fixed validation windows --------------------------------------------------
    n_eval = min(val_loader.n, cfg["eval_iters"] * cfg["batch_size"])
    eval_batches = [list(range(i, min(i + cfg["batch_size"], n_eval))) for i in range(0, n_eval, cfg["batch_size"])]

    @torch.no_grad()
    def evaluate() -> float:
        model.eval()
        raw_model.refresh()
        total = torch.zeros(2, device=dev)
        for b in eval_batches[rank::world]:
            x, y = val_loader.windows(b)
            with autocast, torch.compiler.set_stance(eval_stance):
                _, loss, _ = eval_model(x.to(dev), y.to(dev))
            total += torch.stack([loss.float() * len(b), torch.tensor(float(len(b)), device=dev)])
        if ddp:
            dist.all_reduce(total)
        model.train()
        return (total[0] / total[1]).item()

    def write_metrics(rec: dict) -> None:
        if master:
            with open(os.path.join(cfg["out_dir"], "metrics.jsonl"), "a") as f:
                f.write(json.dumps(rec) + "\n")

    def checkpoint() -> None:
        rngs = [rng_state(device_type)]
        if ddp:
            rngs = [None] * world
            dist.all_gather_object(rngs, rng_state(device_type))
        if master:
            save_checkpoint({
                "model": raw_model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                "model_args": asdict(model_config), "config": cfg, "meta": meta, "loader": train_loader.state_dict(),
                "rng": rngs, "best_val_loss": best_val, "version": 1,
            }, ckpt_path)

    # --- the loop ------------------------------------------------------------------------------------
    ckpt_interval = cfg["ckpt_interval"] or cfg["eval_interval"]
    end = cfg["max_iters"] if cfg["stop_iter"] <= 0 else min(cfg["max_iters"], cfg["stop_iter"])
    bad = torch.zeros((), dtype=torch.bool, device=dev)  # a non-finite loss or gradient since the last check
    if step >= end and master:
        print(f"nothing to do: the checkpoint is at step {step}, and this run stops at step {end}")
    bar = tqdm(total=end, initial=step, disable=not (master and cfg["progress"]), dynamic_ncols=True, unit="step")
    t_log, tokens_since = time.perf_counter(), 0
    pin = device_type == "cuda"
    model.train()
    while step < end:
        lr = lr_at(step, cfg)
        for g in optimizer.param_groups:
            g["lr"] = lr * lr_mult_at(step, g, cfg["max_iters"])
        raw_model.refresh()  # e.g. UltraMem's rank-1 selection vectors from the current cores
        ce_sum = torch.zeros((), device=dev)
        for micro in range(cfg["grad_accum"]):
            # reading the batch overlaps the GPU's work on the previous step (CUDA runs asynchronously)
            x, y = (t.pin_memory().to(dev, non_blocking=True) if pin else t for t in train_loader.next_batch())
            if ddp:
                model.require_backward_grad_sync = micro == cfg["grad_accum"] - 1
            with autocast:
                _, ce, aux = model(x, y)
                loss = ce + sum(aux.values()) if aux else ce
            (loss / cfg["grad_accum"]).backward()
            ce_sum += ce.detach()
        bad |= ~torch.isfinite(ce_sum)
        if cfg["grad_clip"] > 0:
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
            bad |= ~torch.isfinite(norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        tokens_since += tokens_per_step
        bar.update(1)

        last = step == end
        if step % cfg["log_interval"] == 0 or last or step % cfg["eval_interval"] == 0 or step % ckpt_interval == 0:
            if ddp:
                dist.all_reduce(bad, op=dist.ReduceOp.MAX)
                dist.all_reduce(ce_sum)  # log the global batch's loss (SUM / world: gloo has no AVG)
                ce_sum /= world
            if bad.item():
                # the weights may already be damaged: stop without touching the last good checkpoint
                raise Fatal(f"non-finite loss or gradient at or before step {step}; the last good checkpoint "
                            f"({ckpt_path}) is left untouched. Lower learning_rate or check the data.")
            ce_val = ce_sum.item() / cfg["grad_accum"]
            dt = time.perf_counter() - t_log
            tok_s = tokens_since / dt
            mfu = raw_model.estimate_mfu(tok_s / world, cfg["peak_tflops"] * 1e12)
            t_log, tokens_since = time.perf_counter(), 0
            rec = {"step": step, "loss": ce_val, "lr": lr, "tokens_per_sec": tok_s, "mfu": mfu, "time": time.time()}
            rec.update({f"aux_{k}": v.item() for k, v in aux.items()})
            write_metrics(rec)
            bar.set_postfix(loss=f"{ce_val:.4f}", lr=f"{lr:.2e}", tok_s=f"{tok_s:,.0f}", mfu=f"{100 * mfu:.1f}%")
        if step % cfg["eval_interval"] == 0 or last:
            val = evaluate()
            best_val = min(best_val, val)
            rec = {"step": step, "val_loss": val, "time": time.time()}
            if device_type == "cuda":
                rec["peak_mem_gb"] = torch.cuda.max_memory_allocated() / 1e9
            write_metrics(rec)
            if master:
                bar.write(f"step {step}: val loss {val:.4f}")
        if step % ckpt_interval == 0 or last:
            checkpoint()
    bar.close()
    if ddp:
        # a barrier first: with gloo, destroy_process_group joins the gloo work thread while holding the GIL, and
        # that thread may still be releasing the last all_gather_object's work, which needs the GIL to free its
        # tensors: both ranks then hang at exit (seen in CI, 2026-11-30, in gdb: ~ProcessGroupGloo in
        # thread::join, the pt_gloo_runloop thread in take_gil from ~AsyncAllgatherWork). The main thread waits
        # in the barrier without the GIL, and by then the work thread has freed the earlier work
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    run_or_exit(main, sys.argv[1:])
