"""Episode sampling invariants and determinism."""

import numpy as np
import pytest
import torch

from reproml.data.episodes import EpisodeSampler
from reproml.data.prepared import Split
from reproml.errors import UserError


def fake_split(n_classes=12, per_class=25, name="train"):
    labels = np.repeat(np.arange(n_classes), per_class)
    rng = np.random.default_rng(0)
    labels = labels[rng.permutation(len(labels))]  # rows of a class are scattered, as in real files
    images = torch.from_numpy(np.arange(len(labels), dtype=np.uint8)[:, None, None, None].repeat(3, 1))
    return Split(name, images.expand(-1, 3, 2, 2).contiguous(), labels, [f"c{c}" for c in range(n_classes)],
                 [np.flatnonzero(labels == c) for c in range(n_classes)])


@pytest.mark.parametrize("n_way, k_shot, n_query", [(5, 1, 15), (5, 5, 15), (10, 2, 3)])
def test_episode_invariants(n_way, k_shot, n_query):
    split = fake_split()
    sampler = EpisodeSampler(split, n_way, k_shot, n_query, seed=7)
    for index in range(20):
        e = sampler.episode(index)
        assert len(set(e.classes)) == n_way
        assert len(e.support_rows) == n_way * k_shot and len(e.query_rows) == n_way * n_query
        assert set(e.support_rows).isdisjoint(e.query_rows)
        assert len(set(e.support_rows)) == len(e.support_rows) and len(set(e.query_rows)) == len(e.query_rows)
        assert np.bincount(e.support_labels, minlength=n_way).tolist() == [k_shot] * n_way
        assert np.bincount(e.query_labels, minlength=n_way).tolist() == [n_query] * n_way
        # label j means the j-th drawn class, for support and query alike
        assert np.array_equal(split.labels[e.support_rows], e.classes[e.support_labels])
        assert np.array_equal(split.labels[e.query_rows], e.classes[e.query_labels])


def test_support_and_query_are_shuffled():
    e = EpisodeSampler(fake_split(), 5, 5, 15, seed=0).episode(0)
    assert not np.array_equal(e.support_labels, np.sort(e.support_labels))
    assert not np.array_equal(e.query_labels, np.sort(e.query_labels))


def test_episodes_depend_only_on_seed_stream_and_index():
    split = fake_split()
    a = EpisodeSampler(split, 5, 1, 15, seed=1)
    b = EpisodeSampler(split, 5, 1, 15, seed=1)
    b.episode(9), b.episode(3)  # another consumer, another order
    for index in (0, 3, 9):
        ea, eb = a.episode(index), b.episode(index)
        assert np.array_equal(ea.support_rows, eb.support_rows) and np.array_equal(ea.query_rows, eb.query_rows)
    assert not np.array_equal(a.episode(0).query_rows, a.episode(1).query_rows)
    assert not np.array_equal(a.episode(0).query_rows, EpisodeSampler(split, 5, 1, 15, seed=2).episode(0).query_rows)
    assert not np.array_equal(a.episode(0).query_rows,
                              EpisodeSampler(split, 5, 1, 15, seed=1, stream="val").episode(0).query_rows)


def test_tensors_are_scaled_to_unit_interval():
    split = fake_split()
    support_x, support_y, query_x, query_y = EpisodeSampler(split, 5, 1, 15, seed=0).tensors(0, "cpu")
    assert support_x.dtype == torch.float32 and support_x.shape == (5, 3, 2, 2)
    assert query_x.max() <= 1 and query_x.min() >= 0
    assert torch.equal(support_y, torch.from_numpy(EpisodeSampler(split, 5, 1, 15, seed=0).episode(0).support_labels))


def test_too_few_classes_is_a_clear_error():
    with pytest.raises(UserError, match="split 'train' has 4 classes; a 5-way episode needs at least 5"):
        EpisodeSampler(fake_split(n_classes=4), 5, 1)


def test_too_few_images_names_the_class():
    with pytest.raises(UserError, match="class 'c0' has 10 images; a 5-shot episode with 15 queries needs 20"):
        EpisodeSampler(fake_split(per_class=10), 5, 5)
