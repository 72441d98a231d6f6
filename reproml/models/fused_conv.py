"""The learner's first convolution with its weight and bias gradients from a compiled CPU
kernel (`conv1_grad.c`); the forward pass is PyTorch's.

With three input channels, oneDNN computes this weight gradient at about a fifth of the
machine's multiply-add rate, and it was the largest single cost of an inner step at 84x84;
the kernel is 3.5-5x faster and closer to the float64 result. The input's gradient is never
needed (images), so none is computed. Where the kernel cannot run (`kernels.py`), or the input
needs a gradient, this is plain `F.conv2d`.
"""

import ctypes
import functools

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from reproml.models import kernels

STRIPE = 32  # output rows per partial sum, as in conv1_grad.c


@functools.cache
def library():
    lib = kernels.load("conv1_grad")
    if lib is not None:
        lib.conv1_grad.argtypes = [ctypes.c_long] * 4 + [ctypes.c_void_p] * 5
    return lib


class Conv1(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x)
        return F.conv2d(x, weight, bias, padding=1)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        (x,) = ctx.saved_tensors
        batch, _, height, width = x.shape
        out_ch = grad_out.shape[1]
        x, grad_out = (t.contiguous(memory_format=torch.channels_last) for t in (x, grad_out))
        dweight, dbias = x.new_empty(out_ch, 3, 3, 3), x.new_empty(out_ch)
        stripe_sums = x.new_empty(-(-batch * height // STRIPE), 28 * out_ch)
        kernels.call(library().conv1_grad, batch, height, width, out_ch, x, grad_out, dweight, dbias, stripe_sums)
        return None, dweight, dbias


def conv1(x, weight, bias):
    """F.conv2d(x, weight, bias, padding=1) for a 3-channel float32 input on the CPU."""
    if (x.device.type == "cpu" and x.dtype == torch.float32 and x.shape[1] == 3 and weight.shape[0] % 8 == 0
            and not x.requires_grad and library() is not None):
        return Conv1.apply(x, weight, bias)
    return F.conv2d(x, weight, bias, padding=1)
