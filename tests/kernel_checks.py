"""What the kernel tests (test_kernels, test_moe_kernel, test_decode_attention) share: the comparison of a
kernel's output with its reference, and the subprocess that runs a test file's interpreter checks.

TRITON_INTERPRET=1 must be set before triton is first imported in a process, and other test modules import
kernels earlier in the same pytest run, so each file's Triton-on-CPU checks run in a subprocess: the file
run as a script with --interp, which prints "interp: all ..." when every check passed. conftest.py starts these
subprocesses as soon as the tests are collected, so that they run beside the rest of the suite (the lookup's took
about 5 of CI's 14.5 minutes when run in turn), and moves the tests that wait for their results to the end."""

import os
import subprocess
import sys
import tempfile

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


_STARTED = {}  # test file (its real path) -> (its --interp subprocess, the file that holds its output)


def start_interpreter_checks(test_file: str) -> None:
    """Start `python test_file --interp` with the interpreter on, in the background (once per file). One thread
    for torch in it: it shares the machine's cores with the rest of the suite."""
    path = os.path.realpath(test_file)
    if path in _STARTED:
        return
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    out = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen([sys.executable, path, "--interp"], env=env, cwd=ROOT, stdout=out,
                            stderr=subprocess.STDOUT, text=True)
    _STARTED[path] = (proc, out)


def stop_interpreter_checks() -> None:
    """Kill the subprocesses no test waited for (a run stopped early, by -x or an interrupt)."""
    for proc, out in _STARTED.values():
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        out.close()
    _STARTED.clear()


def run_interpreter_checks(test_file: str, timeout: int = 1200) -> None:
    """The result of `python test_file --interp` (started now unless conftest.py started it at collection): fail
    with its output unless it passed. timeout: seconds to wait for it from now."""
    start_interpreter_checks(test_file)
    proc, out = _STARTED.pop(os.path.realpath(test_file))
    late = ""
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        late = f", killed after waiting {timeout} s"
    out.seek(0)
    text = out.read()
    out.close()
    assert proc.returncode == 0, f"interpreter checks failed (exit {proc.returncode}{late}):\n{text[-6000:]}"
    assert "interp: all" in text, f"interpreter checks did not finish:\n{text[-6000:]}"


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
