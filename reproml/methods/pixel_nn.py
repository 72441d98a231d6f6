"""Pixel nearest-neighbour (in the original code's baselines): each query takes the label of the
support image whose raw pixels have the highest cosine similarity with its own. No training."""

import torch.nn.functional as F


def classify(episode):
    support_x, support_y, query_x, _ = episode
    support = F.normalize(support_x.flatten(1), dim=1)
    query = F.normalize(query_x.flatten(1), dim=1)
    return support_y[(query @ support.t()).argmax(1)]
