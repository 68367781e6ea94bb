"""What the kernel tests (test_kernels, test_moe_kernel, test_decode_attention) share: the comparison of a
kernel's output with its reference, and the subprocess that runs a test file's interpreter checks.

TRITON_INTERPRET=1 must be set before triton is first imported in a process, and other test modules import
kernels earlier in the same pytest run, so each file's Triton-on-CPU checks run in a subprocess: the file
run as a script with --interp, which prints "interp: all ..." when every check passed."""

import os
import subprocess
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def close(out, ref, dtype, what):
    """Relative error check; NaN (an unwritten, poisoned element) always fails. bf16 is loose: the
    interpreter rounds fp32 -> bf16 towards zero, torch to nearest."""
    assert out.shape == ref.shape, f"{what}: shape {tuple(out.shape)} != {tuple(ref.shape)}"
    assert out.dtype == ref.dtype, f"{what}: dtype {out.dtype} != {ref.dtype}"
    out, ref = out.double(), ref.double()
    assert torch.isfinite(out).all(), f"{what}: non-finite elements (unwritten output?)"
    err = ((out - ref).norm() / ref.norm().clamp_min(1e-30)).item()
    tol = {torch.float64: 1e-12, torch.float32: 1e-5}.get(dtype, 1e-2)
    assert err < tol, f"{what}: relative error {err:.2e} >= {tol}"


def run_interpreter_checks(test_file: str, timeout: int = 420) -> None:
    """Run `python test_file --interp` with the interpreter on; fail with its output unless it passed."""
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, os.path.abspath(test_file), "--interp"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"interpreter checks failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert "interp: all" in proc.stdout


def compile_sm90(fn, types: dict, constexprs: dict, num_warps: int = 4, num_stages: int = 3):
    """Compile a Triton kernel for sm_90 (the H200) without a GPU: triton ships ptxas. The interpreter never
    takes the tensor-core paths and runs programs one by one, and the code generator checks what it does not (a
    variable of two types in the branches of an if), so this is how the tests see that a kernel compiles.
    types: the non-constexpr arguments' Triton types ("*bf16", "i32", ...)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    sig = {name: types.get(name, "constexpr") for name in fn.arg_names}
    return triton.compile(ASTSource(fn, sig, constexprs), target=GPUTarget("cuda", 90, 32),
                          options={"num_warps": num_warps, "num_stages": num_stages})
