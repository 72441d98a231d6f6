"""The package's fast path against the straightforward reference (`tests/reference.py`): the
same meta-gradients on the same episode and the same predictions on the same test episodes.

Both run on channels-last images. The memory format alone changes the convolutions' summation
order, and the meta-gradient is sensitive to that: the learner's near-zero gradient
coordinates (the conv biases before BatchNorm, whose true gradient is 0) are preprocessed with a
factor e^10, so their rounding noise moves a 5w1s meta-gradient by about 1e-2 (relative norm)
between the two formats. With the format fixed, the paths agree to about 3e-5.
"""

import pytest
import torch
import torch.nn.functional as F

import reference
from reproml.bench import random_split
from reproml.data.episodes import EpisodeSampler
from reproml.methods.meta_lstm import build, query_logits
from reproml.settings import TaskSettings


def sampler_for(settings, seed=0):
    return EpisodeSampler(random_split(settings, "cpu", seed), settings.n_way, settings.k_shot, settings.n_query, seed)


def channels_last(episode):
    support_x, support_y, query_x, query_y = episode
    return (support_x.contiguous(memory_format=torch.channels_last), support_y,
            query_x.contiguous(memory_format=torch.channels_last), query_y)


def relative_error(got, expected):
    return ((got - expected).norm() / expected.norm()).item()


@pytest.mark.parametrize("n_way, k_shot, image_size", [(5, 1, 84), (3, 5, 32)])
def test_fast_and_reference_paths_give_the_same_meta_gradient(n_way, k_shot, image_size):
    settings = TaskSettings(n_way, k_shot, image_size, n_query=4)
    episode = channels_last(sampler_for(settings).tensors(0, "cpu"))
    learner, meta = build(settings, 0, "cpu")
    gradients = []
    for logits_of in (query_logits, reference.query_logits):
        meta.zero_grad()
        F.cross_entropy(logits_of(meta, learner, settings, episode, meta_training=True), episode[3]).backward()
        gradients.append({name: p.grad.clone() for name, p in meta.named_parameters()})
    fast, slow = gradients
    for name in fast:
        assert slow[name].abs().max() > 0, name  # the comparison means something
        assert relative_error(fast[name], slow[name]) < 2e-4, name


def test_fast_and_reference_paths_give_the_same_test_predictions():
    settings = TaskSettings(5, 1, 32, n_query=6)
    sampler = sampler_for(settings, seed=1)
    learner, meta = build(settings, 0, "cpu")
    with torch.no_grad():  # a meta-learner that has moved away from its initialisation
        for p in meta.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(2)) * 0.01)
    with torch.no_grad():
        for index in range(5):
            episode = channels_last(sampler.tensors(index, "cpu"))
            fast = query_logits(meta, learner, settings, episode, meta_training=False)
            slow = reference.query_logits(meta, learner, settings, episode, meta_training=False)
            torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-4)
            assert torch.equal(fast.argmax(1), slow.argmax(1))
