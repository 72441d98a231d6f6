"""A learner block (3x3 convolution, BatchNorm, 2x2 max-pooling, ReLU) as compiled CPU kernels
(`block.c`), forward and backward.

oneDNN runs the backward pass of these small convolutions at about half the machine's
multiply-add rate (a fifth for the first one's weight gradient, with three input channels), and
PyTorch's BatchNorm, pooling and ReLU make about five passes each way over the
full-resolution tensor; the kernels run the convolutions' backward at about their forward
pass's rate and the rest in two passes each way. The first block (`FirstBlock`: images, which
need no gradient) takes BatchNorm's statistics from the images' patch moments instead of from
z, so z is never stored, and its weight gradient needs only the pixels where the pooling's
maxima are. The moments depend on the images alone: a support batch, seen at every step, has
them computed once (`image_moments`). Where the kernels cannot run (`kernels.py`), PyTorch's
operations do the same.
"""

import ctypes
import functools

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from reproml.models import kernels


# FirstBlock's input channels at most: its moments grow as the square of 9 channels, and
# block.c's sum_patches_at_max holds a patch's kernel row (3 pixels' channels) in two vectors
FIRST_BLOCK_CHANNELS = 4


@functools.cache
def library():
    lib = kernels.load("block")
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
    kernels.call(library().conv3x3_forward, batch, height, width, in_ch, taps.shape[-1], x, taps, bias, out)
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
    kernels.call_allocating(library().conv3x3_weight_grad, batch, height, width, in_ch, weight.shape[0], x,
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
        kernels.call(library().bn_pool_forward, batch, height, width, ch, eps, 1, z, gamma, beta,
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
        kernels.call(library().bn_pool_backward, batch, height, width, ch, ctx.eps, z, gamma, mean, var, dout, out,
                     argmax, z_at_max, z.new_empty(batch * (height // 2) * ch * 2), dz, dgamma, dbeta)
        return *conv_backward(x, weight, dz), dgamma, dbeta, None


def patch_moments(x):
    """The sums over every output position of the 3x3 patches of x (channels-last) and of their
    outer products, in double precision: first_block_forward's batch statistics."""
    batch, in_ch, height, width = x.shape
    k = 9 * in_ch
    sums, gram = x.new_empty(k, dtype=torch.float64), x.new_empty(k, k, dtype=torch.float64)
    kernels.call_allocating(library().patch_moments, batch, height, width, in_ch, x, sums, gram)
    return sums, gram


class FirstBlock(torch.autograd.Function):
    """ConvBlock for images (few channels, no gradient): the batch statistics follow from the
    patches' moments (`patch_moments(x)`, computed here unless given), so z is never stored
    (block.c, first_block_forward)."""

    @staticmethod
    def forward(ctx, x, weight, bias, gamma, beta, eps, moments):
        x, bias, gamma, beta = channels_last(x), bias.contiguous(), gamma.contiguous(), beta.contiguous()
        taps = kernel_layout(weight)
        sums, gram = patch_moments(x) if moments is None else moments
        batch, in_ch, height, width = x.shape
        ch = weight.shape[0]
        out, argmax, z_at_max = pooled_outputs(x, batch, height, width, ch)
        mean, var = x.new_empty(ch), x.new_empty(ch)
        kernels.call(library().first_block_forward, batch, height, width, in_ch, ch, eps, x, taps, bias, gamma, beta,
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
        kernels.call_allocating(library().first_block_backward, batch, height, width, in_ch, ch, ctx.eps, x, taps,
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
        kernels.call(library().first_block_forward, batch, height, width, in_ch, ch, eps, x, kernel_layout(weight),
                     bias, gamma, beta, None, None, running_mean, running_var, out, None, None)
    else:
        kernels.call(library().bn_pool_forward, batch, height, width, ch, eps, 0, conv_forward(x, weight, bias), gamma,
                     beta, None, running_mean, running_var, out, None, None)
    return out


def runs_kernels(x, ch):
    """Whether `block` runs the kernels for input x and ch output channels (else PyTorch's operations)."""
    _, in_ch, height, width = x.shape
    return (x.device.type == "cpu" and x.dtype == torch.float32 and ch % 16 == 0 and height >= 2 and width >= 2
            and (in_ch % 16 == 0 or is_first_block(x)) and library() is not None)


def is_first_block(x):
    return x.shape[1] <= FIRST_BLOCK_CHANNELS and not x.requires_grad


def image_moments(x, ch):
    """For images that the first block sees at several steps (a support batch): `patch_moments`,
    to compute once and pass to every `block` call; None where the kernels do not run."""
    return patch_moments(channels_last(x)) if runs_kernels(x, ch) and is_first_block(x) else None


def block(x, weight, bias, running_mean, running_var, gamma, beta, training, momentum, eps, moments=None):
    """relu(max_pool2d(batch_norm(conv2d(x, weight, bias, padding=1), ...), 2)); in training mode
    the running statistics are updated in place as F.batch_norm does (the variance unbiased).
    `moments`: image_moments(x), if at hand."""
    batch, _, height, width = x.shape
    usable = runs_kernels(x, weight.shape[0])
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (x, weight, bias, gamma, beta))
    if usable and not training and not needs_grad:
        return evaluation_mode(x, weight, bias, running_mean, running_var, gamma, beta, eps)
    if usable and training:
        if is_first_block(x):
            out, mean, var = FirstBlock.apply(x, weight, bias, gamma, beta, eps, moments)
        else:
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
