"""The meta-learner's first layer as one compiled CPU kernel (`lstm_cell.c`).

Same equations as `MetaLearnerLSTM.layer1` plus the second layer's projection of h; on this
layer PyTorch spends most of a 1-shot meta-training episode in a dozen memory-bound passes
over all 32,901 rows, which the kernel does in one (see `lstm_cell.c`).

The kernel is compiled with the system's C compiler on first use and cached under
`$XDG_CACHE_HOME/reproml` (or `~/.cache/reproml`), keyed by a hash of its source and flags.
It runs on x86-64 CPUs with AVX2 and FMA. Elsewhere, or where it cannot be compiled, or with
REPROML_FUSED_LSTM=0, the PyTorch path runs instead: the same numbers to float rounding.

The kernel shares PyTorch's OpenMP thread pool (see `lstm_cell.c`); its parameter gradients
are summed in a fixed order, so the numbers do not depend on the number of threads.
"""

import ctypes
import functools
import hashlib
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from torch.autograd.function import once_differentiable

SOURCE = Path(__file__).with_name("lstm_cell.c")
FLAGS = ["-O3", "-mavx2", "-mfma", "-fopenmp", "-shared", "-fPIC"]
LANES, INPUTS, HIDDEN, GATES, STRIPE = 8, 22, 20, 80, 128
PARAM_GRADS = GATES * INPUTS + GATES + HIDDEN * 2


def cache_dir():
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "reproml"


def unavailable_reason():
    if os.environ.get("REPROML_FUSED_LSTM", "1") == "0":
        return "REPROML_FUSED_LSTM=0"
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return f"{platform.machine()} is not x86-64"
    if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        return "the CPU has no AVX2"
    return None


def compile_kernel(path):
    """Compile to a temporary name and rename, so that concurrent jobs never load half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".so.tmp")
    os.close(fd)
    try:
        result = subprocess.run([os.environ.get("CC", "cc"), *FLAGS, "-o", tmp, str(SOURCE)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            raise OSError(result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "compiler failed")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@functools.cache
def library():
    """The loaded kernel, or None (with one line on stderr saying why) where it cannot run."""
    reason = unavailable_reason()
    if reason is None:
        key = hashlib.sha256(SOURCE.read_bytes() + " ".join(FLAGS).encode()).hexdigest()[:16]
        path = cache_dir() / f"lstm_cell-{key}.so"
        try:
            if not path.exists():
                compile_kernel(path)
            lib = ctypes.CDLL(str(path))
        except OSError as e:
            reason = f"could not build {path.name}: {e}"
    if reason is not None:
        if reason != "REPROML_FUSED_LSTM=0":
            print(f"reproml: fused meta-learner kernel off ({reason}); using the PyTorch path", file=sys.stderr)
        return None
    n, ptr = ctypes.c_long, ctypes.c_void_p
    lib.lstm_forward.argtypes = [n] + [ptr] * 10
    lib.lstm_backward.argtypes = [n] + [ptr] * 14
    return lib


def available(device):
    return torch.device(device).type == "cpu" and library() is not None


def blocks(n):
    return -(-n // LANES)


def initial_state(n, device):
    """Layer 1's (h, cell), zero, in the kernel's blocked layout."""
    return tuple(torch.zeros(blocks(n), HIDDEN, LANES, device=device) for _ in range(2))


def call(kernel, n, *tensors):
    """The kernel sees raw pointers: `tensors` must be contiguous float32 and stay alive meanwhile."""
    kernel(n, *(t.data_ptr() for t in tensors))


class Layer1(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight, bias, proj, features, h, cell):
        weight, bias, proj, features = (t.contiguous() for t in (weight, bias, proj, features))
        n = features.shape[1]
        gates = h.new_empty(blocks(n), GATES, LANES)
        h_out, cell_out, projected = torch.empty_like(h), torch.empty_like(cell), features.new_empty(2, n)
        call(library().lstm_forward, n, weight, bias, proj, features, h, cell, gates, h_out, cell_out, projected)
        ctx.save_for_backward(weight, proj, features, h, cell, gates, cell_out)
        return h_out, cell_out, projected

    @staticmethod
    @once_differentiable
    def backward(ctx, dh_out, dcell_out, dprojected):
        weight, proj, features, h, cell, gates, cell_out = ctx.saved_tensors
        n = features.shape[1]
        dh_out, dcell_out, dprojected = (t.contiguous() for t in (dh_out, dcell_out, dprojected))
        dh, dcell = torch.empty_like(h), torch.empty_like(cell)
        param_grad = weight.new_empty(PARAM_GRADS)
        stripe_sums = weight.new_empty(-(-blocks(n) // STRIPE), PARAM_GRADS)
        call(library().lstm_backward, n, weight, proj, features, h, cell, gates, cell_out,
             dh_out, dcell_out, dprojected, dh, dcell, param_grad, stripe_sums)
        dweight, dbias, dproj = param_grad.split([GATES * INPUTS, GATES, HIDDEN * 2])
        return dweight.view(GATES, INPUTS), dbias, dproj.view(HIDDEN, 2), None, dh, dcell


def layer1(weight, bias, proj, features, h, cell):
    """(h', cell', proj^T h') for the gate weights over [gradient features, h] (80 x 22), the bias
    with the loss features folded in (80), the projection (20 x 2), the gradient features
    (2 x n) and the blocked state."""
    return Layer1.apply(weight, bias, proj, features, h, cell)
