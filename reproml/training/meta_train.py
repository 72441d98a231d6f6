"""Meta-training: one episode per meta-step, Adam, global-norm clipping; every `val_every`
steps a validation over the same `val_episodes` episodes; the best-on-validation
meta-learner is kept as `best.pt`.

Files in the run folder:
  last.pt    everything needed to resume (written after every validation)
  best.pt    the meta-learner with the best validation accuracy so far, and its iteration
  curve.csv  iteration, train_loss, train_acc, val_acc, val_ci95 (one row per validation)
  run.json   settings, seed, device, compiled kernels used, data checksum, best iteration, seconds per
             episode

Rerunning the same command after an interruption resumes from `last.pt`; since episodes are
a function of (seed, index) and nothing else is random, the result equals an uninterrupted run.
"""

import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from reproml.atomic import make_dir, save_torch, write_json
from reproml.data.episodes import EpisodeSampler
from reproml.data.prepared import load_split, read_manifest
from reproml.errors import UserError
from reproml.evaluation.evaluate import episode_accuracies, meta_lstm_classifier
from reproml.methods.meta_lstm import build, checkpoint, query_logits
from reproml.kernels import build as kernels
from reproml.settings import resolve_device
from reproml.statistics import summarize
from reproml.training.run_log import (check_schedule, last_state, load_last, new_state, record_step, record_validation,
                                      write_outputs)


def meta_step(meta, learner, settings, optimizer, episode):
    """One meta-training step on one episode; returns the query loss and logits."""
    logits = query_logits(meta, learner, settings, episode, meta_training=True)
    loss = F.cross_entropy(logits, episode[3])
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(meta.parameters(), settings.grad_clip)
    optimizer.step()
    return loss, logits


def train(data, settings, iterations, val_every, val_episodes, seed, out, device="auto", label=None, image_pool=None,
          progress=True, replace=False):
    """Meta-train on `data` (episodes from a fixed pool of `image_pool` images per class if given)."""
    check_schedule("--iterations", iterations, val_every, val_episodes)
    device = resolve_device(device)
    manifest = read_manifest(data)
    if manifest["image_size"] != settings.image_size:
        raise UserError(f"{data}: holds {manifest['image_size']}px images, not --image-size {settings.image_size}")
    out = Path(out)
    label = label or f"{settings.n_way}w{settings.k_shot}s"
    run_config = {"setting": label, "dataset": manifest.get("name"), "settings": settings.to_dict(), "seed": seed,
                  "val_every": val_every, "val_episodes": val_episodes,
                  "dataset_sha256": manifest.get("dataset_sha256"), "image_pool": image_pool or "all"}

    train_sampler, val_sampler = (EpisodeSampler(load_split(data, split, device), settings.n_way, settings.k_shot,
                                                 settings.n_query, seed, image_pool=image_pool)
                                  for split in ("train", "val"))
    learner, meta = build(settings, seed, device)
    optimizer = torch.optim.Adam(meta.parameters(), lr=settings.lr)
    # The best checkpoint travels inside last.pt, so deleting best.pt loses nothing.
    saved, restart_reason = load_last(out, run_config, ("--iterations", iterations, val_every), device, replace)
    state, best = new_state(restart_reason), None
    if saved:
        meta.load_state_dict(saved["meta_learner"])
        optimizer.load_state_dict(saved["optimizer"])
        state, best = saved["state"], saved["best"]
    make_dir(out)

    bar = tqdm(total=iterations, initial=state["iteration"], desc=f"train {label}",
               unit="ep", disable=not progress)
    for iteration in range(state["iteration"], iterations):
        start = time.perf_counter()
        meta.train()
        episode = train_sampler.tensors(iteration, device)
        loss, logits = meta_step(meta, learner, settings, optimizer, episode)
        record_step(state, loss.item(), 100.0 * (logits.argmax(1) == episode[3]).float().mean().item(),
                    time.perf_counter() - start)
        bar.update()

        done = iteration + 1
        if done % val_every == 0 or done == iterations:
            meta.eval()
            val = summarize(episode_accuracies(meta_lstm_classifier(meta, learner, settings), val_sampler,
                                               val_episodes, device, desc="validate", progress=progress))
            bar.set_postfix(val_acc=f"{val['acc_mean']:.2f}")
            if record_validation(state, done, val):
                best = checkpoint(meta, settings, iteration=done, val_acc=val["acc_mean"], seed=seed, setting=label,
                                  dataset=run_config["dataset"], image_pool=run_config["image_pool"])
            save_torch(out / "last.pt", last_state(run_config, state, best, iterations, meta_learner=meta.state_dict(),
                                                   optimizer=optimizer.state_dict()))
            write_outputs(out, state, best)
    bar.close()
    write_outputs(out, state, best)  # again, for a finished run whose outputs were deleted (Snakemake does)

    summary = {**run_config, "iterations": iterations, "best_iteration": state["best_iteration"],
               "best_val_acc": state["best_val_acc"], "device": str(device),
               "compiled_kernels": kernels.describe(device),
               "train_s_per_episode": state["train_seconds"] / iterations, "history": state.get("history", [])}
    write_json(out / "run.json", summary)
    return summary

