"""Pre-training for the paper's baselines: the wider CNN of the original code (4 blocks of 64
filters, BN eps 1e-3; at 84x84 a 1600-d feature) trained as a plain classifier over every
meta-train class: Adam, batches of 64, no augmentation.

The network is the learner of `models/learner.py` with 64 filters and one output per
meta-train class, so it is called with explicit parameters like everything else.

Every `val_every` steps the features are checked on validation episodes (cosine 1-NN,
5-way 1-shot, the baseline-nearest-neighbour's own measure); the best is kept as best.pt
and its step recorded, as for the meta-learner.

Files in the run folder: last.pt (to resume), best.pt, curve.csv (iteration = step,
train_loss, train_acc, val_acc, val_ci95), run.json. Batch `b` of epoch `e` depends only on (seed, e, b),
so an interrupted run resumes to the same numbers.
"""

import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from reproml.atomic import make_dir, save_torch, write_json
from reproml.data.episodes import EpisodeSampler
from reproml.data.prepared import load_split, read_manifest
from reproml.errors import UserError
from reproml.evaluation.evaluate import episode_accuracies
from reproml.methods.nearest_neighbor import feature_nearest_neighbor
from reproml.models.learner import Learner, LearnerSpec
from reproml.models.pretrained import BN_MOMENTUM, FILTERS, Pretrained
from reproml.settings import resolve_device
from reproml.statistics import summarize
from reproml.training.run_log import (check_schedule, last_state, load_last, new_state, record_step, record_validation,
                                      write_outputs)

VALIDATION_EPISODE = {"n_way": 5, "k_shot": 1, "n_query": 15}
BATCH_STREAM = 3  # episodes use streams 0-2 (episodes.STREAMS)


def batch_rows(seed, step, n_images, batch_size):
    """The rows of training batch `step`: epochs are fresh permutations; the last partial batch is dropped."""
    per_epoch = n_images // batch_size
    epoch, batch = divmod(step, per_epoch)
    order = np.random.default_rng([seed, BATCH_STREAM, epoch]).permutation(n_images)
    return order[batch * batch_size:(batch + 1) * batch_size]


def pretrain(data, steps, batch_size, lr, val_every, val_episodes, seed, out, device="auto", progress=True,
             replace=False):
    check_schedule("--steps", steps, val_every, val_episodes)
    device = resolve_device(device)
    manifest = read_manifest(data)
    train_split = load_split(data, "train", device)
    if len(train_split.labels) < batch_size:
        raise UserError(f"--batch-size {batch_size}: the training split has only {len(train_split.labels)} images")
    val_sampler = EpisodeSampler(load_split(data, "val", device), seed=seed, **VALIDATION_EPISODE)
    run_config = {"dataset": manifest.get("name"), "dataset_sha256": manifest.get("dataset_sha256"), "seed": seed,
                  "batch_size": batch_size, "lr": lr, "val_every": val_every, "val_episodes": val_episodes,
                  "filters": FILTERS}

    spec = LearnerSpec(len(train_split.classes), manifest["image_size"], FILTERS)
    learner = Learner(spec)
    params = learner.init_flat(torch.Generator().manual_seed(seed)).to(device).requires_grad_()
    net = Pretrained(spec, params, learner.new_bn_stats(device))
    optimizer = torch.optim.Adam([params], lr=lr)
    out = Path(out)
    saved, restart_reason = load_last(out, run_config, ("--steps", steps, val_every), device, replace)
    state, best = new_state(restart_reason), None
    if saved:
        with torch.no_grad():
            params.copy_(saved["params"])
        net.bn_stats = [tuple(pair) for pair in saved["bn_stats"]]
        optimizer.load_state_dict(saved["optimizer"])
        state, best = saved["state"], saved["best"]
    make_dir(out)

    images, labels = train_split.images, torch.as_tensor(train_split.labels, device=device)
    bar = tqdm(total=steps, initial=state["iteration"], desc="pretrain", unit="step", disable=not progress)
    for step in range(state["iteration"], steps):
        start = time.perf_counter()
        rows = torch.from_numpy(batch_rows(seed, step, len(labels), batch_size)).to(device)
        x, y = images[rows].float().div_(255), labels[rows]
        logits = net.learner(params, x, net.bn_stats, True, BN_MOMENTUM)
        loss = F.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        record_step(state, loss.item(), 100.0 * (logits.argmax(1) == y).float().mean().item(),
                    time.perf_counter() - start)
        bar.update()

        done = step + 1
        if done % val_every == 0 or done == steps:
            val = summarize(episode_accuracies(feature_nearest_neighbor(net), val_sampler, val_episodes, device,
                                               desc="validate", progress=progress))
            bar.set_postfix(val_acc=f"{val['acc_mean']:.2f}")
            if record_validation(state, done, val):
                best = net.checkpoint(step=done, val_acc=val["acc_mean"], seed=seed, classes=list(train_split.classes),
                                      dataset=run_config["dataset"])
            save_torch(out / "last.pt", last_state(run_config, state, best, steps, params=params.detach(),
                                                   bn_stats=net.bn_stats, optimizer=optimizer.state_dict()))
            write_outputs(out, state, best)
    bar.close()
    write_outputs(out, state, best)  # again, for a finished run whose outputs were deleted (Snakemake does)
    summary = {**run_config, "steps": steps, "best_step": state["best_iteration"], "best_val_acc": state["best_val_acc"],
               "validation": "cosine 1-NN on 5-way 1-shot validation episodes", "device": str(device),
               "train_s_per_step": state["train_seconds"] / steps, "history": state.get("history", [])}
    write_json(out / "run.json", summary)
    return summary
