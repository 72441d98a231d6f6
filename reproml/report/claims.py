"""The paper's two claims about 5-way miniImagenet, checked against our numbers.

1. 1-shot: the meta-learner LSTM is competitive with Matching Networks. We do not run Matching
   Networks, so our meta-learner's mean is tested against their published one (both 95% CIs).
2. 5-shot: the meta-learner LSTM is better than every baseline. Every baseline is evaluated on
   the meta-learner's test episodes, so each comparison is a paired difference: "better" when
   its 95% CI lies above 0.
"""

import math

import pandas as pd

from reproml.report.aggregate import mean_ci
from reproml.statistics import compare_to_published

BASELINES = ("baseline_nearest_neighbor", "baseline_finetune")
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


def published(paper, method, setting):
    ref = paper.get((method, setting))
    return mean_ci(ref["mean"], ref["ci95"]) if ref else "not published"


def find_row(rows, k_shot, method):
    """The summary row of a 5-way `k_shot` setting for `method` under the original protocol (every
    image in play, not a fixed image pool), or None."""
    return next((r for r in rows if r["n_way"] == 5 and r["k_shot"] == k_shot and r["method"] == method
                 and (pd.isna(r.get("image_pool")) or r["image_pool"] == "all")), None)


def against_baselines(rows, k_shot):
    """Paired comparisons of the meta-learner with each baseline in the 5-way `k_shot` setting."""
    comparisons = []
    for method in BASELINES:
        row = find_row(rows, k_shot, method)
        if row is None or row["meta_lstm_minus_this"] is None or math.isnan(row["meta_lstm_minus_this"]):
            comparisons.append((method, None, "not run"))
            continue
        diff, ci95 = row["meta_lstm_minus_this"], row["meta_lstm_minus_this_ci95"]
        comparisons.append((method, mean_ci(diff, ci95, signed=True), paired_outcome(diff, ci95)))
    return comparisons


def describe_baselines(comparisons):
    return "; ".join(f"{METHOD_NAMES[m]}: {text} points ({outcome})" if text else f"{METHOD_NAMES[m]}: not run"
                     for m, text, outcome in comparisons)


def one_shot_claim(rows, paper):
    claim = (f"5-way 1-shot: the meta-learner LSTM is competitive with Matching Networks (paper: "
             f"{published(paper, 'meta_lstm', '5w1s')} against {published(paper, 'matching_net', '5w1s')}).")
    ours = find_row(rows, 1, "meta_lstm")
    matching = paper.get(("matching_net", "5w1s"))
    if ours is None or matching is None:
        return {"claim": claim, "status": "not tested", "evidence": "This run has no 5-way 1-shot meta-learner."}
    verdict = compare_to_published(ours["acc_mean"], ours["ci95"], matching["mean"], matching["ci95"])
    status = "not supported" if verdict == "lower" else "supported"
    evidence = (f"Our meta-learner: {mean_ci(ours['acc_mean'], ours['ci95'])} over {ours['episodes']} test episodes "
                f"({ours['seeds']} seed{'s' if ours['seeds'] > 1 else ''}); against the published Matching Networks "
                f"figure it is {verdict} at 95%. Against our baselines on the same episodes (meta-learner minus "
                f"baseline): {describe_baselines(against_baselines(rows, 1))}.")
    return {"claim": claim, "status": status, "evidence": evidence}


def five_shot_claim(rows, paper):
    claim = (f"5-way 5-shot: the meta-learner LSTM is better than every baseline (paper: "
             f"{published(paper, 'meta_lstm', '5w5s')} against "
             f"{published(paper, 'baseline_nearest_neighbor', '5w5s')} for nearest-neighbour and "
             f"{published(paper, 'baseline_finetune', '5w5s')} for fine-tuning).")
    ours = find_row(rows, 5, "meta_lstm")
    if ours is None:
        return {"claim": claim, "status": "not tested", "evidence": "This run has no 5-way 5-shot meta-learner."}
    comparisons = against_baselines(rows, 5)
    outcomes = [outcome for _, _, outcome in comparisons]
    if "worse" in outcomes:
        status = "contradicted"
    elif "not run" in outcomes:
        status = "not tested"
    elif all(outcome == "better" for outcome in outcomes):
        status = "supported"
    else:
        status = "inconclusive"
    evidence = (f"Our meta-learner: {mean_ci(ours['acc_mean'], ours['ci95'])} over {ours['episodes']} test "
                f"episodes. Meta-learner minus baseline on the same episodes: {describe_baselines(comparisons)}.")
    return {"claim": claim, "status": status, "evidence": evidence}


def assess_claims(rows, paper, demo):
    """The claims with a status (supported, not supported, contradicted, inconclusive, not tested)
    and the numbers behind it. On demo data the numbers are shown but the claims are not judged."""
    claims = [one_shot_claim(rows, paper), five_shot_claim(rows, paper)]
    if demo:
        for claim in claims:
            if claim["status"] != "not tested":
                claim["status"] = "not judged (demo data)"
    return claims
