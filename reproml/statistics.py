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


def compare_to_published(mean, ci95, published_mean, published_ci95):
    """'consistent', 'lower' or 'higher' at the 95% level.

    A two-sided z-test of the difference of two independent means, each known with a 95% CI
    half-width h = 1.96 se: the difference is significant when |d| > 1.96 sqrt(se1^2 + se2^2),
    that is when |d| > sqrt(h1^2 + h2^2)."""
    margin = math.sqrt(ci95 ** 2 + published_ci95 ** 2)
    difference = mean - published_mean
    if abs(difference) <= margin:
        return "consistent"
    return "lower" if difference < 0 else "higher"


def paired_difference(a, b):
    """Mean of a_i - b_i over paired episodes and its 95% CI half-width 1.96 * sd(d) / sqrt(n)."""
    if len(a) != len(b):
        raise ValueError(f"paired samples differ in length ({len(a)} and {len(b)})")
    d = summarize([x - y for x, y in zip(a, b)])
    return {"diff_mean": d["acc_mean"], "diff_ci95": d["ci95"], "pairs": d["episodes"]}
