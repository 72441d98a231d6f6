"""A learner block (3x3 convolution, BatchNorm, 2x2 max-pooling, ReLU) as compiled CPU kernels
(`block.c`), forward and backward: the same computation as `learner.plain_block`.

oneDNN runs the backward pass of these small convolutions at about half the machine's
multiply-add rate (a fifth for the first one's weight gradient, with three input channels), and
PyTorch's BatchNorm, pooling and ReLU make about five passes each way over the
full-resolution tensor; the kernels run the convolutions' backward at about their forward
pass's rate and the rest in two passes each way. The first block (`FirstBlock`: images, which
need no gradient) takes BatchNorm's statistics from the images' patch moments instead of from
z, so z is never stored, and its weight gradient needs only the pixels where the pooling's
maxima are. The moments depend on the images alone: a support batch, seen at every inner step,
has them computed once (`MOMENTS`).
"""

import ctypes
import functools

import torch
from torch.autograd.function import once_differentiable

from reproml.kernels import build


# FirstBlock's input channels at most: its moments grow as the square of 9 channels, and
# block.c's sum_patches_at_max holds a patch's kernel row (3 pixels' channels) in two vectors
FIRST_BLOCK_CHANNELS = 4


@functools.cache
def library():
    lib = build.load("block")
    if lib is not None:
        long, ptr, real = ctypes.c_long, ctypes.c_void_p, ctypes.c_float
        lib.conv3x3_forward.argtypes = [long] * 5 + [ptr] * 4
        lib.conv3x3_weight_grad.argtypes = [long] * 5 + [ptr] * 4
        lib.bn_pool_forward.argtypes = [long] * 4 + [real, ctypes.c_int] + [ptr] * 9
        lib.bn_pool_backward.argtypes = [long] * 4 + [real] + [ptr] * 12
        lib.patch_moments.argtypes = [long] * 4 + [ptr] * 3
        lib.first_block_forward.argtypes = [long] * 5 + [real] + [ptr] * 12
        lib.first_block_backward.argtypes = [long] * 5 + [real] + [ptr] * 16
    return lib


def channels_last(x):
    return x.contiguous(memory_format=torch.channels_last)


def conv_kernel(x, taps, bias):
    """The convolution kernel's forward pass; taps [3][3][in][out], bias a tensor or None."""
    batch, in_ch, height, width = x.shape
    out = x.new_empty(batch, height, width, taps.shape[-1])
    build.call(library().conv3x3_forward, batch, height, width, in_ch, taps.shape[-1], x, taps, bias, out)
    return out.permute(0, 3, 1, 2)  # channels-last (batch, out, height, width)


def kernel_layout(weight):
    """A convolution's weight [out][in][3][3] in the kernels' layout, [3][3][in][out]."""
    return weight.permute(2, 3, 1, 0).contiguous()


def conv_forward(x, weight, bias):
    """F.conv2d(x, weight, bias, padding=1), channels-last, for channels-last x."""
    return conv_kernel(x, kernel_layout(weight), bias.contiguous())


def weight_grad(x, weight, grad_out):
    dweight, dbias = weight.new_empty(weight.shape), weight.new_empty(weight.shape[0])
    batch, in_ch, height, width = x.shape
    build.call_allocating(library().conv3x3_weight_grad, batch, height, width, in_ch, weight.shape[0], x,
                          grad_out, dweight, dbias)
    return dweight, dbias


def conv_backward(x, weight, grad_out):
    """The gradients of conv_forward's input, weight and bias; grad_out channels-last."""
    # the input's gradient is the forward pass over grad_out with the kernel flipped in both
    # directions and its input and output channels exchanged
    dx = conv_kernel(grad_out, weight.flip(2, 3).permute(2, 3, 0, 1).contiguous(), None)
    return dx, *weight_grad(x, weight, grad_out)


def pooled_outputs(like, batch, height, width, ch):
    """The forward pass's outputs: out (channels-last), and for the backward pass the window
    position of each maximum and the z there."""
    pooled = (batch, height // 2, width // 2, ch)
    out = like.new_empty(pooled).permute(0, 3, 1, 2)
    return out, torch.empty(pooled, dtype=torch.uint8), like.new_empty(pooled)


def forward_results(ctx, eps, out, mean, var, *for_backward):
    """A block Function's forward results (the statistics without gradient), having kept what
    its backward pass needs."""
    ctx.save_for_backward(*for_backward)
    ctx.eps = eps
    ctx.mark_non_differentiable(mean, var)
    return out, mean, var


class ConvBlock(torch.autograd.Function):
    """relu(max_pool2d(batch_norm(conv2d(x, weight, bias, padding=1)), 2)) with the batch's
    statistics; returns them too."""

    @staticmethod
    def forward(ctx, x, weight, bias, gamma, beta, eps):
        x, gamma, beta = channels_last(x), gamma.contiguous(), beta.contiguous()
        z = conv_forward(x, weight, bias)
        batch, ch, height, width = z.shape
        out, argmax, z_at_max = pooled_outputs(z, batch, height, width, ch)
        mean, var = z.new_empty(ch), z.new_empty(ch)
        build.call(library().bn_pool_forward, batch, height, width, ch, eps, 1, z, gamma, beta,
                   z.new_empty(2 * batch * height * ch), mean, var, out, argmax, z_at_max)
        return forward_results(ctx, eps, out, mean, var, x, weight, z, gamma, mean, var, out, argmax, z_at_max)

    @staticmethod
    @once_differentiable
    def backward(ctx, dout, _mean, _var):
        x, weight, z, gamma, mean, var, out, argmax, z_at_max = ctx.saved_tensors
        batch, ch, height, width = z.shape
        dout = channels_last(dout)
        dgamma, dbeta = gamma.new_empty(ch), gamma.new_empty(ch)
        dz = torch.empty_like(z)
        build.call(library().bn_pool_backward, batch, height, width, ch, ctx.eps, z, gamma, mean, var, dout, out,
                   argmax, z_at_max, z.new_empty(batch * (height // 2) * ch * 2), dz, dgamma, dbeta)
        return *conv_backward(x, weight, dz), dgamma, dbeta, None


def patch_moments(x):
    """The sums over every output position of the 3x3 patches of x (channels-last) and of their
    outer products, in double precision: first_block_forward's batch statistics."""
    batch, in_ch, height, width = x.shape
    k = 9 * in_ch
    sums, gram = x.new_empty(k, dtype=torch.float64), x.new_empty(k, k, dtype=torch.float64)
    build.call_allocating(library().patch_moments, batch, height, width, in_ch, x, sums, gram)
    return sums, gram


class FirstBlock(torch.autograd.Function):
    """ConvBlock for images (few channels, no gradient): the batch statistics follow from the
    patches' moments (`patch_moments(x)`), so z is never stored (block.c, first_block_forward)."""

    @staticmethod
    def forward(ctx, x, weight, bias, gamma, beta, eps, moments):
        x, bias, gamma, beta = channels_last(x), bias.contiguous(), gamma.contiguous(), beta.contiguous()
        taps = kernel_layout(weight)
        sums, gram = moments
        batch, in_ch, height, width = x.shape
        ch = weight.shape[0]
        out, argmax, z_at_max = pooled_outputs(x, batch, height, width, ch)
        mean, var = x.new_empty(ch), x.new_empty(ch)
        build.call(library().first_block_forward, batch, height, width, in_ch, ch, eps, x, taps, bias, gamma, beta,
                   sums, gram, mean, var, out, argmax, z_at_max)
        return forward_results(ctx, eps, out, mean, var, x, taps, sums, gram, gamma, mean, var, out, argmax, z_at_max)

    @staticmethod
    @once_differentiable
    def backward(ctx, dout, _mean, _var):
        x, taps, sums, gram, gamma, mean, var, out, argmax, z_at_max = ctx.saved_tensors
        batch, in_ch, height, width = x.shape
        ch = taps.shape[-1]
        dweight, dbias = x.new_empty(ch, in_ch, 3, 3), x.new_empty(ch)
        dgamma, dbeta = x.new_empty(ch), x.new_empty(ch)
        build.call_allocating(library().first_block_backward, batch, height, width, in_ch, ch, ctx.eps, x, taps,
                              sums, gram, gamma, mean, var, channels_last(dout), out, argmax, z_at_max,
                              x.new_empty(batch * (height // 2) * ch * 2), dweight, dbias, dgamma, dbeta)
        return None, dweight, dbias, dgamma, dbeta, None, None


def evaluation_mode(x, weight, bias, running_mean, running_var, gamma, beta, eps):
    """The forward pass with the running statistics, for evaluation (no gradient)."""
    x, bias, gamma, beta = channels_last(x), bias.contiguous(), gamma.contiguous(), beta.contiguous()
    running_mean, running_var = running_mean.contiguous(), running_var.contiguous()
    batch, in_ch, height, width = x.shape
    ch = weight.shape[0]
    out = x.new_empty(batch, height // 2, width // 2, ch).permute(0, 3, 1, 2)
    if is_first_block(x):
        build.call(library().first_block_forward, batch, height, width, in_ch, ch, eps, x, kernel_layout(weight),
                   bias, gamma, beta, None, None, running_mean, running_var, out, None, None)
    else:
        build.call(library().bn_pool_forward, batch, height, width, ch, eps, 0, conv_forward(x, weight, bias), gamma,
                   beta, None, running_mean, running_var, out, None, None)
    return out


def uses_kernels(x):
    """Whether the kernels run on tensors like `x` (float32 on the CPU, where they load)."""
    return x.device.type == "cpu" and x.dtype == torch.float32 and build.enabled() and library() is not None


def layout(x):
    """`x` in the memory layout its blocks will run in: channels-last for the kernels; else PyTorch's
    default, in which oneDNN's float32 convolutions land nearer float64 (docs/performance.md,
    "Memory layout of the plain path")."""
    if uses_kernels(x):
        return x.contiguous(memory_format=torch.channels_last)
    return x.contiguous()


def is_first_block(x):
    return x.shape[1] <= FIRST_BLOCK_CHANNELS and not x.requires_grad


class MomentsCache:
    """The patch moments of the last few image batches the first block saw. An inner loop shows the
    same support batch at every step, so each batch's moments are computed once. An entry holds its
    images (their memory cannot then be reused by another tensor) and their version counter (which
    any in-place change bumps), so a stale entry can never be mistaken for the images at hand."""

    def __init__(self, size=16):
        self.size, self.entries = size, {}

    def __call__(self, x):
        entry = self.entries.get(id(x))
        if entry is not None and entry[0] is x and entry[1] == x._version:
            return entry[2]
        moments = patch_moments(x)
        if len(self.entries) >= self.size:
            del self.entries[next(iter(self.entries))]  # the oldest
        self.entries[id(x)] = (x, x._version, moments)
        return moments


MOMENTS = MomentsCache()


def runs(x, weight, bias, gamma, beta, training):
    """Whether `block` runs for these inputs (else the plain PyTorch block does): float32 on the CPU,
    channel counts the kernels tile, and, outside training, no gradient wanted."""
    _, in_ch, height, width = x.shape
    shapes_fit = (weight.shape[0] % 16 == 0 and height >= 2 and width >= 2
                  and (in_ch % 16 == 0 or is_first_block(x)))
    if not shapes_fit or not uses_kernels(x):
        return False
    return training or not (torch.is_grad_enabled() and any(t.requires_grad for t in (x, weight, bias, gamma, beta)))


def block(x, weight, bias, running_mean, running_var, gamma, beta, training, momentum, eps):
    """relu(max_pool2d(batch_norm(conv2d(x, weight, bias, padding=1), ...), 2)) for inputs that
    `runs` accepts; in training mode the running statistics are updated in place as F.batch_norm
    does (the variance unbiased)."""
    if not training:
        return evaluation_mode(x, weight, bias, running_mean, running_var, gamma, beta, eps)
    if is_first_block(x):
        out, mean, var = FirstBlock.apply(x, weight, bias, gamma, beta, eps, MOMENTS(channels_last(x)))
    else:
        out, mean, var = ConvBlock.apply(x, weight, bias, gamma, beta, eps)
    batch, _, height, width = x.shape
    n = batch * height * width
    with torch.no_grad():
        running_mean.mul_(1 - momentum).add_(mean, alpha=momentum)
        running_var.mul_(1 - momentum).add_(var * (n / (n - 1)), alpha=momentum)
    return out
