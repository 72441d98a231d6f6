"""Meta-test: run a method on each test episode (the meta-learner adapts on the support set,
a baseline fine-tunes or just classifies), score the queries, summarise.

Methods and what `--checkpoint` means for each:
  meta_lstm                  a meta-learner (best.pt of 'reproml train'); also records its gates
  baseline_nearest_neighbor  a pre-trained network (best.pt of 'reproml pretrain')
  baseline_finetune          a pre-trained network, plus the (lr, decay) of 'reproml select-finetune'
  matching_net(_fce)         a Matching Network (model.pt of 'reproml train-matching-net'), at any shot
  pixel_nearest_neighbor     nothing
"""

import csv
import time
from pathlib import Path

import torch
from tqdm import tqdm

from reproml.atomic import atomic_path, make_dir, write_json
from reproml.data.episodes import EpisodeSampler, shortfall
from reproml.data.prepared import load_split, read_manifest
from reproml.errors import UserError
from reproml.files import read_json
from reproml.evaluation.gates import GateRecorder
from reproml.methods.finetune import finetune_classifier
from reproml.methods.matching_net import classifier as matching_net_classifier, load_matching_net
from reproml.methods.meta_lstm import load_checkpoint, query_logits
from reproml.methods.nearest_neighbor import feature_nearest_neighbor, pixel_nearest_neighbor
from reproml.kernels import build as kernels
from reproml.models.matching_net import VARIANTS as MATCHING_NETS
from reproml.models.pretrained import load_pretrained
from reproml.settings import N_QUERY, TaskSettings, cross_shot_inner_loop, resolve_device
from reproml.statistics import summarize

METHODS = ("meta_lstm", "baseline_nearest_neighbor", "baseline_finetune", *MATCHING_NETS, "pixel_nearest_neighbor")


@torch.no_grad()
def episode_accuracies(classify, sampler, episodes, device, desc="evaluate", progress=True):
    """Accuracy (percent) of `classify(episode) -> query predictions` on episodes 0..episodes-1, in order."""
    accuracies = []
    for index in tqdm(range(episodes), desc=desc, unit="ep", disable=not progress, leave=False):
        episode = sampler.tensors(index, device)
        accuracies.append(100.0 * (classify(episode) == episode[3]).float().mean().item())
    return accuracies


def meta_lstm_classifier(meta, learner, settings, gate_recorder=None):
    def classify(episode):
        gates = [] if gate_recorder else None
        logits = query_logits(meta, learner, settings, episode, meta_training=False, gates=gates)
        if gate_recorder:
            gate_recorder.record(gates)
        return logits.argmax(1)
    return classify


def read_finetune_choice(path):
    choice = read_json(path, "fine-tuning choice")
    try:
        return {"finetune_lr": float(choice["lr"]), "finetune_decay": float(choice["decay"]),
                "finetune_val_acc": float(choice["val_acc"]), "finetune_grid_points": int(choice["grid_points"])}
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{path}: not a fine-tuning choice (a JSON file with lr and decay, "
                        "written by 'reproml select-finetune')") from None


def check_image_size(path, trained_size, manifest, data):
    if manifest["image_size"] != trained_size:
        raise UserError(f"{path}: trained on {trained_size}x{trained_size} images, but "
                        f"{data} holds {manifest['image_size']}x{manifest['image_size']}")


def meta_lstm_method(checkpoint, device, manifest, data, n_way, k_shot, n_query):
    learner, meta, settings, ckpt = load_checkpoint(checkpoint, device)
    if n_way is not None and n_way != settings.n_way:
        raise UserError(f"{checkpoint}: trained for {settings.n_way}-way episodes, not --n-way {n_way} "
                        "(the learner's output layer has one unit per class)")
    overrides = {"k_shot": k_shot, "n_query": n_query}
    trained_shot = settings.k_shot
    if k_shot is not None and k_shot != trained_shot:  # tested at another shot: the original's inner loop for it
        overrides["batch_size"], overrides["epochs"] = cross_shot_inner_loop(trained_shot, k_shot)
    settings = TaskSettings.from_dict({**settings.to_dict(), **{k: v for k, v in overrides.items() if v is not None}})
    check_image_size(checkpoint, settings.image_size, manifest, data)
    meta.eval()
    recorder = GateRecorder(learner, device)
    info = {"checkpoint": str(checkpoint), "checkpoint_iteration": ckpt.get("iteration"), "train_seed": ckpt.get("seed"),
            "train_dataset": ckpt.get("dataset"), "image_pool": ckpt.get("image_pool", "all"),
            "trained_setting": ckpt.get("setting"), "trained_k_shot": trained_shot,
            "inner_loop": {"batch_size": settings.batch_size, "epochs": settings.epochs},
            "compiled_kernels": kernels.describe(device)}
    return meta_lstm_classifier(meta, learner, settings, recorder), settings, info, ckpt.get("setting"), recorder


def baseline_method(method, checkpoint, finetune_choice, seed, device, manifest, data, settings):
    if checkpoint is None:
        raise UserError(f"--method {method} needs --checkpoint (a pre-trained network from 'reproml pretrain')")
    pretrained, ckpt = load_pretrained(checkpoint, device)
    check_image_size(checkpoint, ckpt["image_size"], manifest, data)
    info = {"checkpoint": str(checkpoint), "checkpoint_iteration": ckpt.get("step"), "train_seed": ckpt.get("seed"),
            "train_dataset": ckpt.get("dataset")}
    if method == "baseline_nearest_neighbor":
        return feature_nearest_neighbor(pretrained), info
    if finetune_choice is None:
        raise UserError("--method baseline_finetune needs --finetune-choice (from 'reproml select-finetune')")
    choice = read_finetune_choice(finetune_choice)
    classify = finetune_classifier(pretrained, settings.n_way, choice["finetune_lr"], choice["finetune_decay"], seed)
    return classify, {**info, **choice}


def matching_net_method(method, checkpoint, device, manifest, data, n_way):
    if checkpoint is None:
        raise UserError(f"--method {method} needs --checkpoint (a model.pt from 'reproml train-matching-net')")
    model, params, bn_stats, ckpt = load_matching_net(checkpoint, device)
    if model.spec.variant != method:
        raise UserError(f"{checkpoint}: a {model.spec.variant} model, not --method {method}")
    check_image_size(checkpoint, model.spec.image_size, manifest, data)
    info = {"checkpoint": str(checkpoint), "checkpoint_iteration": ckpt.get("iteration"), "train_seed": ckpt.get("seed"),
            "train_dataset": ckpt.get("dataset"), "keep": ckpt.get("keep"), "deviations": list(model.spec.deviations)}
    return matching_net_classifier(model, params, bn_stats, n_way), info


def evaluate(data, episodes, seed, out, method="meta_lstm", checkpoint=None, device="auto", split="test",
             n_way=None, k_shot=None, n_query=None, label=None, finetune_choice=None, train_dataset=None,
             skip_if_too_small=False, progress=True):
    """Evaluate one method on episodes 0..episodes-1 of `seed`; write episodes.csv and summary.json
    (and gates.csv for the meta-learner).

    Every method sees the same episodes for the same seed; episodes.csv records a fingerprint of
    each episode's images so that a paired comparison can check it.

    `data` may be another dataset than the method was trained on (transfer), prepared at the
    training image size; the summary's `dataset` names the training data (`train_dataset`, else
    the checkpoint's, else `data`'s) and `eval_dataset` the data evaluated on. With
    `skip_if_too_small`, data with too few classes or images per class for the episodes gives a
    summary that says so (`skipped`) instead of an error."""
    if episodes < 2:
        raise UserError(f"--episodes {episodes}: need at least 2 for a confidence interval")
    if method not in METHODS:
        raise UserError(f"--method {method!r}: expected one of {', '.join(METHODS)}")
    device = resolve_device(device)
    manifest = read_manifest(data)
    recorder = None
    if method == "meta_lstm":
        if checkpoint is None:
            raise UserError("--method meta_lstm needs --checkpoint")
        classify, settings, info, trained_label, recorder = meta_lstm_method(checkpoint, device, manifest, data,
                                                                             n_way, k_shot, n_query)
        label = label or trained_label
    else:
        if n_way is None or k_shot is None:
            raise UserError(f"--method {method} needs --n-way and --k-shot")
        settings = TaskSettings(n_way, k_shot, manifest["image_size"], n_query=n_query or N_QUERY)
        if method == "pixel_nearest_neighbor":
            classify, info = pixel_nearest_neighbor, {}
        elif method in MATCHING_NETS:
            classify, info = matching_net_method(method, checkpoint, device, manifest, data, settings.n_way)
        else:
            classify, info = baseline_method(method, checkpoint, finetune_choice, seed, device, manifest, data,
                                             settings)
    label = label or f"{settings.n_way}w{settings.k_shot}s"
    eval_split = load_split(data, split, device)
    problem = shortfall(eval_split, settings.n_way, settings.k_shot, settings.n_query)
    if problem and not skip_if_too_small:
        raise UserError(f"{data}: {problem}")
    summary = {"method": method, "dataset": train_dataset or info.pop("train_dataset", None) or manifest.get("name"),
               "eval_dataset": manifest.get("name"), "dataset_format": manifest["source"]["format"], "setting": label,
               "train_seed": None, **info, "split": split, "seed": seed, "n_way": settings.n_way,
               "k_shot": settings.k_shot, "n_query": settings.n_query, "dataset_sha256": manifest.get("dataset_sha256"),
               "device": str(device)}
    out = Path(out)
    make_dir(out)
    accuracies, fingerprints = [], []
    if problem:
        summary.update(skipped=problem, episodes=0)
    else:
        sampler = EpisodeSampler(eval_split, settings.n_way, settings.k_shot, settings.n_query, seed, stream=split)
        start = time.perf_counter()
        accuracies = episode_accuracies(classify, sampler, episodes, device, desc=f"evaluate {method}",
                                        progress=progress)
        seconds = time.perf_counter() - start
        fingerprints = [sampler.fingerprint(i) for i in range(episodes)]
        summary.update(summarize(accuracies), s_per_episode=seconds / episodes)
    with atomic_path(out / "episodes.csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["episode", "accuracy", "episode_sha"])
        writer.writerows((i, f"{a:.6f}", sha) for i, (a, sha) in enumerate(zip(accuracies, fingerprints)))
    if recorder and accuracies:
        recorder.write_csv(out / "gates.csv")
    write_json(out / "summary.json", summary)
    return summary
