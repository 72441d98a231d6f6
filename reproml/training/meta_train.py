"""Meta-training: one episode per meta-step, Adam, global-norm clipping; every `val_every`
steps a validation over the same `val_episodes` episodes; the best-on-validation
meta-learner is kept as `best.pt`.

Files in the run folder:
  last.pt    everything needed to resume (written after every validation)
  best.pt    the meta-learner with the best validation accuracy so far, and its iteration
  curve.csv  iteration, train_loss, train_acc, val_acc, val_ci95 (one row per validation)
  run.json   settings, seed, device, data checksum, best iteration, seconds per episode

Rerunning the same command after an interruption resumes from `last.pt`; since episodes are
a function of (seed, index) and nothing else is random, the result equals an uninterrupted run.
"""

import csv
import io
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from reproml.atomic import save_torch, write_json, write_text
from reproml.data.episodes import EpisodeSampler
from reproml.data.prepared import load_split, read_manifest
from reproml.errors import UserError
from reproml.evaluation.evaluate import episode_accuracies, meta_lstm_classifier
from reproml.methods.meta_lstm import build, checkpoint, query_logits
from reproml.settings import resolve_device
from reproml.statistics import summarize

CURVE_COLUMNS = ["iteration", "train_loss", "train_acc", "val_acc", "val_ci95"]


def meta_step(meta, learner, settings, optimizer, episode):
    """One meta-training step on one episode; returns the query loss and logits."""
    logits = query_logits(meta, learner, settings, episode, meta_training=True)
    loss = F.cross_entropy(logits, episode[3])
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(meta.parameters(), settings.grad_clip)
    optimizer.step()
    return loss, logits


def train(data, settings, iterations, val_every, val_episodes, seed, out, device="auto", label=None, progress=True):
    if iterations < 1 or val_every < 1:
        raise UserError(f"--iterations {iterations} and --val-every {val_every}: both must be at least 1")
    if val_episodes < 2:
        raise UserError(f"--val-episodes {val_episodes}: need at least 2 for a confidence interval")
    device = resolve_device(device)
    manifest = read_manifest(data)
    if manifest["image_size"] != settings.image_size:
        raise UserError(f"{data}: holds {manifest['image_size']}px images, not --image-size {settings.image_size}")
    out = Path(out)
    label = label or f"{settings.n_way}w{settings.k_shot}s"
    run_config = {"setting": label, "dataset": manifest.get("name"), "settings": settings.to_dict(), "seed": seed,
                  "val_every": val_every, "val_episodes": val_episodes,
                  "dataset_sha256": manifest.get("dataset_sha256")}

    train_sampler = EpisodeSampler(load_split(data, "train", device), settings.n_way, settings.k_shot,
                                   settings.n_query, seed)
    val_sampler = EpisodeSampler(load_split(data, "val", device), settings.n_way, settings.k_shot,
                                 settings.n_query, seed)
    learner, meta = build(settings, seed, device)
    optimizer = torch.optim.Adam(meta.parameters(), lr=settings.lr)
    state = {"iteration": 0, "curve": [], "best_val_acc": None, "best_iteration": None, "train_seconds": 0.0}
    best = None  # the best checkpoint travels inside last.pt, so deleting best.pt loses nothing

    last = out / "last.pt"
    if last.exists():
        saved = torch.load(last, map_location=device, weights_only=True)
        if saved["run_config"] != run_config:
            raise UserError(f"{out}: holds a run with other settings; use another --out or delete that folder")
        meta.load_state_dict(saved["meta_learner"])
        optimizer.load_state_dict(saved["optimizer"])
        state, best = saved["state"], saved["best"]
        print(f"{out}: resuming from iteration {state['iteration']}", file=sys.stderr, flush=True)
        if state["iteration"] > iterations:
            raise UserError(f"{out}: already trained for {state['iteration']} iterations, more than --iterations "
                            f"{iterations}; use another --out")
    out.mkdir(parents=True, exist_ok=True)

    losses, accs, seconds = [], [], 0.0  # since the last validation
    bar = tqdm(total=iterations, initial=state["iteration"], desc=f"train {label}",
               unit="ep", disable=not progress)
    for iteration in range(state["iteration"], iterations):
        start = time.perf_counter()
        meta.train()
        episode = train_sampler.tensors(iteration, device)
        loss, logits = meta_step(meta, learner, settings, optimizer, episode)
        seconds += time.perf_counter() - start
        losses.append(loss.item())
        accs.append(100.0 * (logits.argmax(1) == episode[3]).float().mean().item())
        bar.update()

        done = iteration + 1
        if done % val_every == 0 or done == iterations:
            meta.eval()
            val = summarize(episode_accuracies(meta_lstm_classifier(meta, learner, settings), val_sampler,
                                               val_episodes, device, desc="validate", progress=progress))
            state["curve"].append({"iteration": done, "train_loss": sum(losses) / len(losses),
                                   "train_acc": sum(accs) / len(accs), "val_acc": val["acc_mean"],
                                   "val_ci95": val["ci95"]})
            state["train_seconds"] += seconds
            losses, accs, seconds = [], [], 0.0
            bar.set_postfix(val_acc=f"{val['acc_mean']:.2f}")
            if state["best_val_acc"] is None or val["acc_mean"] > state["best_val_acc"]:
                state["best_val_acc"], state["best_iteration"] = val["acc_mean"], done
                best = checkpoint(meta, settings, iteration=done, val_acc=val["acc_mean"], seed=seed, setting=label)
            state["iteration"] = done
            save_torch(last, {"run_config": run_config, "meta_learner": meta.state_dict(),
                              "optimizer": optimizer.state_dict(), "state": state, "best": best})
            write_outputs(out, state, best)  # readable while training runs
    bar.close()
    write_outputs(out, state, best)  # again, for a finished run whose outputs were deleted (Snakemake does)

    summary = {**run_config, "iterations": iterations, "best_iteration": state["best_iteration"],
               "best_val_acc": state["best_val_acc"], "device": str(device),
               "train_s_per_episode": state["train_seconds"] / iterations}
    write_json(out / "run.json", summary)
    return summary


def write_outputs(out, state, best):
    save_torch(out / "best.pt", best)
    write_text(out / "curve.csv", curve_csv(state["curve"]))


def curve_csv(rows):
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, CURVE_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in row.items()})
    return buffer.getvalue()
