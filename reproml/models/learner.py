"""The learner: the small CNN that the meta-learner trains, used functionally.

All its parameters live in one flat vector (the meta-learner's cell state). `forward` takes
that vector explicitly, so the same code runs the inner loop (a detached copy per step),
the query pass (the differentiable final cell state) and evaluation, with no module copies.

Architecture (`model/lstm-classifier.lua`): 4 x [conv 3x3 (pad 1) -> BatchNorm (eps 1e-3)
-> ReLU -> max-pool 2x2], flatten, Linear(features, N). Each block is `plain_block` below, or
the same computation as compiled CPU kernels (`reproml/kernels/block.py`) where they run.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from reproml.kernels import block as kernel_block


@dataclass(frozen=True)
class LearnerSpec:
    n_way: int
    image_size: int
    filters: int = 32
    in_channels: int = 3
    blocks: int = 4
    bn_eps: float = 1e-3

    @property
    def feature_size(self):
        side = self.image_size
        for _ in range(self.blocks):
            side //= 2
        return self.filters * side * side

    def shapes(self):
        """(layer, name, shape) of every parameter, in the flat vector's order."""
        shapes = []
        channels = self.in_channels
        for b in range(1, self.blocks + 1):
            shapes += [(f"conv{b}", "weight", (self.filters, channels, 3, 3)), (f"conv{b}", "bias", (self.filters,)),
                       (f"bn{b}", "weight", (self.filters,)), (f"bn{b}", "bias", (self.filters,))]
            channels = self.filters
        if self.n_way:  # n_way = 0: the blocks alone, an embedding (Matching Networks')
            shapes += [("head", "weight", (self.n_way, self.feature_size)), ("head", "bias", (self.n_way,))]
        return shapes


class Learner:
    def __init__(self, spec):
        if spec.feature_size == 0:
            raise ValueError(f"image size {spec.image_size} is too small for {spec.blocks} pooling blocks")
        self.spec = spec
        self.shapes = spec.shapes()
        self.sizes = [math.prod(shape) for _, _, shape in self.shapes]
        self.n_params = sum(self.sizes)

    def layer_sizes(self):
        """Parameter count per layer (conv1, bn1, ..., head)."""
        sizes = {}
        for (layer, _, _), size in zip(self.shapes, self.sizes):
            sizes[layer] = sizes.get(layer, 0) + size
        return sizes

    def layer_of_each_param(self):
        """For each coordinate of the flat vector, the index of its layer in `layer_sizes()`."""
        layers = list(self.layer_sizes())
        return torch.repeat_interleave(torch.tensor([layers.index(layer) for layer, _, _ in self.shapes]),
                                       torch.tensor(self.sizes))

    def init_flat(self, generator, bn_scale_init_one=False):
        """Torch7's default initialisation, which the original code used: conv and linear
        weights and biases ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)); BN scale ~ U(0, 1), shift 0."""
        pieces = []
        for (layer, name, shape), size in zip(self.shapes, self.sizes):
            if layer.startswith("bn"):
                if name == "bias" or bn_scale_init_one:
                    piece = torch.full((size,), 0.0 if name == "bias" else 1.0)
                else:
                    piece = torch.rand(size, generator=generator)
            else:
                weight_shape = next(s for l, n, s in self.shapes if l == layer and n == "weight")
                bound = 1 / math.sqrt(math.prod(weight_shape[1:]))
                piece = torch.rand(size, generator=generator) * (2 * bound) - bound
            pieces.append(piece)
        return torch.cat(pieces)

    def unflatten(self, flat):
        return [piece.view(shape) for piece, (_, _, shape) in zip(torch.split(flat, self.sizes), self.shapes)]

    def new_bn_stats(self, device, dtype=torch.float32):
        """Fresh running statistics (mean 0, variance 1), one pair per BN layer: reset every episode."""
        f = self.spec.filters
        return [(torch.zeros(f, device=device, dtype=dtype), torch.ones(f, device=device, dtype=dtype))
                for _ in range(self.spec.blocks)]

    def features(self, flat, x, bn_stats, training, momentum, dropout=None):
        """The flattened output of the last block. In training mode BN normalises with the
        batch's statistics and updates `bn_stats` in place; otherwise it uses `bn_stats`.
        `dropout`, if given, is applied to every block's output (Matching Networks' embedding)."""
        params = self.unflatten(flat)
        x = kernel_block.layout(x)
        for b, (mean, var) in enumerate(bn_stats):
            conv_w, conv_b, bn_w, bn_b = params[4 * b: 4 * b + 4]
            if kernel_block.runs(x, conv_w, conv_b, bn_w, bn_b, training):  # compiled kernels, the same computation
                x = kernel_block.block(x, conv_w, conv_b, mean, var, bn_w, bn_b, training, momentum, self.spec.bn_eps)
            else:
                x = plain_block(x, conv_w, conv_b, mean, var, bn_w, bn_b, training, momentum, self.spec.bn_eps)
            if dropout is not None:
                x = dropout(x)
        return x.flatten(1)

    def forward(self, flat, x, bn_stats, training, momentum):
        head_w, head_b = self.unflatten(flat)[-2:]
        return F.linear(self.features(flat, x, bn_stats, training, momentum), head_w, head_b)

    __call__ = forward


def plain_block(x, weight, bias, running_mean, running_var, gamma, beta, training, momentum, eps):
    """relu(max_pool2d(batch_norm(conv2d(x, weight, bias, padding=1)), 2)), updating the running
    statistics in training mode. Max-pooling comes before ReLU: the same values and gradients (ReLU is
    monotone), a quarter of the ReLU work."""
    z = F.batch_norm(F.conv2d(x, weight, bias, padding=1), running_mean, running_var, gamma, beta, training,
                     momentum, eps)
    return F.relu(F.max_pool2d(z, 2))
