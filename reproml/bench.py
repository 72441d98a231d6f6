"""Throughput of meta-training and evaluation on random data, beside the machine's
matrix-multiply rate, so that a speed-up can be judged against what the hardware allows.

FLOPs count the learner's convolutions and output layer only (multiply-adds x 2; a backward
pass counted as twice the forward), which is where a faithful implementation spends its time at
84x84; the meta-learner's coordinate-wise LSTM is elementwise work and is left out.
"""

import statistics
import time

import numpy as np
import torch

from reproml.data.episodes import EpisodeSampler
from reproml.data.prepared import Split
from reproml.errors import UserError
from reproml.evaluation.evaluate import meta_lstm_classifier
from reproml.methods.meta_lstm import build
from reproml.kernels import build as kernels
from reproml.settings import TaskSettings, resolve_device
from reproml.training.meta_train import meta_step


def parse_setting(name):
    """'5w1s' -> (5, 1)."""
    try:
        n_way, k_shot = name.rstrip("s").split("w")
        return int(n_way), int(k_shot)
    except ValueError:
        raise UserError(f"--settings: {name!r} is not of the form <N>w<K>s, e.g. 5w1s") from None


def learner_forward_flops(settings):
    """FLOPs of one image's forward pass through the learner's convolutions and output layer."""
    flops, side, channels = 0, settings.image_size, 3
    for _ in range(4):
        flops += 2 * side * side * settings.filters * channels * 9
        side, channels = side // 2, settings.filters
    return flops + 2 * channels * side * side * settings.n_way


def episode_flops(settings, meta_training):
    """Learner FLOPs of one episode: every support batch forward and backward, the queries
    forward (and backward when the meta-gradient is needed)."""
    image = learner_forward_flops(settings)
    support = settings.epochs * settings.n_way * settings.k_shot * 3 * image
    query = settings.n_way * settings.n_query * (3 if meta_training else 1) * image
    return support + query


def random_split(settings, device, seed=0):
    per_class = settings.k_shot + settings.n_query
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (settings.n_way * per_class, 3, settings.image_size, settings.image_size),
                           dtype=torch.uint8, generator=generator)
    labels = np.repeat(np.arange(settings.n_way), per_class)
    return Split("train", images.to(device), labels, [f"c{c}" for c in range(settings.n_way)],
                 [np.flatnonzero(labels == c) for c in range(settings.n_way)])


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_gflops(device, repeats=5):
    """The machine's float32 matrix-multiply rate, measured now."""
    n = 4096 if device.type == "cuda" else 2048
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    synchronize(device)
    return repeats * 2 * n ** 3 / (time.perf_counter() - start) / 1e9


def time_episodes(step, episodes, device):
    step(0)  # warm-up: allocator, kernels, caches
    times = []
    for index in range(1, episodes + 1):
        synchronize(device)
        start = time.perf_counter()
        step(index)
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench(setting_names, image_size=84, episodes=5, device="auto"):
    device = resolve_device(device)
    rate = matmul_gflops(device)
    results = {}
    for name in setting_names:
        n_way, k_shot = parse_setting(name)
        settings = TaskSettings(n_way, k_shot, image_size)
        learner, meta = build(settings, 0, device)
        sampler = EpisodeSampler(random_split(settings, device), n_way, k_shot, settings.n_query, seed=0)
        optimizer = torch.optim.Adam(meta.parameters(), lr=settings.lr)

        def train_step(index):
            meta_step(meta, learner, settings, optimizer, sampler.tensors(index, device))

        classify = meta_lstm_classifier(meta, learner, settings)

        @torch.no_grad()
        def eval_step(index):
            classify(sampler.tensors(index, device))

        train_s = time_episodes(train_step, episodes, device)
        eval_s = time_episodes(eval_step, episodes, device)
        train_gflop, eval_gflop = episode_flops(settings, True) / 1e9, episode_flops(settings, False) / 1e9
        results[name] = {
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
            "compiled_kernels": kernels.describe(device),
            "image_size": image_size, "inner_steps": settings.inner_steps, "episodes_timed": episodes,
            "train_s_per_episode": train_s, "eval_s_per_episode": eval_s, "eval_episodes_per_s": 1 / eval_s,
            "learner_gflop_per_train_episode": train_gflop, "learner_gflop_per_eval_episode": eval_gflop,
            "matmul_gflops": rate,
            "train_fraction_of_matmul": train_gflop / train_s / rate,
            "eval_fraction_of_matmul": eval_gflop / eval_s / rate,
        }
    return results


def format_table(results):
    header = f"{'setting':8} {'T':>3} {'train s/ep':>10} {'eval s/ep':>10} {'eval ep/s':>9} " \
             f"{'GFLOP train':>11} {'GFLOP eval':>10} {'train %mm':>9} {'eval %mm':>8}"
    lines = [header]
    for name, r in results.items():
        lines.append(f"{name:8} {r['inner_steps']:>3} {r['train_s_per_episode']:>10.3f} {r['eval_s_per_episode']:>10.3f} "
                     f"{r['eval_episodes_per_s']:>9.2f} {r['learner_gflop_per_train_episode']:>11.2f} "
                     f"{r['learner_gflop_per_eval_episode']:>10.2f} {100 * r['train_fraction_of_matmul']:>8.1f}% "
                     f"{100 * r['eval_fraction_of_matmul']:>7.1f}%")
    first = next(iter(results.values()))
    lines.append(f"device {first['device']}; float32 matrix multiply {first['matmul_gflops']:.0f} GFLOP/s; "
                 f"medians of {first['episodes_timed']} episodes at {first['image_size']}x{first['image_size']}; "
                 f"compiled kernels: {first['compiled_kernels']}")
    return "\n".join(lines)
