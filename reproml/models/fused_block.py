"""A learner block's BatchNorm (batch statistics), 2x2 max-pooling and ReLU as one compiled CPU
kernel (`bn_pool.c`): two passes over the convolution's output each way instead of about five.
Where it cannot run (`kernels.py`), PyTorch's three operations do the same.
"""

import ctypes
import functools

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from reproml.models import kernels


@functools.cache
def library():
    lib = kernels.load("bn_pool")
    if lib is not None:
        long, ptr = ctypes.c_long, ctypes.c_void_p
        lib.bn_pool_forward.argtypes = [long] * 4 + [ctypes.c_float, ctypes.c_int] + [ptr] * 9
        lib.bn_pool_backward.argtypes = [long] * 4 + [ctypes.c_float] + [ptr] * 12
    return lib


class BatchNormPoolReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, gamma, beta, eps):
        batch, ch, height, width = z.shape
        z, gamma, beta = z.contiguous(memory_format=torch.channels_last), gamma.contiguous(), beta.contiguous()
        pooled = (batch, height // 2, width // 2, ch)
        out = z.new_empty(pooled).permute(0, 3, 1, 2)  # channels-last (batch, ch, height / 2, width / 2)
        argmax, z_at_max = torch.empty(pooled, dtype=torch.uint8), z.new_empty(pooled)
        mean, var = z.new_empty(ch), z.new_empty(ch)
        kernels.call(library().bn_pool_forward, batch, height, width, ch, eps, 1, z, gamma, beta,
                     z.new_empty(2 * batch * height * ch), mean, var, out, argmax, z_at_max)
        ctx.save_for_backward(z, gamma, mean, var, out, argmax, z_at_max)
        ctx.eps = eps
        ctx.mark_non_differentiable(mean, var)
        return out, mean, var

    @staticmethod
    @once_differentiable
    def backward(ctx, dout, _mean, _var):
        z, gamma, mean, var, out, argmax, z_at_max = ctx.saved_tensors
        batch, ch, height, width = z.shape
        dout = dout.contiguous(memory_format=torch.channels_last)
        dz, dgamma, dbeta = torch.empty_like(z), gamma.new_empty(ch), gamma.new_empty(ch)
        kernels.call(library().bn_pool_backward, batch, height, width, ch, ctx.eps, z, gamma, mean, var, dout, out,
                     argmax, z_at_max, z.new_empty(batch * (height // 2) * ch * 2), dz, dgamma, dbeta)
        return dz, dgamma, dbeta, None


def evaluation_mode(z, running_mean, running_var, gamma, beta, eps):
    """The forward pass with the running statistics, for evaluation (no gradient)."""
    batch, ch, height, width = z.shape
    z = z.contiguous(memory_format=torch.channels_last)
    out = z.new_empty(batch, height // 2, width // 2, ch).permute(0, 3, 1, 2)
    kernels.call(library().bn_pool_forward, batch, height, width, ch, eps, 0, z, gamma.contiguous(),
                 beta.contiguous(), None, running_mean.clone(), running_var.clone(), out, None, None)
    return out


def bn_pool_relu(z, running_mean, running_var, gamma, beta, training, momentum, eps):
    """relu(max_pool2d(batch_norm(z, ...), 2)); in training mode the running statistics are
    updated in place as F.batch_norm does (the variance unbiased)."""
    batch, ch, height, width = z.shape
    usable = (z.device.type == "cpu" and z.dtype == torch.float32 and ch % 8 == 0 and height >= 2 and width >= 2
              and library() is not None)
    if usable and not training and not (torch.is_grad_enabled() and any(
            t.requires_grad for t in (z, gamma, beta))):
        return evaluation_mode(z, running_mean, running_var, gamma, beta, eps)
    if usable and training:
        out, mean, var = BatchNormPoolReLU.apply(z, gamma, beta, eps)
        n = batch * height * width
        with torch.no_grad():
            running_mean.mul_(1 - momentum).add_(mean, alpha=momentum)
            running_var.mul_(1 - momentum).add_(var * (n / (n - 1)), alpha=momentum)
        return out
    z = F.batch_norm(z, running_mean, running_var, gamma, beta, training, momentum, eps)
    # max-pool before ReLU: the same values and gradients (ReLU is monotone), a quarter of the ReLU work
    return F.relu(F.max_pool2d(z, 2))
