"""`reproml selfcheck`: every numerical path this machine can take, held against a float64 run of
the straightforward code (`reference.py`) on the same episodes.

For each setting, on the initial meta-learner and on one moved away from it, and for each of a few
episodes: one meta-step's meta-gradient and one test episode's query logits, in float64 by the
reference and in float32 by each path (PyTorch's operations; the compiled kernels where they load;
CUDA where present). Each path's distance from float64 is its relative norm error (and the
meta-gradient's cosine).

The rounding floor is what float32 costs at best. The meta-gradient is ill-conditioned: the learner's
near-zero gradient coordinates (the conv biases before BatchNorm, whose true gradient is 0) are
preprocessed with a factor e^10, and a one-ulp change of an input can move the result by percents
(tests/test_fast_path.py). So the floor of an episode is the larger of how far the float64 reference
moves when its inputs (images and meta-learner) move by one float32 ulp at random (the most over a few
draws), and how far the reference's own code lands from it when run in float32. Both are heavy-tailed
over episodes, so a path is judged by its median error over the episodes against the median floor:
more than `BOUND` times the floor fails, and the command exits with status 1.
"""

import contextlib
import copy
import statistics

import torch
import torch.nn.functional as F

from reproml import reference
from reproml.bench import parse_setting, random_split
from reproml.data.episodes import EpisodeSampler
from reproml.kernels import build as kernels
from reproml.methods.meta_lstm import build, query_logits
from reproml.settings import TaskSettings

BOUND = 2.0
ULP = 2.0 ** -24  # float32's unit roundoff
MOVE = 0.01       # the moved meta-learner: every parameter plus 0.01 N(0, 1), as tests/test_fast_path.py


def available_paths():
    """{name: (device, kernels on)} of the float32 paths this machine can take."""
    paths = {"plain float32": ("cpu", False)}
    if all(kernels.load(name) is not None for name in kernels.KERNELS):
        paths["kernels"] = ("cpu", True)
    if torch.cuda.is_available():
        paths["cuda"] = ("cuda", False)
    return paths


def meta_learner_states(settings, seed=0):
    """{state: float64 meta-learner}: the initial one, and one moved away from it."""
    learner, meta = build(settings, seed, "cpu")
    meta = meta.double()
    moved = copy.deepcopy(meta)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in moved.parameters():
            p.add_(MOVE * torch.randn(p.shape, generator=generator, dtype=torch.float64))
    return learner, {"initial": meta, "moved": moved}


def outputs(logits_of, meta, learner, settings, episode):
    """(meta-gradient as one float64 vector, test logits as float64) of one episode."""
    meta.zero_grad()
    F.cross_entropy(logits_of(meta, learner, settings, episode, meta_training=True), episode[3]).backward()
    gradient = torch.cat([p.grad.flatten() for p in meta.parameters()]).double().cpu()
    with torch.no_grad():
        logits = logits_of(meta, learner, settings, episode, meta_training=False).double().cpu()
    return gradient, logits


def on(episode, dtype, device="cpu"):
    support_x, support_y, query_x, query_y = episode
    return support_x.to(device, dtype), support_y.to(device), query_x.to(device, dtype), query_y.to(device)


def nudged(meta64, episode64, seed):
    """The inputs moved by one float32 ulp at random: every meta-learner parameter and every pixel."""
    generator = torch.Generator().manual_seed(seed)

    def move(x):
        return x * (1 + ULP * torch.randn(x.shape, generator=generator, dtype=x.dtype))

    meta = copy.deepcopy(meta64)
    with torch.no_grad():
        for p in meta.parameters():
            p.copy_(move(p))
    support_x, support_y, query_x, query_y = episode64
    return meta, (move(support_x), support_y, move(query_x), query_y)


def distances(got, want):
    """(meta-gradient's relative norm error, its cosine, the logits' relative norm error)."""
    (grad, logits), (want_grad, want_logits) = got, want
    return ((grad - want_grad).norm() / want_grad.norm()).item(), F.cosine_similarity(grad, want_grad, 0).item(), \
        ((logits - want_logits).norm() / want_logits.norm()).item()


def check_episode(learner, settings, meta64, episode, paths, draws):
    """One episode's distances from float64, {"floor": ..., path: ...}, each as `distances` gives them."""
    episode64 = on(episode, torch.float64)
    want = outputs(reference.query_logits, meta64, learner, settings, episode64)
    floors = [distances(outputs(reference.query_logits, meta, learner, settings, moved), want)
              for meta, moved in (nudged(meta64, episode64, draw) for draw in range(draws))]
    floors.append(distances(outputs(reference.query_logits, copy.deepcopy(meta64).float(), learner, settings,
                                    on(episode, torch.float32)), want))
    result = {"floor": (max(f[0] for f in floors), min(f[1] for f in floors), max(f[2] for f in floors))}
    for name, (device, with_kernels) in paths.items():
        meta = copy.deepcopy(meta64).float().to(device)
        with contextlib.nullcontext() if with_kernels else kernels.switched_off():
            got = outputs(query_logits, meta, learner, settings, on(episode, torch.float32, device))
        result[name] = distances(got, want)
    return result


def selfcheck(setting_names, image_size, episodes, draws, progress=print):
    """{setting: {state: {path or "floor": {grad_error, grad_cosine, logit_error, ratio, ok}}}}: the
    medians over `episodes` episodes, each path's ratio to the floor and whether it is within BOUND."""
    paths = available_paths()
    results = {}
    for name in setting_names:
        settings = TaskSettings(*parse_setting(name), image_size)
        sampler = EpisodeSampler(random_split(settings, "cpu"), settings.n_way, settings.k_shot, settings.n_query)
        learner, states = meta_learner_states(settings)
        results[name] = {}
        for state, meta64 in states.items():
            per_episode = []
            for index in range(episodes):
                progress(f"{name}, {state} meta-learner, episode {index + 1} of {episodes}")
                per_episode.append(check_episode(learner, settings, meta64, sampler.tensors(index, "cpu"), paths,
                                                 draws))
            results[name][state] = summarize(per_episode)
    return results


def summarize(per_episode):
    medians = {key: [statistics.median(e[key][i] for e in per_episode) for i in range(3)] for key in per_episode[0]}
    floor = medians["floor"]
    summary = {}
    for key, (grad_error, cosine, logit_error) in medians.items():
        ratio = max(grad_error / floor[0], logit_error / floor[2]) if key != "floor" else 1.0
        summary[key] = {"grad_error": grad_error, "grad_cosine": cosine, "logit_error": logit_error,
                        "ratio": ratio, "ok": ratio <= BOUND}
    return summary


def passed(results):
    return all(r["ok"] for states in results.values() for paths in states.values() for r in paths.values())


def format_table(results):
    lines = [f"{'setting':8} {'meta-learner':12} {'path':14} {'grad rel. error':>15} {'cosine':>9} "
             f"{'logit rel. error':>16} {'x floor':>8}  verdict"]
    for name, states in results.items():
        for state, paths in states.items():
            for path, r in paths.items():
                verdict = "(the floor)" if path == "floor" else ("ok" if r["ok"] else f"FAIL (over {BOUND:g}x)")
                lines.append(f"{name:8} {state:12} {path:14} {r['grad_error']:15.2e} {r['grad_cosine']:9.6f} "
                             f"{r['logit_error']:16.2e} {r['ratio']:8.2f}  {verdict}")
    return "\n".join(lines)
