"""Matching Networks as a few-shot method: a trained model's checkpoint, and classifying an
episode's queries with it (evaluation mode: each path's running statistics, no dropout). Training
is `reproml/training/matching_train.py`; the model is `reproml/models/matching_net.py`."""

from reproml.atomic import load_checked
from reproml.models.matching_net import MatchingNet, MatchingNetSpec

CHECKPOINT_FORMAT = "reproml-matching-net/1"


def checkpoint(model, params, bn_stats, **info):
    return {"format": CHECKPOINT_FORMAT, "spec": model.spec.to_dict(),
            "params": {k: v.detach().cpu().clone() for k, v in params.items()},
            "bn_stats": {path: [(m.cpu().clone(), v.cpu().clone()) for m, v in stats]
                         for path, stats in bn_stats.items()}, **info}


def load_matching_net(path, device):
    """(model, params, bn_stats, checkpoint) of a trained Matching Network."""
    ckpt = load_checked(path, CHECKPOINT_FORMAT, "Matching Network")
    model = MatchingNet(MatchingNetSpec.from_dict(ckpt["spec"]))
    params = {k: v.to(device) for k, v in ckpt["params"].items()}
    bn_stats = {p: [(m.to(device), v.to(device)) for m, v in stats] for p, stats in ckpt["bn_stats"].items()}
    return model, params, bn_stats, ckpt


def classifier(model, params, bn_stats, n_way):
    """Episodes -> query predictions, in evaluation mode (running statistics, no dropout)."""
    def classify(episode):
        return model.scores(params, episode, n_way, bn_stats, False).argmax(1)
    return classify
