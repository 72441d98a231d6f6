"""Summary statistics over test episodes, as the paper reports them."""

import math


def summarize(accuracies):
    """Mean, sample std (n - 1), variance and the 95% CI half-width 1.96 * std / sqrt(n)."""
    n = len(accuracies)
    if n < 2:
        raise ValueError("a confidence interval needs at least two episodes")
    mean = sum(accuracies) / n
    var = sum((a - mean) ** 2 for a in accuracies) / (n - 1)
    std = math.sqrt(var)
    return {"acc_mean": mean, "acc_std": std, "acc_var": var, "ci95": 1.96 * std / math.sqrt(n), "episodes": n}
