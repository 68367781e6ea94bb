"""Does kernels.moe_decode compile (fullgraph) on the GPU with and without its PDL path (1 and 2 tokens; the default
mode, and reduce-overhead as sample.py compiles its decode step: CUDA graphs by torch's cudagraph trees), and is it
right there? (session 20; run from the repo root: PYTHONPATH=. python scripts/check_moe_pdl_compile.py)"""
import torch

import kernels

torch.manual_seed(0)
D, E, Fh = 2048, 34, 4864
rw = torch.randn(E, D, device="cuda", dtype=torch.bfloat16) * 0.02
wf = torch.randn(E, D, Fh, device="cuda", dtype=torch.bfloat16) * 0.02
wp = torch.randn(E, Fh, D, device="cuda", dtype=torch.bfloat16) * 0.02
with torch.no_grad():
    for N in (1, 2):
        x = torch.randn(N, D, device="cuda", dtype=torch.bfloat16)
        ref = kernels.moe_decode_reference(x, rw, wf, wp, 2, True)
        print(f"N={N}: eager _moe_decode_pdl {kernels._moe_decode_pdl(x)}", flush=True)
        for mode in ("default", "reduce-overhead"):
            torch._dynamo.reset()
            try:
                f = torch.compile(lambda x: kernels.moe_decode(x, rw, wf, wp, 2, True), fullgraph=True, mode=mode)
                for _ in range(4):  # reduce-overhead records its graph on a later call, then replays it
                    y = f(x).clone()
                err = ((y.float() - ref).norm() / ref.norm()).item()
                print(f"N={N} {mode}: compiled ok, dtype {y.dtype}, relative error {err:.2e}", flush=True)
            except Exception as e:
                print(f"N={N} {mode}: compiled FAILED: {type(e).__name__}: {str(e)[:400]}", flush=True)
