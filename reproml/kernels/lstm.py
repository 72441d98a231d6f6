"""The meta-learner's first layer as one compiled CPU kernel (`lstm_cell.c`).

Same equations as `MetaLearnerLSTM.layer1` plus the second layer's projection of h; on this
layer PyTorch spends most of a 1-shot meta-training episode in a dozen memory-bound passes
over all 32,901 rows, which the kernel does in one (see `lstm_cell.c`). The layer's state lives in
the kernel's blocked layout (8 rows of every feature together; `initial_state`). Where the kernel
cannot run (`build.py`), the PyTorch path runs instead. Its parameter gradients are summed in a
fixed order, so the numbers do not depend on the number of threads.
"""

import ctypes
import functools

import torch
from torch.autograd.function import once_differentiable

from reproml.kernels import build

LANES, INPUTS, HIDDEN, GATES = 8, 22, 20, 80
PARAM_GRADS = GATES * INPUTS + GATES + HIDDEN * 2


@functools.cache
def library():
    lib = build.load("lstm_cell")
    if lib is not None:
        n, ptr = ctypes.c_long, ctypes.c_void_p
        lib.lstm_forward.argtypes = [n] + [ptr] * 10
        lib.lstm_backward.argtypes = [n] + [ptr] * 13
    return lib


def runs(hidden_size, like):
    """Whether the kernel runs a layer of `hidden_size` on tensors like `like` (float32 on the CPU)."""
    return (hidden_size == HIDDEN and like.dtype == torch.float32 and like.device.type == "cpu" and build.enabled()
            and library() is not None)


def blocks(n):
    return -(-n // LANES)


def initial_state(n, device):
    """Layer 1's (h, cell), zero, in the kernel's blocked layout."""
    return tuple(torch.zeros(blocks(n), HIDDEN, LANES, device=device) for _ in range(2))


class Layer1(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight, bias, proj, features, h, cell):
        weight, bias, proj, features = (t.contiguous() for t in (weight, bias, proj, features))
        n = features.shape[1]
        gates = h.new_empty(blocks(n), GATES, LANES)
        h_out, cell_out, projected = torch.empty_like(h), torch.empty_like(cell), features.new_empty(2, n)
        build.call(library().lstm_forward, n, weight, bias, proj, features, h, cell, gates, h_out, cell_out, projected)
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
        build.call_allocating(library().lstm_backward, n, weight, proj, features, h, cell, gates, cell_out,
                              dh_out, dcell_out, dprojected, dh, dcell, param_grad)
        dweight, dbias, dproj = param_grad.split([GATES * INPUTS, GATES, HIDDEN * 2])
        return dweight.view(GATES, INPUTS), dbias, dproj.view(HIDDEN, 2), None, dh, dcell


def layer1(weight, bias, proj, features, h, cell):
    """(h', cell', proj^T h') for the gate weights over [gradient features, h] (80 x 22), the bias
    with the loss features folded in (80), the projection (20 x 2), the gradient features
    (2 x n) and the blocked state."""
    return Layer1.apply(weight, bias, proj, features, h, cell)
