"""The pre-trained network of the paper's baselines: the learner's architecture with 64 filters
(at 84x84 a 1600-d feature) and one output per meta-train class, trained as a plain classifier
(`training/pretrain.py`), then used for its features or fine-tuned (`methods/`)."""

from reproml.atomic import load_checked
from reproml.models.learner import Learner, LearnerSpec

CHECKPOINT_FORMAT = "reproml-pretrained/1"
FILTERS = 64
BN_MOMENTUM = 0.1  # Torch7's and PyTorch's default; the original baselines kept it


class Pretrained:
    """A network given by its flat parameters and its BN running statistics."""

    def __init__(self, spec, params, bn_stats):
        self.learner, self.params, self.bn_stats = Learner(spec), params, bn_stats

    def features(self, x):
        """The flattened output of the last block, in eval mode (running statistics)."""
        return self.learner.features(self.params, x, self.bn_stats, False, BN_MOMENTUM)

    def body(self):
        """The parameters of the four blocks, without the classification head."""
        spec = self.learner.spec
        return self.params[: self.learner.n_params - spec.n_way * (spec.feature_size + 1)]

    def checkpoint(self, **info):
        spec = self.learner.spec
        return {"format": CHECKPOINT_FORMAT, "n_classes": spec.n_way, "image_size": spec.image_size,
                "filters": spec.filters, "params": self.params.detach().cpu().clone(),
                "bn_stats": [(m.cpu().clone(), v.cpu().clone()) for m, v in self.bn_stats], **info}


def load_pretrained(path, device):
    ckpt = load_checked(path, CHECKPOINT_FORMAT, "pre-trained network")
    spec = LearnerSpec(ckpt["n_classes"], ckpt["image_size"], ckpt["filters"])
    bn_stats = [(mean.to(device), var.to(device)) for mean, var in ckpt["bn_stats"]]
    return Pretrained(spec, ckpt["params"].to(device), bn_stats), ckpt
