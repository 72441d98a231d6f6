"""Nearest-neighbour baselines of the original code: each query takes the label of the single
support image whose representation has the highest cosine similarity with its own.

- pixel nearest-neighbour: the raw pixels;
- baseline-nearest-neighbour: the 1600-d features of the pre-trained network (eval mode).
"""

import torch.nn.functional as F


def cosine_nearest_neighbor(support, support_y, query):
    """The label of each query's most cosine-similar support vector."""
    support, query = F.normalize(support.flatten(1), dim=1), F.normalize(query.flatten(1), dim=1)
    return support_y[(query @ support.t()).argmax(1)]


def pixel_nearest_neighbor(episode):
    support_x, support_y, query_x, _ = episode
    return cosine_nearest_neighbor(support_x, support_y, query_x)


def feature_nearest_neighbor(pretrained):
    """A classifier of episodes by cosine 1-NN on `pretrained.features`."""
    def classify(episode):
        support_x, support_y, query_x, _ = episode
        return cosine_nearest_neighbor(pretrained.features(support_x), support_y, pretrained.features(query_x))
    return classify
