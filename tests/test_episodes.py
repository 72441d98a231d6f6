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


def test_an_image_pool_fixes_p_images_per_class_for_every_episode():
    split = fake_split(per_class=25)
    sampler = EpisodeSampler(split, 5, 1, 5, seed=3, image_pool=8)
    used = {c: set() for c in range(len(split.classes))}
    for index in range(200):
        e = sampler.episode(index)
        for rows, labels in ((e.support_rows, e.support_labels), (e.query_rows, e.query_labels)):
            for row, label in zip(rows, labels):
                used[e.classes[label]].add(row)
    for c, rows in used.items():
        assert rows <= set(sampler.rows_of_class[c]) and len(sampler.rows_of_class[c]) == 8
        assert set(sampler.rows_of_class[c]) <= set(split.rows_of_class[c])
    assert sum(len(rows) for rows in used.values()) == 8 * len(split.classes)  # 200 episodes use every pooled image
    free = EpisodeSampler(split, 5, 1, 5, seed=3)
    assert len(set().union(*(free.episode(i).query_rows for i in range(200)))) > 8 * len(split.classes)


def test_the_pool_depends_on_seed_and_split_only():
    def pool(seed, name="train", image_pool=8):
        return EpisodeSampler(fake_split(name=name), 5, 1, 5, seed=seed, image_pool=image_pool).rows_of_class
    assert all(np.array_equal(a, b) for a, b in zip(pool(3), pool(3)))
    assert not all(np.array_equal(a, b) for a, b in zip(pool(3), pool(4)))
    assert not all(np.array_equal(a, b) for a, b in zip(pool(3), pool(3, "val")))
    # a pool as large as the class is the whole class
    sampler = EpisodeSampler(fake_split(), 5, 1, 5, seed=3, image_pool=25)
    assert [sorted(r) for r in sampler.rows_of_class] == [sorted(r) for r in fake_split().rows_of_class]


def test_an_image_pool_smaller_than_an_episode_or_a_class_is_a_clear_error():
    with pytest.raises(UserError, match="--image-pool 5: a 1-shot episode with 5 queries needs at least 6"):
        EpisodeSampler(fake_split(), 5, 1, 5, image_pool=5)
    with pytest.raises(UserError, match="class 'c0' has 25 images; an image pool of 30 per class needs at least 30"):
        EpisodeSampler(fake_split(), 5, 1, 5, image_pool=30)
