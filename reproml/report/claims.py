"""The claims a reader wants judged: the paper's (Ravi & Larochelle 2017) and the COMP6248 student
report's, each with a status and the numbers behind it (one line each in the report's summary box).

Statuses: supported, contradicted, inconclusive, or not judged (with the reason: demo data, a
setting or method this run does not have). How each kind of evidence is read:
- against our own runs on the same test episodes (the meta-learner against a baseline): the paired
  difference, significant when its 95% interval excludes 0; the meta-learner behind at a fraction of
  the paper's budget is inconclusive (every method's budget is cut alike, but they need not converge
  alike), and only at the paper's budget a contradiction; the meta-learner ahead of a method trained
  on a smaller share of its own budget is inconclusive too, since the shares may explain the win;
- between two of our settings (5-shot against 1-shot): the two means' 95% test
  (statistics.compare_to_published, the same test as against a published figure);
- against a published figure (Matching Networks, which this run may not have): the same 95% test;
  a shortfall at a fraction of the paper's training budget is inconclusive, since the budget may
  explain it, and only at the paper's budget a contradiction.
On demo data nothing is judged: its numbers are shown, but they say nothing about miniImagenet.
"""

import math

import pandas as pd

from reproml.report.aggregate import mean_ci
from reproml.statistics import compare_to_published

SUPPORTED, CONTRADICTED, INCONCLUSIVE, NOT_JUDGED = "supported", "contradicted", "inconclusive", "not judged"
BASELINES = ("baseline_nearest_neighbor", "baseline_finetune")
MATCHING_NETS = ("matching_net", "matching_net_fce")
METHOD_NAMES = {"meta_lstm": "Meta-learner LSTM", "baseline_nearest_neighbor": "Baseline nearest-neighbour",
                "baseline_finetune": "Baseline fine-tune", "pixel_nearest_neighbor": "Pixel nearest-neighbour",
                "matching_net": "Matching Networks", "matching_net_fce": "Matching Networks FCE"}


def paired_outcome(diff, ci95):
    """'better', 'worse' or 'no significant difference' for the meta-learner, from a paired difference."""
    if diff - ci95 > 0:
        return "better"
    if diff + ci95 < 0:
        return "worse"
    return "no significant difference"


def find_row(rows, n_way, k_shot, method):
    """The summary row of an `n_way` `k_shot` setting for `method` under the original protocol (every
    image in play, not a fixed image pool), or None."""
    return next((r for r in rows if r["n_way"] == n_way and r["k_shot"] == k_shot and r["method"] == method
                 and (pd.isna(r.get("image_pool")) or r["image_pool"] == "all")), None)


def paired_text(row):
    """'meta-learner minus this' of a summary row as printed, or None where it was not measured."""
    diff = row.get("meta_lstm_minus_this") if row else None
    if diff is None or math.isnan(diff):
        return None
    return mean_ci(diff, row["meta_lstm_minus_this_ci95"], signed=True)


def published(paper, method, setting):
    ref = paper.get((method, setting))
    return mean_ci(ref["mean"], ref["ci95"]) if ref else "not published"


def budget_text(fraction):
    return "the paper's budget" if fraction >= 1 else f"{100 * fraction:.3g}% of the paper's budget"


def claim(source, text, status, numbers, reason=""):
    return {"source": source, "claim": text, "status": status, "numbers": numbers, "reason": reason}


def by_name(claims):
    """The claims of `assess_claims` by their names (CLAIMS)."""
    return dict(zip(CLAIMS, claims))


def against_published(ours, ref, fraction, want):
    """The status of 'ours is at least (`want` = 'consistent') or above (`want` = 'higher') a published
    figure': a shortfall below the paper's budget is inconclusive."""
    verdict = compare_to_published(ours["acc_mean"], ours["ci95"], ref["mean"], ref["ci95"])
    if verdict == "higher" or verdict == want:
        return SUPPORTED
    if verdict == "lower" and fraction >= 1:
        return CONTRADICTED
    return INCONCLUSIVE


def less_trained(methods, fraction, method_fractions):
    """The methods of `methods` trained on a smaller share of their paper's budget than the
    meta-learner's `fraction` (rounded, so that one factor applied to different budgets counts as equal)."""
    return [m for m in methods if round(method_fractions.get(m, fraction), 4) < round(fraction, 4)]


def paired_status(outcomes, fraction, methods, method_fractions, competitive=False):
    """(status, reason) of a claim from the meta-learner's paired outcomes against `methods`: supported
    where it is better than all (or, for `competitive`, worse than none); where it is worse than one,
    contradicted at the paper's budget and inconclusive below it; inconclusive rather than supported
    where one of them had a smaller share of its budget than the meta-learner."""
    if "worse" in outcomes:
        return CONTRADICTED if fraction >= 1 else INCONCLUSIVE, ""
    fewer = less_trained(methods, fraction, method_fractions)
    if fewer:
        return INCONCLUSIVE, (f"{' and '.join(METHOD_NAMES[m] for m in fewer)} trained on a smaller share of "
                              "their budget than the meta-learner")
    return SUPPORTED if competitive or set(outcomes) == {"better"} else INCONCLUSIVE, ""


def budgets_text(fraction, methods, method_fractions):
    """'at F' of the meta-learner's budget, then the share of each method trained on less."""
    return f" at {budget_text(fraction)}" + "".join(
        f", {METHOD_NAMES[m]} at {100 * method_fractions[m]:.3g}% of theirs"
        for m in less_trained(methods, fraction, method_fractions))


def against_our_matching_nets(rows, k_shot, fraction, method_fractions, competitive):
    """(status, numbers, reason) of the meta-learner against the Matching Networks of this run on the
    same episodes, or None where this run has none."""
    ran = [(m, find_row(rows, 5, k_shot, m)) for m in MATCHING_NETS if paired_text(find_row(rows, 5, k_shot, m))]
    if not ran:
        return None
    methods = [m for m, _ in ran]
    outcomes = [paired_outcome(r["meta_lstm_minus_this"], r["meta_lstm_minus_this_ci95"]) for _, r in ran]
    status, reason = paired_status(outcomes, fraction, methods, method_fractions, competitive)
    numbers = ("; ".join(f"meta-learner minus {METHOD_NAMES[m]} {paired_text(r)} (paired)" for m, r in ran)
               + budgets_text(fraction, methods, method_fractions))
    return status, numbers, reason


def against_matching_nets(rows, paper, fractions, method_fractions, k_shot, text, competitive):
    """The meta-learner against Matching Networks in 5-way `k_shot`: paired where this run has them,
    else against the published figures (`competitive`: at least as good as Matching Networks; otherwise
    better than both variants)."""
    ours = find_row(rows, 5, k_shot, "meta_lstm")
    if ours is None:
        return claim("Paper", text, NOT_JUDGED, "", f"no 5-way {k_shot}-shot meta-learner in this run")
    setting, fraction = f"5w{k_shot}s", fractions.get(ours["setting"], 1.0)
    ours_against_ours = against_our_matching_nets(rows, k_shot, fraction, method_fractions, competitive)
    if ours_against_ours:
        return claim("Paper", text, *ours_against_ours)
    references = ["matching_net"] if competitive else list(MATCHING_NETS)
    statuses = [against_published(ours, paper[(m, setting)], fraction, "consistent" if competitive else "higher")
                for m in references]
    status = CONTRADICTED if CONTRADICTED in statuses else SUPPORTED if set(statuses) == {SUPPORTED} else INCONCLUSIVE
    numbers = (f"ours {mean_ci(ours['acc_mean'], ours['ci95'])} at {budget_text(fraction)} against the published "
               + " and ".join(published(paper, m, setting) for m in references) + " (Matching Networks not run here)")
    return claim("Paper", text, status, numbers)


def one_shot_vs_matching_nets(rows, paper, fractions, method_fractions):
    text = (f"5-way 1-shot: the meta-learner LSTM is competitive with Matching Networks "
            f"({published(paper, 'meta_lstm', '5w1s')} against {published(paper, 'matching_net', '5w1s')})")
    return against_matching_nets(rows, paper, fractions, method_fractions, 1, text, competitive=True)


def five_shot_vs_baselines(rows, paper, fractions, method_fractions):
    text = (f"5-way 5-shot: the meta-learner LSTM is better than every baseline (paper: "
            f"{published(paper, 'meta_lstm', '5w5s')} against {published(paper, 'baseline_nearest_neighbor', '5w5s')} "
            f"for nearest-neighbour and {published(paper, 'baseline_finetune', '5w5s')} for fine-tuning)")
    ours = find_row(rows, 5, 5, "meta_lstm")
    if ours is None:
        return claim("Paper", text, NOT_JUDGED, "", "no 5-way 5-shot meta-learner in this run")
    fraction = fractions.get(ours["setting"], 1.0)
    compared = {m: find_row(rows, 5, 5, m) for m in BASELINES}
    missing = [METHOD_NAMES[m] for m, r in compared.items() if paired_text(r) is None]
    if missing:
        return claim("Paper", text, NOT_JUDGED, "", f"{' and '.join(missing)} not run")
    outcomes = [paired_outcome(r["meta_lstm_minus_this"], r["meta_lstm_minus_this_ci95"]) for r in compared.values()]
    numbers = "; ".join(f"meta-learner minus {METHOD_NAMES[m]} {paired_text(r)} ({outcome})"
                        for (m, r), outcome in zip(compared.items(), outcomes))
    status, reason = paired_status(outcomes, fraction, BASELINES, method_fractions)
    return claim("Paper", text, status, numbers + f" (paired, {compared[BASELINES[0]]['episodes']} test episodes,"
                 + budgets_text(fraction, BASELINES, method_fractions) + ")", reason)


def five_shot_vs_matching_nets(rows, paper, fractions, method_fractions):
    text = (f"5-way 5-shot: the meta-learner LSTM outperforms Matching Networks ({published(paper, 'meta_lstm', '5w5s')} "
            f"against {published(paper, 'matching_net', '5w5s')}, FCE {published(paper, 'matching_net_fce', '5w5s')})")
    return against_matching_nets(rows, paper, fractions, method_fractions, 5, text, competitive=False)


def image_pool_explanation(image_pool):
    text = ("Its lower accuracy is due to drawing fresh images for every episode; a fixed pool of images per "
            "class, as the public loaders had, scores higher")
    pairs = [a for a in image_pool if a["n_way"] == 5]
    if not pairs:
        return claim("COMP6248", text, NOT_JUDGED, "", "no 5-way setting with a fixed image pool in this run")
    outcomes = {a["outcome"] for a in pairs}
    status = SUPPORTED if outcomes == {"better"} else CONTRADICTED if outcomes == {"worse"} else INCONCLUSIVE
    numbers = "; ".join(f"{a['k_shot']}-shot: pool of {a['pool']} minus all images {a['difference']} (paired)"
                        for a in pairs)
    return claim("COMP6248", text, status, numbers)


def more_shots(rows, comp6248, n_way, fewer, more, text, if_equal):
    """The student report's ordering of two settings' meta-learners, `more` shots not above `fewer`:
    contradicted where ours is significantly higher with more shots, supported where it is lower,
    `if_equal` where the two do not differ significantly."""
    theirs = {k: comp6248.get(("meta_lstm", f"{n_way}w{k}s"), {}).get("mean") for k in (fewer, more)}
    text = text.format(**{name: "–" if theirs[k] is None else f"{theirs[k]:.2f}"
                          for name, k in (("fewer", fewer), ("more", more))})
    low, high = find_row(rows, n_way, fewer, "meta_lstm"), find_row(rows, n_way, more, "meta_lstm")
    if low is None or high is None:
        return claim("COMP6248", text, NOT_JUDGED, "",
                     f"this run lacks the {n_way}-way {fewer}-shot or {more}-shot meta-learner")
    verdict = compare_to_published(high["acc_mean"], high["ci95"], low["acc_mean"], low["ci95"])
    numbers = (f"ours {more}-shot {mean_ci(high['acc_mean'], high['ci95'])} against {fewer}-shot "
               f"{mean_ci(low['acc_mean'], low['ci95'])}")
    return claim("COMP6248", text, {"higher": CONTRADICTED, "lower": SUPPORTED}.get(verdict, if_equal), numbers)


CLAIMS = ("one_shot_vs_matching_nets", "five_shot_vs_baselines", "five_shot_vs_matching_nets", "image_pool",
          "five_shots_below_one", "ten_way_more_shots")


def assess_claims(rows, paper, comp6248, demo, fractions=None, image_pool=(), method_fractions=None):
    """Every claim with its status and numbers. `rows` are summary.csv's in-domain records,
    `fractions` the meta-learner's training budget per setting as a fraction of the paper's,
    `method_fractions` the same for each other trained method (a method missing there counts as
    trained on the meta-learner's share), `image_pool` the image-pool ablation
    (analyses.image_pool_ablation)."""
    fractions, method_fractions = fractions or {}, method_fractions or {}
    claims = [
        one_shot_vs_matching_nets(rows, paper, fractions, method_fractions),
        five_shot_vs_baselines(rows, paper, fractions, method_fractions),
        five_shot_vs_matching_nets(rows, paper, fractions, method_fractions),
        image_pool_explanation(list(image_pool)),
        more_shots(rows, comp6248, 5, 1, 5, "5-way 5-shot scores below 5-way 1-shot (its {more} against {fewer})",
                   if_equal=INCONCLUSIVE),
        more_shots(rows, comp6248, 10, 10, 20, "10-way: 20 shots do not help over 10 (its {more} against {fewer})",
                   if_equal=SUPPORTED),
    ]
    if demo:
        for c in claims:
            if c["status"] != NOT_JUDGED:
                c["status"], c["reason"] = NOT_JUDGED, "demo data"
    return claims
