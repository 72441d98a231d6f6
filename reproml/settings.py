"""The hyperparameters of one task setting, with the original code's defaults, and the
named deviations from the original (all off by default; the report lists those that were on)."""

import math
from dataclasses import asdict, dataclass, field

import torch

from reproml.errors import UserError

DEVIATIONS = {
    "no_grad_batch_division":
        "feed the meta-learner the batch-mean gradient; the original divides it by the batch size once more",
    "bn_scale_init_one":
        "initialise BatchNorm scales to 1 (PyTorch); the original (Torch7) draws them from U(0, 1)",
    "query_batch_stats_at_test":
        "classify test queries with their own batch statistics (transductive); the original uses the "
        "running statistics of the episode's support steps",
}


# The original code's budgets (config/paper.yaml). A run's `budget_fraction` scales the training
# budgets (meta-training episodes, pre-training steps) by one factor, so that the methods keep the
# paper's ratio between them.
PAPER_PRETRAIN_STEPS = 30000
PAPER_MATCHING_NET_EPISODES = 75000  # each Matching Networks variant, 5-way 5-shot episodes
README_COMMAND = "snakemake --cores 4"  # the pipeline's command as the README gives it
PAPER_TEST_EPISODES = 600
PAPER_VALIDATION = {"every": 1000, "episodes": 100}
# The original's other defaults, each defined here once (the CLI reads them; the config schema's
# defaults are tested to agree, tests/test_config.py).
N_QUERY = 15          # query images per class
META_LR = 1e-3        # Adam, for the meta-learner and for the baselines' pre-training
GRAD_CLIP = 0.25      # global gradient-norm clip of the meta-gradient
PRETRAIN_BATCH = 64
FILTERS = 32          # the learner's; the baselines' network has 64


def paper_iterations(k_shot):
    """Meta-training episodes of the original: 75,000 for 1-shot, 50,000 for 5-shot and larger."""
    return 75000 if k_shot == 1 else 50000


def scaled_budget(fraction, paper_budget):
    """`fraction` of a budget of the paper's, rounded, at least 1."""
    return max(1, round(fraction * paper_budget))


def shot_defaults(k_shot):
    """The original's inner-loop settings: 1-shot batch 5, 12 epochs, BN momentum 0.9;
    5-shot and larger batch 25, 8 epochs, BN momentum 0.95."""
    if k_shot == 1:
        return {"batch_size": 5, "epochs": 12, "bn_momentum": 0.9}
    return {"batch_size": 25, "epochs": 8, "bn_momentum": 0.95}


def cross_shot_inner_loop(trained_shot, test_shot):
    """(batch size, epochs) of the original's inner loop for a model trained at `trained_shot` and
    tested at `test_shot`: the test shot's entry in the training config (train-imagenet-1shot.lua:
    1-shot 5 x 12, 5-shot 5 x 5; -5shot.lua: 1-shot 5 x 5, 5-shot 25 x 8), for other shots the
    training shot's."""
    trained_at_one = trained_shot == 1
    entries = {1: (5, 12), 5: (5, 5)} if trained_at_one else {1: (5, 5), 5: (25, 8)}
    own = shot_defaults(trained_shot)
    return entries.get(test_shot, (own["batch_size"], own["epochs"]))


@dataclass(frozen=True)
class TaskSettings:
    n_way: int
    k_shot: int
    image_size: int
    n_query: int = N_QUERY
    batch_size: int = None
    epochs: int = None
    bn_momentum: float = None
    filters: int = FILTERS
    lr: float = META_LR
    grad_clip: float = GRAD_CLIP
    deviations: tuple = field(default_factory=tuple)

    def __post_init__(self):
        for key, value in shot_defaults(self.k_shot).items():
            if getattr(self, key) is None:
                object.__setattr__(self, key, value)
        object.__setattr__(self, "deviations", tuple(sorted(set(self.deviations))))
        for key in ("n_way", "k_shot", "n_query", "batch_size", "epochs", "filters"):
            if getattr(self, key) < 1:
                raise UserError(f"--{key.replace('_', '-')} {getattr(self, key)}: must be at least 1")
        if self.n_way < 2:
            raise UserError(f"--n-way {self.n_way}: must be at least 2")
        if not 0 < self.bn_momentum <= 1:
            raise UserError(f"--bn-momentum {self.bn_momentum}: must be in (0, 1]")
        for name in self.deviations:
            if name not in DEVIATIONS:
                raise UserError(f"unknown deviation {name!r}; expected one of {', '.join(DEVIATIONS)}")

    @property
    def inner_steps(self):
        """T = epochs x ceil(n_support / batch_size)."""
        return self.epochs * math.ceil(self.n_way * self.k_shot / self.batch_size)

    def has(self, deviation):
        return deviation in self.deviations

    def to_dict(self):
        d = asdict(self)
        d["deviations"] = list(self.deviations)
        return d

    @classmethod
    def from_dict(cls, d):
        return cls(**{**d, "deviations": tuple(d.get("deviations", ()))})


def resolve_device(name):
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available (use --device cpu or auto)")
    if name not in ("cpu", "cuda"):
        raise UserError(f"--device {name!r}: expected auto, cpu or cuda")
    device = torch.device(name)
    if device.type == "cuda":
        exact_float32_on_cuda()
    return device


def exact_float32_on_cuda():
    """Full float32 and deterministic kernels on CUDA. By default PyTorch lets cuDNN convolutions
    round their inputs to TF32 (a 10-bit mantissa) on Ampere and later GPUs and pick algorithms
    that accumulate in a different order from run to run; the meta-gradient amplifies such
    rounding (the gradient preprocessing scales by e^10), so either would change the numbers
    between runs and away from the original's float32."""
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
