"""N-way K-shot episodes, as the original code draws them.

Classes are drawn without replacement; per class the images are shuffled, the first K are
support and the next Q are queries (never overlapping); support and query sets are shuffled;
labels are 0..N-1 by the class's position in the draw.

Episode `i` of a stream depends only on (seed, stream, i): the same seed gives the same
episodes whatever method consumes them, and a resumed run continues exactly where it stopped.

An image pool (`image_pool=P`) restricts a split to P images per class, drawn once from the seed,
as the public PyTorch loaders did (P = 20); the original draws from every image.
"""

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from reproml.errors import UserError
from reproml.settings import N_QUERY

STREAMS = {"train": 0, "val": 1, "test": 2}
POOL_TAG = 7919  # keeps the pool's random stream apart from every episode's


@dataclass
class Episode:
    support_rows: np.ndarray
    support_labels: np.ndarray
    query_rows: np.ndarray
    query_labels: np.ndarray
    classes: np.ndarray  # the split's class indices, in label order


def shortfall(split, n_way, k_shot, n_query):
    """Why `split` cannot give N-way K-shot episodes with Q queries per class, or None if it can."""
    if len(split.classes) < n_way:
        return (f"split {split.name!r} has {len(split.classes)} classes; "
                f"a {n_way}-way episode needs at least {n_way}")
    needed = k_shot + n_query
    for name, rows in zip(split.classes, split.rows_of_class):
        if len(rows) < needed:
            return (f"split {split.name!r}: class {name!r} has {len(rows)} images; "
                    f"a {k_shot}-shot episode with {n_query} queries needs {needed}")
    return None


def fixed_pool(split, image_pool, seed, stream):
    """The rows of `image_pool` images per class, drawn once from the seed, as the public
    loaders did when they were built (the original code draws from every image)."""
    rng = np.random.default_rng([seed, stream, POOL_TAG, image_pool])
    pools = []
    for name, rows in zip(split.classes, split.rows_of_class):
        if len(rows) < image_pool:
            raise UserError(f"split {split.name!r}: class {name!r} has {len(rows)} images; "
                            f"an image pool of {image_pool} per class needs at least {image_pool}")
        pools.append(np.sort(rng.choice(rows, image_pool, replace=False)))
    return pools


class EpisodeSampler:
    """Episodes of one split. With `image_pool` P, every episode draws from the same P images
    per class (fixed from the seed); without it, from all of the class's images."""

    def __init__(self, split, n_way, k_shot, n_query=N_QUERY, seed=0, stream=None, image_pool=None):
        self.split, self.n_way, self.k_shot, self.n_query, self.seed = split, n_way, k_shot, n_query, seed
        self.stream = STREAMS[stream or split.name]
        problem = shortfall(split, n_way, k_shot, n_query)
        if problem:
            raise UserError(problem)
        if image_pool is not None and image_pool < k_shot + n_query:
            raise UserError(f"--image-pool {image_pool}: a {k_shot}-shot episode with {n_query} queries "
                            f"needs at least {k_shot + n_query} images per class")
        self.rows_of_class = split.rows_of_class if image_pool is None else \
            fixed_pool(split, image_pool, seed, self.stream)

    def episode(self, index):
        rng = np.random.default_rng([self.seed, self.stream, index])
        classes = rng.choice(len(self.split.classes), self.n_way, replace=False)
        support, query = [], []
        for rows in (self.rows_of_class[c] for c in classes):
            drawn = rng.permutation(rows)[: self.k_shot + self.n_query]
            support.append(drawn[: self.k_shot])
            query.append(drawn[self.k_shot:])
        support_labels = np.repeat(np.arange(self.n_way), self.k_shot)
        query_labels = np.repeat(np.arange(self.n_way), self.n_query)
        s, q = rng.permutation(len(support_labels)), rng.permutation(len(query_labels))
        return Episode(np.concatenate(support)[s], support_labels[s],
                       np.concatenate(query)[q], query_labels[q], classes)

    def fingerprint(self, index):
        """A short hash of the episode's images and labels: equal fingerprints, equal episodes."""
        e = self.episode(index)
        digest = hashlib.sha256()
        for array in (e.support_rows, e.support_labels, e.query_rows, e.query_labels):
            digest.update(np.ascontiguousarray(array, dtype=np.int64).tobytes())
        return digest.hexdigest()[:16]

    def tensors(self, index, device):
        """The episode's images as float in [0, 1] and its labels, on `device`."""
        episode = self.episode(index)
        images = self.split.images
        def pixels(rows):
            return images[torch.from_numpy(rows).to(images.device)].to(device, torch.float32).div_(255)
        def labels(y):
            return torch.from_numpy(y).to(device)
        return (pixels(episode.support_rows), labels(episode.support_labels),
                pixels(episode.query_rows), labels(episode.query_labels))
