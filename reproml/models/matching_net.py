"""Matching Networks as the original code ran them (`model/baselines/matching-net.lua` and its
two embeddings; ../shared/reference/matching-net-facts.md has every detail), used functionally:
the parameters are a dict of tensors passed to every call.

- The embedding CNN is the learner's 4 blocks with 64 filters and no head (at 84x84 a 1600-d
  vector), each block followed by dropout 0.1. g embeds the support set, f the queries; they share
  one set of weights but keep separate BatchNorm running statistics (two Torch modules).
- Classifier: a class's score is the plain sum of the cosines between the query and that class's
  support items, fed to cross-entropy (not Vinyals et al.'s softmax attention).
- FCE ("full context embeddings"): g adds a bidirectional LSTM over the support set (summed,
  residual); f runs an attention LSTM for 3 steps over the support set. Every LSTM starts at zero,
  so FCE starts as the simple model. Their products are split by the parts of [x, h] (the same
  equations as the original's one matrix on [x, h], which `reproml.reference` runs step by step
  and tests/test_matching_net.py holds these to), so that no part is multiplied twice.

Where the original does something other than it evidently means to, the original is the default
and the intention a named deviation (`DEVIATIONS`).
"""

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from reproml.errors import UserError
from reproml.kernels.sequence_lstm import lstm_outputs
from reproml.models.learner import Learner, LearnerSpec

VARIANTS = ("matching_net", "matching_net_fce")
FILTERS = 64
BN_MOMENTUM = 0.1          # Torch7's default, kept by the original
DROPOUT = 0.1
ATTENTION_STEPS = 3        # `steps` of the attention LSTM
COSINE_EPS = 1e-12         # nn.CosineDistance's
ATTENTION_CLIP = 0.25      # the attention LSTM's gradient-norm clip (FCE only)

DEVIATIONS = {
    "single_embedding_update":
        "f and g's shared weights take one Adam step on their summed gradient; the original keeps two "
        "Adam states, one per path, and applies both steps every episode",
    "softmax_attention":
        "classify with Vinyals et al.'s softmax attention over the support items (log of the summed "
        "attention per class); the original feeds the summed raw cosines to cross-entropy",
    "fce_aligned_backward":
        "add to support item i the backward LSTM's output after reading item i; the original adds "
        "its i-th output, which has read the last i items",
    "fce_softmax_read":
        "the attention LSTM reads a softmax-weighted sum of the support embeddings; in the original "
        "the softmax runs over a dimension of size one, so every weight is 1 and the read-out is their sum",
    "fce_clip_bilstm":
        "clip the support biLSTM's gradients at 0.25 as the attention LSTM's; the original looks the "
        "biLSTM up under a name that does not exist and clips nothing",
}


@dataclass(frozen=True)
class MatchingNetSpec:
    variant: str
    image_size: int
    deviations: tuple = field(default_factory=tuple)

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise UserError(f"--variant {self.variant!r}: expected one of {', '.join(VARIANTS)}")
        object.__setattr__(self, "deviations", tuple(sorted(set(self.deviations))))
        for name in self.deviations:
            if name not in DEVIATIONS:
                raise UserError(f"unknown Matching Networks deviation {name!r}; expected one of "
                                f"{', '.join(DEVIATIONS)}")
            if name.startswith("fce_") and self.variant != "matching_net_fce":
                raise UserError(f"deviation {name!r} applies to matching_net_fce only")

    @property
    def fce(self):
        return self.variant == "matching_net_fce"

    def has(self, deviation):
        return deviation in self.deviations

    def to_dict(self):
        return {"variant": self.variant, "image_size": self.image_size, "deviations": list(self.deviations)}

    @classmethod
    def from_dict(cls, d):
        return cls(d["variant"], d["image_size"], tuple(d.get("deviations", ())))


def lstm_gates(pre, c):
    """One step of the original's LSTM from its pre-activations: gates in the order input, forget,
    output, candidate; no peepholes, no forget bias. Returns the new (h, c)."""
    i, f, o, candidate = pre.chunk(4, 1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(candidate)
    return torch.sigmoid(o) * torch.tanh(c), c


def cosine_similarities(query, support):
    """cos(query_j, support_i) as nn.CosineDistance computes it: a.b / sqrt((|a|^2 + eps)(|b|^2 + eps))."""
    norms = (query.pow(2).sum(1, keepdim=True) + COSINE_EPS) * (support.pow(2).sum(1) + COSINE_EPS)
    return query @ support.t() / norms.sqrt()


def class_scores(query, support, support_y, n_way, softmax_attention=False):
    """Scores for cross-entropy, one per (query, class). The original's: the sum of the raw cosines
    of the class's support items. Vinyals et al.'s: the log of the summed softmax attention, which
    cross-entropy leaves unchanged (the attention already sums to one)."""
    cosines = cosine_similarities(query, support)
    one_hot = F.one_hot(support_y, n_way).to(cosines.dtype)
    if softmax_attention:
        return torch.log(torch.softmax(cosines, 1) @ one_hot)
    return cosines @ one_hot


def attention_read(h, support, softmax_read):
    """The attention LSTM's read-out. The original applies nn.SoftMax to an n x 1 column of dot
    products, which normalises along the size-one dimension: every weight is exactly 1, and the
    read-out is the sum of the support embeddings, one row for every query."""
    if softmax_read:
        return torch.softmax(h @ support.t(), 1) @ support
    return support.sum(0, keepdim=True)


class MatchingNet:
    def __init__(self, spec):
        self.spec = spec
        self.cnn = Learner(LearnerSpec(0, spec.image_size, FILTERS))
        d = self.cnn.spec.feature_size
        self.lstm_shapes = {"support_forward": (2 * d, 4 * d), "support_backward": (2 * d, 4 * d),
                            "attention": (3 * d, 4 * d)} if spec.fce else {}

    def init_params(self, generator):
        """Torch7's default initialisation for the CNN (as the learner's); every LSTM weight and
        bias zero, as in the original (nothing re-initialises them)."""
        params = {"embedding": self.cnn.init_flat(generator)}
        for name, shape in self.lstm_shapes.items():
            params[f"{name}.weight"], params[f"{name}.bias"] = torch.zeros(shape), torch.zeros(shape[1])
        return params

    def n_params(self):
        return self.cnn.n_params + sum(rows * cols + cols for rows, cols in self.lstm_shapes.values())

    def new_bn_stats(self, device):
        """Running statistics of the two CNN modules: f's (queries) and g's (support set)."""
        return {"f": self.cnn.new_bn_stats(device), "g": self.cnn.new_bn_stats(device)}

    def embed(self, flat, x, bn_stats, training, generator):
        dropout = (lambda z: masked(z, generator)) if training else None
        return self.cnn.features(flat, x, bn_stats, training, BN_MOMENTUM, dropout)

    def support_embedding(self, params, support_x, bn_stats, training, generator):
        g = self.embed(params["embedding"], support_x, bn_stats["g"], training, generator)
        if not self.spec.fce:
            return g
        forward = lstm_outputs(params["support_forward.weight"], params["support_forward.bias"], g)
        backward = lstm_outputs(params["support_backward.weight"], params["support_backward.bias"], g.flip(0))
        if self.spec.has("fce_aligned_backward"):
            backward = backward.flip(0)
        return g + forward + backward

    def query_embedding(self, flat, params, query_x, support, bn_stats, training, generator):
        f = self.embed(flat, query_x, bn_stats["f"], training, generator)
        if not self.spec.fce:
            return f
        # The LSTM's input is [f, read] and its matrix acts on [f, read, h]: f's part is the same
        # at every step, and the original's read-out one row for all queries (attention_read).
        w_f, w_read, w_h = params["attention.weight"].split(f.shape[1])  # one split: one gradient concatenation
        from_f = f @ w_f + params["attention.bias"]
        h, c = torch.zeros_like(f), torch.zeros_like(f)
        read = support.mean(0, keepdim=True)  # r_1: the mean; the later read-outs as attention_read says
        for step in range(ATTENTION_STEPS):
            pre = from_f + read @ w_read
            out, c = lstm_gates(pre + h @ w_h if step else pre, c)  # h_0 = 0
            h = f + out
            if step < ATTENTION_STEPS - 1:
                read = attention_read(h, support, self.spec.has("fce_softmax_read"))
        return h

    def scores(self, params, episode, n_way, bn_stats, training, generator=None, query_cnn=None):
        """Class scores of the episode's queries. `query_cnn` replaces params["embedding"] on f's
        path: the trainer passes a second leaf of the same values to get f's gradient apart from g's."""
        support_x, support_y, query_x, _ = episode
        support = self.support_embedding(params, support_x, bn_stats, training, generator)
        flat = params["embedding"] if query_cnn is None else query_cnn
        query = self.query_embedding(flat, params, query_x, support, bn_stats, training, generator)
        return class_scores(query, support, support_y, n_way, self.spec.has("softmax_attention"))


def masked(x, generator, p=DROPOUT):
    """Inverted dropout with masks from `generator`, so that a resumed run draws the same masks."""
    keep = torch.rand(x.shape, generator=generator, device=x.device) >= p
    return x * keep / (1 - p)
