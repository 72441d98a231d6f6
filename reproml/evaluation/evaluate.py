"""Meta-test: run a method on each test episode (the meta-learner adapts on the support set,
a baseline just classifies), score the queries, summarise."""

import csv
import time
from pathlib import Path

import torch
from tqdm import tqdm

from reproml.atomic import atomic_path, write_json
from reproml.data.episodes import EpisodeSampler
from reproml.data.prepared import load_split, read_manifest
from reproml.errors import UserError
from reproml.methods import pixel_nn
from reproml.methods.meta_lstm import load_checkpoint, query_logits
from reproml.settings import TaskSettings, resolve_device
from reproml.statistics import summarize

METHODS = ("meta_lstm", "pixel_nearest_neighbor")


@torch.no_grad()
def episode_accuracies(classify, sampler, episodes, device, desc="evaluate", progress=True):
    """Accuracy (percent) of `classify(episode) -> query predictions` on episodes 0..episodes-1."""
    accuracies = []
    for index in tqdm(range(episodes), desc=desc, unit="ep", disable=not progress, leave=False):
        episode = sampler.tensors(index, device)
        accuracies.append(100.0 * (classify(episode) == episode[3]).float().mean().item())
    return accuracies


def meta_lstm_classifier(meta, learner, settings):
    return lambda episode: query_logits(meta, learner, settings, episode, meta_training=False).argmax(1)


def evaluate(data, episodes, seed, out, method="meta_lstm", checkpoint=None, device="auto", split="test",
             n_way=None, k_shot=None, n_query=None, label=None, progress=True):
    """Evaluate one method on test episodes 0..episodes-1 of `seed`; write episodes.csv and summary.json.

    Every method sees the same episodes for the same seed; episodes.csv records a fingerprint of
    each episode's images so that a paired comparison can check it."""
    if episodes < 2:
        raise UserError(f"--episodes {episodes}: need at least 2 for a confidence interval")
    if method not in METHODS:
        raise UserError(f"--method {method!r}: expected one of {', '.join(METHODS)}")
    device = resolve_device(device)
    manifest = read_manifest(data)
    info = {}
    if method == "meta_lstm":
        if checkpoint is None:
            raise UserError("--method meta_lstm needs --checkpoint")
        learner, meta, settings, ckpt = load_checkpoint(checkpoint, device)
        if n_way is not None and n_way != settings.n_way:
            raise UserError(f"{checkpoint}: trained for {settings.n_way}-way episodes, not --n-way {n_way} "
                            "(the learner's output layer has one unit per class)")
        overrides = {"k_shot": k_shot, "n_query": n_query}
        settings = TaskSettings.from_dict({**settings.to_dict(),
                                           **{k: v for k, v in overrides.items() if v is not None}})
        if manifest["image_size"] != settings.image_size:
            raise UserError(f"{checkpoint}: trained on {settings.image_size}x{settings.image_size} images, but "
                            f"{data} holds {manifest['image_size']}x{manifest['image_size']}")
        meta.eval()
        classify = meta_lstm_classifier(meta, learner, settings)
        info = {"checkpoint": str(checkpoint), "checkpoint_iteration": ckpt.get("iteration"),
                "train_seed": ckpt.get("seed")}
        label = label or ckpt.get("setting")
    else:
        if n_way is None or k_shot is None:
            raise UserError(f"--method {method} needs --n-way and --k-shot")
        settings = TaskSettings(n_way, k_shot, manifest["image_size"], n_query=n_query or 15)
        classify = pixel_nn.classify
    label = label or f"{settings.n_way}w{settings.k_shot}s"
    sampler = EpisodeSampler(load_split(data, split, device), settings.n_way, settings.k_shot,
                             settings.n_query, seed, stream=split)
    start = time.perf_counter()
    accuracies = episode_accuracies(classify, sampler, episodes, device, progress=progress)
    seconds = time.perf_counter() - start

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "episodes.csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["episode", "accuracy", "episode_sha"])
        writer.writerows((i, f"{a:.6f}", sampler.fingerprint(i)) for i, a in enumerate(accuracies))
    summary = {**summarize(accuracies), "method": method, "dataset": manifest.get("name"),
               "dataset_format": manifest["source"]["format"], "setting": label, "train_seed": None, **info,
               "split": split, "seed": seed, "n_way": settings.n_way, "k_shot": settings.k_shot,
               "n_query": settings.n_query, "dataset_sha256": manifest.get("dataset_sha256"),
               "device": str(device), "s_per_episode": seconds / episodes}
    write_json(out / "summary.json", summary)
    return summary
