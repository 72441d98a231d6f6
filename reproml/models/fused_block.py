"""A learner block (3x3 convolution, BatchNorm, 2x2 max-pooling, ReLU) as compiled CPU kernels
(`block.c`), forward and backward.

oneDNN runs the backward pass of these small convolutions at about half the machine's
multiply-add rate (a fifth for the first one's weight gradient, with three input channels), and
PyTorch's BatchNorm, pooling and ReLU make about five passes each way over the
full-resolution tensor; the kernels run the convolutions' backward at about their forward
pass's rate and the rest in two passes each way, and for the first block never store d z. The
first convolution's forward pass stays oneDNN's, which is faster with three input channels,
and the images' gradient is never computed. Where the kernels cannot run (`kernels.py`),
PyTorch's operations do the same.
"""

import ctypes
import functools

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from reproml.models import kernels


@functools.cache
def library():
    lib = kernels.load("block")
    if lib is not None:
        long, ptr, real = ctypes.c_long, ctypes.c_void_p, ctypes.c_float
        lib.conv3x3_forward.argtypes = [long] * 5 + [ptr] * 4
        lib.conv3x3_weight_grad.argtypes = [long] * 5 + [ptr] * 4
        lib.bn_pool_forward.argtypes = [long] * 4 + [real, ctypes.c_int] + [ptr] * 9
        lib.bn_pool_backward.argtypes = [long] * 4 + [real] + [ptr] * 12
        lib.block_backward_without_input_grad.argtypes = [long] * 5 + [real] + [ptr] * 14
    return lib


def channels_last(x):
    return x.contiguous(memory_format=torch.channels_last)


def conv_kernel(x, taps, bias):
    """The convolution kernel's forward pass; taps [3][3][in][out], bias a tensor or None."""
    batch, in_ch, height, width = x.shape
    out = x.new_empty(batch, height, width, taps.shape[-1])
    kernels.call(library().conv3x3_forward, batch, height, width, in_ch, taps.shape[-1], x, taps, bias, out)
    return out.permute(0, 3, 1, 2)  # channels-last (batch, out, height, width)


def conv_forward(x, weight, bias):
    """F.conv2d(x, weight, bias, padding=1), channels-last, for channels-last x."""
    if x.shape[1] % 16:  # the first convolution (3 input channels): oneDNN is faster
        return channels_last(F.conv2d(x, weight, bias, padding=1))
    return conv_kernel(x, weight.permute(2, 3, 1, 0).contiguous(), bias.contiguous())


def weight_grad(x, weight, grad_out):
    dweight, dbias = weight.new_empty(weight.shape), weight.new_empty(weight.shape[0])
    batch, in_ch, height, width = x.shape
    kernels.call_allocating(library().conv3x3_weight_grad, batch, height, width, in_ch, weight.shape[0], x,
                            grad_out, dweight, dbias)
    return dweight, dbias


def conv_backward(x, weight, grad_out):
    """The gradients of conv_forward's input, weight and bias; grad_out channels-last."""
    # the input's gradient is the forward pass over grad_out with the kernel flipped in both
    # directions and its input and output channels exchanged
    dx = conv_kernel(grad_out, weight.flip(2, 3).permute(2, 3, 0, 1).contiguous(), None)
    return dx, *weight_grad(x, weight, grad_out)


class ConvBlock(torch.autograd.Function):
    """relu(max_pool2d(batch_norm(conv2d(x, weight, bias, padding=1)), 2)) with the batch's
    statistics; returns them too."""

    @staticmethod
    def forward(ctx, x, weight, bias, gamma, beta, eps):
        x, gamma, beta = channels_last(x), gamma.contiguous(), beta.contiguous()
        z = conv_forward(x, weight, bias)
        batch, ch, height, width = z.shape
        pooled = (batch, height // 2, width // 2, ch)
        out = z.new_empty(pooled).permute(0, 3, 1, 2)  # channels-last (batch, ch, height / 2, width / 2)
        argmax, z_at_max = torch.empty(pooled, dtype=torch.uint8), z.new_empty(pooled)
        mean, var = z.new_empty(ch), z.new_empty(ch)
        kernels.call(library().bn_pool_forward, batch, height, width, ch, eps, 1, z, gamma, beta,
                     z.new_empty(2 * batch * height * ch), mean, var, out, argmax, z_at_max)
        ctx.save_for_backward(x, weight, z, gamma, mean, var, out, argmax, z_at_max)
        ctx.eps = eps
        ctx.mark_non_differentiable(mean, var)
        return out, mean, var

    @staticmethod
    @once_differentiable
    def backward(ctx, dout, _mean, _var):
        x, weight, z, gamma, mean, var, out, argmax, z_at_max = ctx.saved_tensors
        batch, ch, height, width = z.shape
        dout = channels_last(dout)
        dgamma, dbeta = gamma.new_empty(ch), gamma.new_empty(ch)
        row_sums = z.new_empty(batch * (height // 2) * ch * 2)
        if ctx.needs_input_grad[0]:
            dz = torch.empty_like(z)
            kernels.call(library().bn_pool_backward, batch, height, width, ch, ctx.eps, z, gamma, mean, var, dout,
                         out, argmax, z_at_max, row_sums, dz, dgamma, dbeta)
            dx, dweight, dbias = conv_backward(x, weight, dz)
        else:
            dx, dweight, dbias = None, weight.new_empty(weight.shape), weight.new_empty(ch)
            kernels.call_allocating(library().block_backward_without_input_grad, batch, height, width, x.shape[1],
                                    ch, ctx.eps, x, z, gamma, mean, var, dout, out, argmax, z_at_max, row_sums,
                                    dweight, dbias, dgamma, dbeta)
        return dx, dweight, dbias, dgamma, dbeta, None


def evaluation_mode(x, weight, bias, running_mean, running_var, gamma, beta, eps):
    """The forward pass with the running statistics, for evaluation (no gradient)."""
    z = conv_forward(channels_last(x), weight, bias)
    batch, ch, height, width = z.shape
    out = z.new_empty(batch, height // 2, width // 2, ch).permute(0, 3, 1, 2)
    kernels.call(library().bn_pool_forward, batch, height, width, ch, eps, 0, z, gamma.contiguous(),
                 beta.contiguous(), None, running_mean.contiguous(), running_var.contiguous(), out, None, None)
    return out


def block(x, weight, bias, running_mean, running_var, gamma, beta, training, momentum, eps):
    """relu(max_pool2d(batch_norm(conv2d(x, weight, bias, padding=1), ...), 2)); in training mode
    the running statistics are updated in place as F.batch_norm does (the variance unbiased)."""
    batch, in_ch, height, width = x.shape
    ch = weight.shape[0]
    usable = (x.device.type == "cpu" and x.dtype == torch.float32 and ch % 16 == 0 and height >= 2 and width >= 2
              and (in_ch % 16 == 0 or not x.requires_grad) and library() is not None)
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (x, weight, bias, gamma, beta))
    if usable and not training and not needs_grad:
        return evaluation_mode(x, weight, bias, running_mean, running_var, gamma, beta, eps)
    if usable and training:
        out, mean, var = ConvBlock.apply(x, weight, bias, gamma, beta, eps)
        n = batch * height * width
        with torch.no_grad():
            running_mean.mul_(1 - momentum).add_(mean, alpha=momentum)
            running_var.mul_(1 - momentum).add_(var * (n / (n - 1)), alpha=momentum)
        return out
    z = F.batch_norm(F.conv2d(x, weight, bias, padding=1), running_mean, running_var, gamma, beta, training,
                     momentum, eps)
    # max-pool before ReLU: the same values and gradients (ReLU is monotone), a quarter of the ReLU work
    return F.relu(F.max_pool2d(z, 2))
