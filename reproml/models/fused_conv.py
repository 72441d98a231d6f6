"""The learner's 3x3 convolutions as compiled CPU kernels (`conv3x3.c`): the forward pass, the
input's gradient and the weight and bias gradients.

oneDNN runs the backward pass of these small convolutions at about half the machine's
multiply-add rate (a fifth for the first one's weight gradient, with three input channels);
the kernels run it at about the forward pass's rate, closer to the float64 result. The first
convolution's forward pass stays oneDNN's, which is faster there, and its input's gradient
(the images') is never computed. Where the kernels cannot run (`kernels.py`), this is plain
`F.conv2d`.
"""

import ctypes
import functools

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from reproml.models import kernels


@functools.cache
def library():
    lib = kernels.load("conv3x3")
    if lib is not None:
        long, ptr = ctypes.c_long, ctypes.c_void_p
        lib.conv3x3_forward.argtypes = [long] * 5 + [ptr] * 4
        lib.conv3x3_weight_grad.argtypes = [long] * 5 + [ptr] * 4
    return lib


def channels_last(x):
    return x.contiguous(memory_format=torch.channels_last)


def kernel_forward(x, taps, bias):
    """The forward kernel; taps [3][3][in][out] (`taps_of`), bias a tensor or None."""
    batch, in_ch, height, width = x.shape
    out = x.new_empty(batch, height, width, taps.shape[-1])
    kernels.call(library().conv3x3_forward, batch, height, width, in_ch, taps.shape[-1], x, taps, bias, out)
    return out.permute(0, 3, 1, 2)  # channels-last (batch, out, height, width)


def taps_of(weight):
    """PyTorch's (out, in, 3, 3) weight as the forward kernel's [kh][kw][in][out]."""
    return weight.permute(2, 3, 1, 0).contiguous()


def transposed_taps_of(weight):
    """The taps whose forward pass over the output's gradient is the input's gradient:
    the kernel flipped in both directions, in and out exchanged."""
    return weight.flip(2, 3).permute(2, 3, 0, 1).contiguous()


class Conv3x3(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):
        x = channels_last(x)
        ctx.save_for_backward(x, weight)
        if x.shape[1] % 16:  # the first convolution (3 input channels): oneDNN is faster
            return F.conv2d(x, weight, bias, padding=1)
        return kernel_forward(x, taps_of(weight), bias.contiguous())

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        batch, in_ch, height, width = x.shape
        grad_out = channels_last(grad_out)
        dx = kernel_forward(grad_out, transposed_taps_of(weight), None) if ctx.needs_input_grad[0] else None
        dweight, dbias = weight.new_empty(weight.shape), weight.new_empty(weight.shape[0])
        if library().conv3x3_weight_grad(batch, height, width, in_ch, weight.shape[0], x.data_ptr(),
                                         grad_out.data_ptr(), dweight.data_ptr(), dbias.data_ptr()):
            raise MemoryError("conv3x3_weight_grad: out of memory for its partial sums")
        return dx, dweight, dbias


def conv3x3(x, weight, bias):
    """F.conv2d(x, weight, bias, padding=1) for a float32 input on the CPU."""
    in_ch, out_ch = x.shape[1], weight.shape[0]
    if (x.device.type == "cpu" and x.dtype == torch.float32 and out_ch % 16 == 0
            and (in_ch % 16 == 0 or not x.requires_grad) and library() is not None):
        return Conv3x3.apply(x, weight, bias)
    return F.conv2d(x, weight, bias, padding=1)
