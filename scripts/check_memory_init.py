"""The memory layers of a config at initialisation, on real text (issue 7's bug check, docs/RESULTS.md): the
values' std against the spec's target sqrt(E / (2 m H L)) (section 7.1), the memory outputs' RMS against the MLP
branches' and the residual stream's where they are added, the selected scores, and how many value rows the text
touches (against the expectation if selection were uniform). CPU is enough; no training.

    TIKTOKEN_CACHE_DIR=../shared/tiktoken_cache PYTHONPATH=. python scripts/check_memory_init.py \\
        [config/small/ultramem.py] [--text=../shared/data/tinyshakespeare.txt] [--tokens=16384] [--seed=1337] \\
        [--key=value ...]            # other keys override the config, e.g. --mem_knum=256 to save memory
"""
import math
import sys

import tiktoken
import torch

from configurator import read_config_file
from model import GPT, GPTConfig

args = [a for a in sys.argv[1:] if not a.startswith("--")]
opts = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--") and "=" in a)
text_path = opts.pop("text", "../shared/data/tinyshakespeare.txt")
n_tokens = int(opts.pop("tokens", 16384))
seed = int(opts.pop("seed", 1337))
settings = read_config_file(args[0] if args else "config/small/ultramem.py")
for k, v in opts.items():  # overrides, typed like the config's value
    settings[k] = type(settings.get(k, v))(v) if not isinstance(settings.get(k), bool) else v in ("True", "true", "1")
settings["vocab_size"] = settings.get("vocab_size") or 50304
try:
    text = open(text_path, encoding="utf-8").read()
except OSError as e:
    sys.exit(f"error: cannot read --text={text_path}: {e.strerror}")
ids = tiktoken.get_encoding("gpt2").encode_ordinary(text)
T = min(settings["block_size"], 1024)
B = n_tokens // T
if B < 1 or len(ids) < B * T:
    sys.exit(f"error: {text_path} has {len(ids)} tokens, fewer than --tokens={n_tokens} (at least {T})")
x = torch.tensor(ids[: B * T]).view(B, T)

torch.manual_seed(seed)
config = GPTConfig.from_dict(settings)
model = GPT(config).eval()
model.refresh()
if not model.memories:
    sys.exit("error: the config has no memory layers")
rms = lambda t: t.float().pow(2).mean().sqrt().item()
rec, picks = {}, {}
for i, block in enumerate(model.blocks):
    block.register_forward_hook(lambda mod, inp, out, i=i: rec.__setitem__(("residual", i), rms(out[0])))
    if block.ffn is not None:
        block.ffn.register_forward_hook(
            lambda mod, inp, out, i=i: rec.__setitem__(("ffn", i), rms(out[0] if isinstance(out, tuple) else out)))
for j, mem in enumerate(model.memories):
    mem.register_forward_hook(lambda mod, inp, out, j=j: rec.__setitem__(("memory", j), rms(out[0])))
    select = mem.select

    def recorded(h, input_pos=None, j=j, select=select):
        addr, scores = select(h, input_pos)
        picks[j] = (addr, scores)
        return addr, scores

    mem.select = recorded  # the instance's select: forward calls self.select
with torch.no_grad():
    model(x)

print(f"{args[0] if args else 'config/small/ultramem.py'}: {B} x {T} tokens of {text_path}, seed {seed}")
for i, (mem, src, dst) in enumerate(zip(model.memories, model.mem_src, model.mem_dst)):
    target = math.sqrt(mem.E / (2 * mem.m * mem.H * mem.n_layer))
    addr, scores = picks[i]
    rows = addr % mem.N
    counts = torch.bincount(rows.flatten(), minlength=mem.N).float()
    slots = rows.numel()
    uniform = mem.N * -math.expm1(slots * math.log1p(-1.0 / mem.N)) / mem.N
    top = counts.sort(descending=True).values
    summed = scores.float().sum(-1)
    print(f"memory {i} ({src}:{dst}): values std {mem.values.std():.4f} (target {target:.4f}); "
          f"output RMS {rec[('memory', i)]:.4f}, MLP branch RMS at block {dst} {rec.get(('ffn', dst), float('nan')):.4f}, "
          f"residual RMS after block {dst} {rec[('residual', dst)]:.4f}")
    print(f"  scores: per core mean {scores.float().mean():.3f}, summed over cores mean {summed.mean():.3f} "
          f"RMS {rms(summed):.3f}")
    print(f"  rows: {slots} slot reads touch {int((counts > 0).sum())} of {mem.N} rows "
          f"({(counts > 0).float().mean():.3f}; uniform selection: {uniform:.3f}); the top 1% of rows take "
          f"{top[: max(1, mem.N // 100)].sum() / slots:.3f} of the reads")
