"""Does kernels.moe_decode compile (fullgraph) on the GPU with and without its PDL path (1 and 2 tokens; the default
mode, and reduce-overhead as sample.py compiles its decode step: CUDA graphs by torch's cudagraph trees; without and
with the residual stream added), and is it right there? (session 20; run from the repo root:
PYTHONPATH=. python scripts/check_moe_pdl_compile.py)"""
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
        r = torch.randn(N, D, device="cuda", dtype=torch.bfloat16)  # a residual stream, added by the last kernel
        for mode, res in (("default", False), ("reduce-overhead", False), ("default", True), ("reduce-overhead", True)):
            torch._dynamo.reset()
            want = ref + r.float() if res else ref
            try:
                f = torch.compile(lambda x: kernels.moe_decode(x, rw, wf, wp, 2, True, residual=r if res else None),
                                  fullgraph=True, mode=mode)
                for _ in range(4):  # reduce-overhead records its graph on a later call, then replays it
                    y = f(x).clone()
                err = ((y.float() - want).norm() / want.norm()).item()
                print(f"N={N} {mode}{' + residual' if res else ''}: compiled ok, dtype {y.dtype}, relative error "
                      f"{err:.2e}", flush=True)
            except Exception as e:
                print(f"N={N} {mode}{' + residual' if res else ''}: compiled FAILED: {type(e).__name__}: "
                      f"{str(e)[:400]}", flush=True)
