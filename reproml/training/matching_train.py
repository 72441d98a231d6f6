"""Training Matching Networks as the original code did: one 5-way 5-shot episode (15 queries per
class) per step whatever shot the model is tested at, Adam at 1e-4 (Torch7's), both CNNs in
training mode (batch statistics, dropout), the FCE's attention LSTM clipped at a gradient norm
of 0.25. Every `val_every` steps, validation episodes scored at 1 and 5 shots (the first k support
items of each class; the same queries).

The shared weights of f and g take two Adam steps per episode in the original (torch-autograd
gives each occurrence of the weights its own gradient and optim its own state): by default here
too; `single_embedding_update` takes one step on the summed gradient.

Which model is tested: the original keeps the last snapshot (`keep="last"`); `keep="best"` takes the
best 5-shot validation, as our other trainers do. Either is recorded in run.json and model.pt.

Files in the run folder: last.pt (to resume), best.pt, model.pt (the kept model, at the end),
curve.csv (val_acc and val_ci95 at 5 shots, val_acc_1shot and val_ci95_1shot), run.json.
Episode i and its dropout masks depend only on (seed, i): a resumed run equals an uninterrupted one.
"""

import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from reproml.atomic import make_dir, save_torch, write_json
from reproml.data.episodes import EpisodeSampler
from reproml.data.prepared import load_split, read_manifest
from reproml.methods.matching_net import checkpoint, classifier
from reproml.models.matching_net import ATTENTION_CLIP, MatchingNet, MatchingNetSpec
from reproml.settings import N_QUERY, PAPER_MATCHING_NET_EPISODES, resolve_device
from reproml.statistics import summarize
from reproml.training.run_log import (check_schedule, last_state, load_last, new_state, record_step, record_validation,
                                      write_outputs)

LR = 1e-4
TRAIN_WAY, TRAIN_SHOT = 5, 5
VALIDATION_SHOTS = (1, 5)
KEEP = ("last", "best")
DROPOUT_STREAM = 5  # dropout masks' random stream, apart from the episodes' (episodes.STREAMS)


ADAM_CHUNK = 1 << 16  # elements: Adam's five passes run over one cache-sized piece at a time


def adam_step(param, grad, state, lr, beta1=0.9, beta2=0.999, eps=1e-8):
    """torch/optim's Adam: eps added to the square root of the uncorrected second moment, the bias
    corrections folded into the step size. Elementwise, so taking it piece by piece (the FCE's
    72 M parameters would otherwise cross memory five times) changes no bit."""
    if not state:
        state.update(t=0, m=torch.zeros_like(param), v=torch.zeros_like(param))
    state["t"] += 1
    step_size = lr * math.sqrt(1 - beta2 ** state["t"]) / (1 - beta1 ** state["t"])
    pieces = (t.view(-1).split(ADAM_CHUNK) for t in (param, grad, state["m"], state["v"]))
    for p, g, m, v in zip(*pieces):
        m.mul_(beta1).add_(g, alpha=1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        p.addcdiv_(m, v.sqrt().add_(eps), value=-step_size)


def clip_norm_(grads, max_norm):
    """Rescale `grads` together to an L2 norm of at most `max_norm` (each norm without a squared copy
    of the FCE's 30 M-entry gradient; the sums in another order than squaring first)."""
    norm = torch.sqrt(sum(torch.linalg.vector_norm(g) ** 2 for g in grads))
    scale = torch.clamp(max_norm / (norm + 1e-12), max=1.0)
    for g in grads:
        g.mul_(scale)


def first_shots(episode, k, n_way):
    """The episode with only the first `k` support items of each class, in the support set's order."""
    support_x, support_y, query_x, query_y = episode
    one_hot = F.one_hot(support_y, n_way)
    rank = (one_hot.cumsum(0) * one_hot).sum(1) - 1
    keep = rank < k
    return support_x[keep], support_y[keep], query_x, query_y


def dropout_generator(seed, index, device):
    """The dropout masks' generator for episode `index`: a function of (seed, index) alone."""
    return torch.Generator(device=device).manual_seed(int(np.random.SeedSequence([seed, DROPOUT_STREAM, index])
                                                          .generate_state(1, np.uint64)[0]) >> 1)


class Trainer:
    """The parameters, the Adam states and the BN statistics of one Matching Network in training."""

    def __init__(self, model, params, device):
        self.model, self.params, self.device = model, params, device
        self.bn_stats = model.new_bn_stats(device)
        # The original's optimiser entries: f's and g's copies of the CNN, then each LSTM tensor.
        single = model.spec.has("single_embedding_update")
        self.adam = {name: {} for name in (["embedding"] if single else ["embedding.f", "embedding.g"])
                     + [n for n in params if n != "embedding"]}

    def step(self, episode, n_way, generator):
        leaves = {name: p.detach().requires_grad_() for name, p in self.params.items()}
        query_cnn = None if "embedding" in self.adam else self.params["embedding"].detach().requires_grad_()
        scores = self.model.scores(leaves, episode, n_way, self.bn_stats, True, generator, query_cnn)
        loss = F.cross_entropy(scores, episode[3])
        names, tensors = list(leaves), list(leaves.values())
        if query_cnn is not None:  # leaves["embedding"] then carries g's path only
            names, tensors = ["embedding.g" if n == "embedding" else n for n in names] + ["embedding.f"], \
                tensors + [query_cnn]
        grads = dict(zip(names, torch.autograd.grad(loss, tensors)))
        if self.model.spec.fce:
            clip_norm_([grads["attention.weight"], grads["attention.bias"]], ATTENTION_CLIP)
            if self.model.spec.has("fce_clip_bilstm"):
                clip_norm_([grads[f"support_{d}.{p}"] for d in ("forward", "backward") for p in ("weight", "bias")],
                           ATTENTION_CLIP)
        with torch.no_grad():
            for name, state in self.adam.items():  # embedding.f and embedding.g both step the one embedding
                adam_step(self.params[name.removesuffix(".f").removesuffix(".g")], grads[name], state, LR)
        return loss.detach(), scores.detach()

    def state_dict(self):
        return {"params": self.params, "adam": self.adam, "bn_stats": self.bn_stats}

    def load_state_dict(self, saved):
        with torch.no_grad():
            for name, value in saved["params"].items():
                self.params[name].copy_(value)
        self.adam, self.bn_stats = saved["adam"], saved["bn_stats"]


def validate(trainer, sampler, episodes, progress):
    """{k: summary} of the validation episodes scored at each of VALIDATION_SHOTS."""
    accuracies = {k: [] for k in VALIDATION_SHOTS}
    with torch.no_grad():
        classify = classifier(trainer.model, trainer.params, trainer.bn_stats, TRAIN_WAY)
        for index in tqdm(range(episodes), desc="validate", unit="ep", disable=not progress, leave=False):
            episode = sampler.tensors(index, trainer.device)
            for k in VALIDATION_SHOTS:
                cut = first_shots(episode, k, TRAIN_WAY)
                accuracies[k].append(100.0 * (classify(cut) == cut[3]).float().mean().item())
    return {k: summarize(a) for k, a in accuracies.items()}


def train(data, variant, iterations, val_every, val_episodes, seed, out, keep="last", deviations=(), device="auto",
          progress=True, replace=False):
    check_schedule("--iterations", iterations, val_every, val_episodes)
    device = resolve_device(device)
    manifest = read_manifest(data)
    spec = MatchingNetSpec(variant, manifest["image_size"], tuple(deviations))
    run_config = {"method": variant, "dataset": manifest.get("name"), "dataset_sha256": manifest.get("dataset_sha256"),
                  "spec": spec.to_dict(), "seed": seed, "val_every": val_every,
                  "val_episodes": val_episodes, "lr": LR, "episode": f"{TRAIN_WAY}-way {TRAIN_SHOT}-shot"}
    train_sampler, val_sampler = (EpisodeSampler(load_split(data, split, device), TRAIN_WAY, TRAIN_SHOT, N_QUERY, seed)
                                  for split in ("train", "val"))
    model = MatchingNet(spec)
    params = {k: v.to(device) for k, v in model.init_params(torch.Generator().manual_seed(seed)).items()}
    trainer = Trainer(model, params, device)

    out = Path(out)
    # Which model is kept does not shape the training: changing it writes model.pt again, no more.
    options = {"keep": keep}
    saved, restart_reason = load_last(out, run_config, ("--iterations", iterations, val_every), device, replace, options)
    state, best = new_state(restart_reason), None
    if saved:
        trainer.load_state_dict(saved["trainer"])
        state, best = saved["state"], saved["best"]
    make_dir(out)

    bar = tqdm(total=iterations, initial=state["iteration"], desc=f"train {variant}", unit="ep", disable=not progress)
    for iteration in range(state["iteration"], iterations):
        start = time.perf_counter()
        episode = train_sampler.tensors(iteration, device)
        loss, scores = trainer.step(episode, TRAIN_WAY, dropout_generator(seed, iteration, device))
        record_step(state, loss.item(), 100.0 * (scores.argmax(1) == episode[3]).float().mean().item(),
                    time.perf_counter() - start)
        bar.update()

        done = iteration + 1
        if done % val_every == 0 or done == iterations:
            val = validate(trainer, val_sampler, val_episodes, progress)
            bar.set_postfix(val_acc=f"{val[TRAIN_SHOT]['acc_mean']:.2f}")
            one_shot = {"val_acc_1shot": val[1]["acc_mean"], "val_ci95_1shot": val[1]["ci95"]}
            if record_validation(state, done, val[TRAIN_SHOT], one_shot):
                best = checkpoint(trainer.model, trainer.params, trainer.bn_stats, iteration=done, val_acc=val[TRAIN_SHOT]["acc_mean"], seed=seed,
                                  dataset=run_config["dataset"])
            save_torch(out / "last.pt", last_state(run_config, state, best, iterations, options,
                                                   trainer=trainer.state_dict()))
            write_outputs(out, state, best)
    bar.close()
    write_outputs(out, state, best)
    kept = best if keep == "best" else checkpoint(trainer.model, trainer.params, trainer.bn_stats, iteration=iterations, val_acc=state["curve"][-1]["val_acc"],
                                                  seed=seed, dataset=run_config["dataset"])
    save_torch(out / "model.pt", {**kept, "keep": keep})
    summary = {**run_config, "keep": keep, "setting": f"{TRAIN_WAY}w{TRAIN_SHOT}s", "settings": {"n_way": TRAIN_WAY,
               "k_shot": TRAIN_SHOT, "n_query": N_QUERY, "image_size": spec.image_size,
               "deviations": list(spec.deviations)}, "iterations": iterations,
               "kept_iteration": kept["iteration"], "best_iteration": state["best_iteration"],
               "best_val_acc": state["best_val_acc"], "device": str(device), "parameters": model.n_params(),
               "train_s_per_episode": state["train_seconds"] / iterations, "history": state.get("history", [])}
    write_json(out / "run.json", summary)
    return summary
