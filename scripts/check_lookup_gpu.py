"""The memory lookup on the GPU against a float64 reference, on random odd shapes that neither the tests nor
bench.py's check use (run from the repo root on a GPU: PYTHONPATH=. python scripts/check_lookup_gpu.py [--seed=N]
[--cases=N] [--lookup_config=key=value,...]; on the CPU under the Triton interpreter with small sizes: TRITON_INTERPRET=1 ... --cpu).

Each case draws N, Dv, K, E, h, T and the dtypes from its seed (table sizes that are not multiples of the row
tiles, widths that are not powers of two, 1-3 MCS cores, 1-4 virtual blocks, 1 to 5,000 tokens, duplicate rows
within and across tokens), runs kernels.mem_lookup forward and backward through autograd (the path memory.py
takes) with the kernels' outputs poisoned with NaN before each launch, and compares the output and both gradients
with kernels.mem_lookup_reference / mem_lookup_bwd_reference in float64: relative error (norm of the difference
over the norm of the reference) at most 4e-3 for bf16 results (their rounding; 6e-3 under the interpreter, which
truncates), 2e-5 for fp32 ones (the kernels' split of fp32 operands into two bf16 parts keeps 16 mantissa bits).
Also: the sorted backward bitwise equal on repeat. Prints one line per case; exits 1 if any fails.
"""
import sys

import torch

import kernels

SEED = next((int(a.split("=", 1)[1]) for a in sys.argv if a.startswith("--seed=")), 20261130)
CASES = next((int(a.split("=", 1)[1]) for a in sys.argv if a.startswith("--cases=")), 40)
CPU = "--cpu" in sys.argv
# kernels.CONFIG overrides, as train.py's lookup_config (e.g. bwd_max_slots=32: many row tiles split into pieces)
kernels.CONFIG.update(kernels.parse_config(next((a.split("=", 1)[1] for a in sys.argv
                                                 if a.startswith("--lookup_config=")), "")))
DEV = "cpu" if CPU else "cuda"
# the interpreter rounds fp32 to bf16 by truncation (checked: triton 3.9 on this project's CPU machine), twice the
# error of the GPU's round-to-nearest, so bf16 results get a wider bound there
TOL = {torch.bfloat16: 6e-3 if CPU else 4e-3, torch.float32: 2e-5}


def draw(rng: torch.Generator) -> dict:
    pick = lambda xs: xs[int(torch.randint(len(xs), (1,), generator=rng))]
    h = pick([1, 2, 3])
    Dv = h * pick([8, 12, 32, 64, 100, 128, 192, 256])
    vdt = pick([torch.bfloat16, torch.float32])
    sdt = vdt if vdt == torch.float32 else pick([torch.bfloat16, torch.float32])
    if CPU:  # the interpreter is slow: small tables and batches
        return dict(N=pick([97, 1000, 4099]), Dv=Dv, K=pick([1, 3, 7, 33]), E=pick([1, 3, 4]), h=h,
                    T=pick([1, 5, 64]), vdt=vdt, sdt=sdt)
    return dict(N=pick([97, 1000, 4099, 65537, 300001]), Dv=Dv, K=pick([1, 3, 7, 33, 64, 160]), E=pick([1, 3, 4]),
                h=h, T=pick([1, 5, 64, 333, 700, 5000]), vdt=vdt, sdt=sdt)


def main() -> int:
    if CPU:
        kernels.set_impl("triton")  # raises without TRITON_INTERPRET=1
    elif not torch.cuda.is_available():
        sys.exit("check_lookup_gpu.py: no CUDA GPU (--cpu: the Triton interpreter)")
    rng = torch.Generator().manual_seed(SEED)
    g = torch.Generator(device=DEV).manual_seed(SEED)
    kernels.POISON_OUTPUTS = True
    rel = lambda a, b: ((a.double() - b).norm() / b.norm().clamp_min(1e-300)).item()
    failed = 0
    name = "cpu (the Triton interpreter)" if CPU else torch.cuda.get_device_name()
    print(f"device {name}, torch {torch.__version__}, seed {SEED}, {CASES} cases; kernels.CONFIG {kernels.CONFIG}",
          flush=True)
    for i in range(CASES):
        c = draw(rng)
        N, Dv, K, E, h, T = c["N"], c["Dv"], c["K"], c["E"], c["h"], c["T"]
        values = torch.randn(N, Dv, device=DEV, generator=g).to(c["vdt"])
        rows = torch.randint(0, N, (T, K), device=DEV, generator=g)
        if K > 2:
            rows[:, 1] = rows[:, 0]  # duplicates within a token
        rows[T // 2:, -1] = rows[0, 0].clone()  # and across tokens
        blocks = torch.randint(0, E, (T, K), device=DEV, generator=g)
        scores = torch.randn(T, K, h, device=DEV, generator=g).to(c["sdt"])
        gout = torch.randn(T, E, Dv, device=DEV, generator=g).to(c["vdt"])
        ref = kernels.mem_lookup_reference(values.double(), rows, blocks, scores.double(), E)
        gv_ref, gs_ref = kernels.mem_lookup_bwd_reference(gout.double(), values.double(), rows, blocks,
                                                          scores.double(), E)
        v, s = values.clone().requires_grad_(True), scores.clone().requires_grad_(True)
        out = kernels.mem_lookup(v, rows, blocks, s, E)
        gv, gs = torch.autograd.grad(out, (v, s), gout)
        again = torch.autograd.grad(kernels.mem_lookup(v, rows, blocks, s, E), (v, s), gout)
        errs = {"fwd": rel(out, ref), "grad_values": rel(gv, gv_ref), "grad_scores": rel(gs, gs_ref)}
        tols = {"fwd": TOL[out.dtype], "grad_values": TOL[gv.dtype], "grad_scores": TOL[gs.dtype]}
        bitwise = torch.equal(gv, again[0]) and torch.equal(gs, again[1])
        finite = all(bool(t.isfinite().all()) for t in (out, gv, gs))
        ok = finite and bitwise and all(errs[k] <= tols[k] for k in errs)
        failed += not ok
        print(f"case {i:2d} N={N} Dv={Dv} K={K} E={E} h={h} T={T} values {str(c['vdt'])[6:]} scores "
              f"{str(c['sdt'])[6:]}: " + ", ".join(f"{k} {e:.2e}" for k, e in errs.items())
              + f", repeat bitwise {bitwise}, finite {finite} -> {'ok' if ok else 'FAILED'}", flush=True)
        del values, rows, blocks, scores, gout, ref, gv_ref, gs_ref, v, s, out, gv, gs, again
    print(f"{CASES - failed} of {CASES} cases ok")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
