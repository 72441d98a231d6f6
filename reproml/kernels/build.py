"""The compiled CPU kernels (`lstm_cell.c`, `block.c` beside this file): build on first use,
load, or say why not.

Each is compiled with the system's C compiler (`cc`, or `$CC`) in well under a second and
cached under `$XDG_CACHE_HOME/reproml` (or `~/.cache/reproml`), keyed by a hash of its source
and flags. They run on x86-64 CPUs with AVX2 and FMA. Elsewhere, where they cannot be built,
or with REPROML_KERNELS=0, PyTorch's own operations run instead: the same equations, the same
numbers to float rounding.

Built with -fopenmp after PyTorch is loaded, a kernel binds to PyTorch's own libgomp (the same
soname), so it uses PyTorch's thread pool and thread count instead of competing with it.
"""

import contextlib
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

KERNELS = ("lstm_cell", "block")
FLAGS = ["-O3", "-mavx2", "-mfma", "-fopenmp", "-shared", "-fPIC"]


def cache_dir():
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "reproml"


def unavailable_reason():
    if os.environ.get("REPROML_KERNELS", "1") == "0":
        return "REPROML_KERNELS=0"
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return f"{platform.machine()} is not x86-64"
    if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        return "the CPU has no AVX2"
    return None


def compile_kernel(source, path):
    """Compile to a temporary name and rename, so that concurrent jobs never load half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".so.tmp")
    os.close(fd)
    try:
        result = subprocess.run([os.environ.get("CC", "cc"), *FLAGS, "-o", tmp, str(source)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            raise OSError(result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "compiler failed")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@functools.cache
def load(name):
    """The kernel `<name>.c` beside this file, loaded; or None, with one line on stderr saying why."""
    reason = unavailable_reason()
    if reason is None:
        source = Path(__file__).with_name(f"{name}.c")
        key = hashlib.sha256(source.read_bytes() + " ".join(FLAGS).encode()).hexdigest()[:16]
        path = cache_dir() / f"{name}-{key}.so"
        try:
            if not path.exists():
                compile_kernel(source, path)
            return ctypes.CDLL(str(path))
        except OSError as e:
            reason = f"could not build {path.name}: {e}"
    if reason != "REPROML_KERNELS=0":
        print(f"reproml: compiled kernel {name} off ({reason}); using PyTorch's operations", file=sys.stderr)
    return None


SWITCHED_OFF = []  # one entry per `switched_off()` in force


@contextlib.contextmanager
def switched_off():
    """PyTorch's operations in place of the kernels while inside (`reproml selfcheck` runs both)."""
    SWITCHED_OFF.append(True)
    try:
        yield
    finally:
        SWITCHED_OFF.pop()


def enabled():
    return not SWITCHED_OFF


def describe(device):
    """For the run's records: which kernels run on `device`. Results with and without them agree
    to float rounding, not bit for bit."""
    on_cpu = torch.device(device).type == "cpu"
    return ", ".join(name for name in KERNELS if on_cpu and load(name) is not None) or "none"


def call(kernel, *args):
    """Tensors are passed as raw pointers: they must be contiguous, of the kernel's element type,
    and stay alive meanwhile. Returns what the kernel returns."""
    return kernel(*(a.data_ptr() if isinstance(a, torch.Tensor) else a for a in args))


def call_allocating(kernel, *args):
    """`call` for a kernel that allocates its own partial sums and returns nonzero when it cannot."""
    if call(kernel, *args):
        raise MemoryError(f"{kernel.__name__}: no memory for its partial sums")
