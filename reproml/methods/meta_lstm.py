"""The meta-learner LSTM as a few-shot method: build it, adapt a learner to an episode's
support set, and classify the episode's queries.

The inner loop follows the original code: T updates, batches taken in order from the
(already shuffled) support set; each update computes the learner's loss and gradient at a
*detached* copy of the current parameters (second derivatives ignored), and the meta-learner
maps (loss, gradient, parameters) to the next parameters. The chain c_0 -> c_T through the
LSTM stays differentiable, so the query loss trains the meta-learner, cI included.
"""

import torch
import torch.nn.functional as F

from reproml.atomic import load_checked
from reproml.kernels import block as kernel_block
from reproml.models.learner import Learner, LearnerSpec
from reproml.models.meta_learner import MetaLearnerLSTM
from reproml.settings import TaskSettings

CHECKPOINT_FORMAT = "reproml-meta-lstm/1"


def build(settings, seed, device):
    """A learner and a freshly initialised meta-learner, deterministic in `seed`."""
    learner = Learner(LearnerSpec(settings.n_way, settings.image_size, settings.filters))
    generator = torch.Generator().manual_seed(seed)
    meta = MetaLearnerLSTM(learner.n_params)
    learner_init = learner.init_flat(generator, bn_scale_init_one=settings.has("bn_scale_init_one"))
    meta.reset_parameters(learner_init, generator)
    return learner, meta.to(device)


def adapt(meta, learner, settings, support_x, support_y, gates=None):
    """Train a learner on the support set with the meta-learner's updates.

    Returns the final parameters c_T and the episode's BN running statistics. If `gates` is a
    list, the (forget, input) gate values of every update are appended to it."""
    bn_stats = learner.new_bn_stats(support_x.device, support_x.dtype)
    support_x = kernel_block.layout(support_x)  # once, not at every update
    c, state = meta.cI, meta.initial_state()
    divide_by_batch = not settings.has("no_grad_batch_division")
    batches = [(support_x[start:start + settings.batch_size], support_y[start:start + settings.batch_size])
               for start in range(0, len(support_x), settings.batch_size)]
    for _ in range(settings.epochs):
        for x, y in batches:
            theta = c.detach().requires_grad_()
            with torch.enable_grad():
                loss = F.cross_entropy(learner(theta, x, bn_stats, True, settings.bn_momentum), y)
                (grad,) = torch.autograd.grad(loss, theta)
            if divide_by_batch:
                grad = grad / len(x)
            c, state, gate_values = meta.step(loss.detach(), grad, c, state)
            if gates is not None:
                gates.append(tuple(g.detach() for g in gate_values))
    return c, bn_stats


def query_logits(meta, learner, settings, episode, meta_training, gates=None):
    """Adapt on the support set and return the query logits (`gates` as for `adapt`).

    BN protocol: during meta-training the queries are normalised with their own batch
    statistics; at meta-validation and meta-test with the episode's running statistics,
    so that no query's statistics reach another query's prediction."""
    support_x, support_y, query_x, _ = episode
    c, bn_stats = adapt(meta, learner, settings, support_x, support_y, gates)
    batch_stats = meta_training or settings.has("query_batch_stats_at_test")
    return learner(c, query_x, bn_stats, batch_stats, settings.bn_momentum)


def checkpoint(meta, settings, **info):
    return {"format": CHECKPOINT_FORMAT, "settings": settings.to_dict(),
            "meta_learner": {k: v.detach().cpu().clone() for k, v in meta.state_dict().items()}, **info}


def load_checkpoint(path, device):
    """A trained meta-learner and its settings."""
    ckpt = load_checked(path, CHECKPOINT_FORMAT, "meta-learner checkpoint")
    settings = TaskSettings.from_dict(ckpt["settings"])
    learner = Learner(LearnerSpec(settings.n_way, settings.image_size, settings.filters))
    meta = MetaLearnerLSTM(learner.n_params)
    meta.load_state_dict(ckpt["meta_learner"])
    return learner, meta.to(device), settings, ckpt
