"""What the meta-learner learned (the paper's Figure 2): the input-gate and forget-gate values
of every inner update, averaged over each learner layer's parameters, then over test episodes."""

import csv

import torch

from reproml.atomic import atomic_path

GATE_COLUMNS = ["update", "layer", "gate", "mean", "std", "episodes"]


class GateRecorder:
    def __init__(self, learner, device):
        self.layer_of_param = learner.layer_of_each_param().to(device)
        self.layers = list(learner.layer_sizes())
        self.params_per_layer = torch.bincount(self.layer_of_param, minlength=len(self.layers)).float()
        self.episodes = []  # one (updates, 2 gates, layers) tensor per episode

    def layer_means(self, values):
        sums = values.new_zeros(len(self.layers)).index_add_(0, self.layer_of_param, values)
        return sums / self.params_per_layer.to(values.device)

    def record(self, gates):
        """`gates`: the (forget, input) values of each update of one episode, as `adapt` lists them."""
        self.episodes.append(torch.stack([torch.stack([self.layer_means(i), self.layer_means(f)])
                                          for f, i in gates]).cpu())

    def write_csv(self, path):
        values = torch.stack(self.episodes).double()  # (episodes, updates, gates, layers)
        mean = values.mean(0)
        std = values.std(0) if len(values) > 1 else torch.zeros_like(mean)
        with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(GATE_COLUMNS)
            for update in range(values.shape[1]):
                for g, gate in enumerate(("input", "forget")):
                    for l, layer in enumerate(self.layers):
                        writer.writerow([update + 1, layer, gate, f"{mean[update, g, l]:.6f}",
                                         f"{std[update, g, l]:.6f}", len(values)])
