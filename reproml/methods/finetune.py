"""Baseline-finetune (the paper's Table 1): the pre-trained network with a fresh N-way head,
every parameter fine-tuned by plain SGD on the whole support set (one full batch per update,
BN in training mode) for 15 updates with step size lr / (1 + t * decay), t = 0..14; the
queries are then classified in eval mode with the BN statistics the support steps left.

(lr, decay) is chosen on meta-validation episodes from the original code's grid.
"""

import math

import torch
import torch.nn.functional as F

from reproml.kernels import block as kernel_block
from reproml.models.learner import Learner, LearnerSpec
from reproml.models.pretrained import BN_MOMENTUM

UPDATES = 15
GRID_LRS = (0.5, 0.1, 0.01, 1e-3, 1e-4, 1e-5)
GRID_DECAYS = (1, 0.1, 0.01, 1e-3, 1e-4, 1e-5, 0)
GRID_EPISODES = 100  # validation episodes per grid point


def step_sizes(lr, decay, updates=UPDATES):
    return [lr / (1 + t * decay) for t in range(updates)]


def finetune(learner, params, bn_stats, support_x, support_y, sizes):
    """Plain full-batch SGD on every parameter, one update per step size, BN in training mode
    (updating `bn_stats` in place). Returns the fine-tuned parameters."""
    support_x = kernel_block.layout(support_x)  # once, not at every update
    for size in sizes:
        params = params.detach().requires_grad_()
        with torch.enable_grad():
            loss = F.cross_entropy(learner(params, support_x, bn_stats, True, BN_MOMENTUM), support_y)
            (grad,) = torch.autograd.grad(loss, params)
        params = params.detach() - size * grad
    return params


def finetune_classifier(pretrained, n_way, lr, decay, seed, updates=UPDATES):
    """A classifier of N-way episodes by fine-tuning `pretrained` on each support set.

    The fresh head of episode j is the j-th draw of a generator seeded with `seed`
    (Torch7's U(-1/sqrt(fan_in), 1/sqrt(fan_in))), so episodes evaluated in order 0, 1, ...
    get the same heads whatever (lr, decay) is tried."""
    spec = pretrained.learner.spec
    learner = Learner(LearnerSpec(n_way, spec.image_size, spec.filters))
    body = pretrained.body().detach()
    head_size = n_way * (spec.feature_size + 1)
    bound = 1 / math.sqrt(spec.feature_size)
    generator = torch.Generator().manual_seed(seed)
    sizes = step_sizes(lr, decay, updates)

    def classify(episode):
        support_x, support_y, query_x, _ = episode
        head = (torch.rand(head_size, generator=generator) * 2 - 1) * bound
        bn_stats = [(mean.clone(), var.clone()) for mean, var in pretrained.bn_stats]
        params = finetune(learner, torch.cat([body, head.to(body.device)]), bn_stats, support_x, support_y, sizes)
        return learner(params, query_x, bn_stats, False, BN_MOMENTUM).argmax(1)
    return classify
