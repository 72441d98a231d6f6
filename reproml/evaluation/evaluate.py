"""Meta-test: adapt on each episode's support set, score its queries, summarise."""

import csv
import time
from pathlib import Path

import torch
from tqdm import tqdm

from reproml.atomic import atomic_path, write_json
from reproml.data.episodes import EpisodeSampler
from reproml.data.prepared import load_split, read_manifest
from reproml.errors import UserError
from reproml.methods.meta_lstm import load_checkpoint, query_logits
from reproml.settings import TaskSettings, resolve_device
from reproml.statistics import summarize


@torch.no_grad()
def episode_accuracies(meta, learner, settings, sampler, episodes, device, desc="evaluate", progress=True):
    """Accuracy (percent) on each of episodes 0..episodes-1 of `sampler`."""
    accuracies = []
    for index in tqdm(range(episodes), desc=desc, unit="ep", disable=not progress, leave=False):
        episode = sampler.tensors(index, device)
        logits = query_logits(meta, learner, settings, episode, meta_training=False)
        accuracies.append(100.0 * (logits.argmax(1) == episode[3]).float().mean().item())
    return accuracies


def evaluate(data, checkpoint, episodes, seed, out, device="auto", split="test", n_way=None, k_shot=None,
             n_query=None, progress=True):
    if episodes < 2:
        raise UserError(f"--episodes {episodes}: need at least 2 for a confidence interval")
    device = resolve_device(device)
    learner, meta, settings, ckpt = load_checkpoint(checkpoint, device)
    if n_way is not None and n_way != settings.n_way:
        raise UserError(f"{checkpoint}: trained for {settings.n_way}-way episodes, not --n-way {n_way} "
                        "(the learner's output layer has one unit per class)")
    overrides = {"k_shot": k_shot, "n_query": n_query}
    settings = TaskSettings.from_dict({**settings.to_dict(), **{k: v for k, v in overrides.items() if v is not None}})
    manifest = read_manifest(data)
    if manifest["image_size"] != settings.image_size:
        raise UserError(f"{checkpoint}: trained on {settings.image_size}x{settings.image_size} images, but {data} "
                        f"holds {manifest['image_size']}x{manifest['image_size']}")
    sampler = EpisodeSampler(load_split(data, split, device), settings.n_way, settings.k_shot,
                             settings.n_query, seed, stream=split)
    meta.eval()
    start = time.perf_counter()
    accuracies = episode_accuracies(meta, learner, settings, sampler, episodes, device, progress=progress)
    seconds = time.perf_counter() - start

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "episodes.csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["episode", "accuracy"])
        writer.writerows((i, f"{a:.6f}") for i, a in enumerate(accuracies))
    summary = {**summarize(accuracies), "method": "meta_lstm", "dataset": manifest.get("name"),
               "dataset_format": manifest["source"]["format"],
               "setting": ckpt.get("setting"), "train_seed": ckpt.get("seed"), "split": split, "seed": seed,
               "n_way": settings.n_way, "k_shot": settings.k_shot, "n_query": settings.n_query,
               "checkpoint": str(checkpoint), "checkpoint_iteration": ckpt.get("iteration"),
               "dataset_sha256": manifest.get("dataset_sha256"), "device": str(device),
               "s_per_episode": seconds / episodes}
    write_json(out / "summary.json", summary)
    return summary
