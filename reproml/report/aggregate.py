"""One row per (dataset, setting, method): our numbers over all seeds and test episodes, beside
the published ones, with a verdict against the paper where the comparison means something."""

import csv
import json
from pathlib import Path

import pandas as pd
import yaml

from reproml.atomic import atomic_path
from reproml.errors import UserError
from reproml.statistics import compare_to_published, paired_difference, summarize

COLUMNS = ["dataset", "setting", "n_way", "k_shot", "method", "seeds", "episodes", "acc_mean", "acc_std",
           "acc_var", "ci95", "seed_mean_std", "meta_lstm_minus_this", "meta_lstm_minus_this_ci95",
           "paper_mean", "paper_ci95", "comp6248_mean", "verdict"]


def published_lookup(path):
    published = yaml.safe_load(Path(path).read_text())
    def table(source):
        return {(r["method"], r["setting"]): r for r in published.get(source, {}).get("results", [])}
    return table("paper"), table("comp6248")


def read_episodes(summary_path):
    """{episode fingerprint: accuracy} from the episodes.csv beside a summary.json."""
    with open(Path(summary_path).parent / "episodes.csv", newline="") as f:
        return {row["episode_sha"]: float(row["accuracy"]) for row in csv.DictReader(f)}


def paired_with_meta_lstm(group, meta_lstm_group):
    """Pair every meta-learner episode (each training seed) with this method's result on the
    same episode, checked by fingerprint; a method without training seeds pairs with every seed."""
    ours, theirs = [], []
    for _, meta_row in meta_lstm_group.iterrows():
        partners = group if group["train_seed"].isna().all() else group[group["train_seed"] == meta_row["train_seed"]]
        for _, row in partners.iterrows():
            if meta_row["episodes_by_sha"].keys() != row["episodes_by_sha"].keys():
                raise UserError(f"{row['setting']}: {row['method']} and meta_lstm were evaluated on different test "
                                "episodes (another eval seed or episode count); they cannot be paired")
            shared = sorted(meta_row["episodes_by_sha"])
            ours += [meta_row["episodes_by_sha"][sha] for sha in shared]
            theirs += [row["episodes_by_sha"][sha] for sha in shared]
    return paired_difference(ours, theirs)


def aggregate(eval_summaries, published_path, out):
    if not eval_summaries:
        raise UserError("aggregate: no evaluation summaries given")
    paper, comp6248 = published_lookup(published_path)
    evals = []
    for path in eval_summaries:
        summary = json.loads(Path(path).read_text())
        summary["episodes_by_sha"] = read_episodes(path)
        evals.append(summary)
    frame = pd.DataFrame(evals)
    frame["train_seed"] = frame["train_seed"].astype("float")  # None for untrained methods -> NaN
    rows = []
    for (dataset, setting, method), group in frame.groupby(["dataset", "setting", "method"], sort=False):
        pooled = summarize([a for by_sha in group["episodes_by_sha"] for a in by_sha.values()])
        seed_means = group["acc_mean"]
        first = group.iloc[0]
        row = {"dataset": dataset, "setting": setting, "n_way": int(first["n_way"]), "k_shot": int(first["k_shot"]),
               "method": method, "seeds": len(group), **pooled,
               "seed_mean_std": float(seed_means.std(ddof=1)) if len(group) > 1 else None}
        meta_lstm = frame[(frame["dataset"] == dataset) & (frame["setting"] == setting) & (frame["method"] == "meta_lstm")]
        paired = paired_with_meta_lstm(group, meta_lstm) if method != "meta_lstm" and len(meta_lstm) else None
        row["meta_lstm_minus_this"] = paired["diff_mean"] if paired else None
        row["meta_lstm_minus_this_ci95"] = paired["diff_ci95"] if paired else None
        ref = paper.get((method, setting))
        row["paper_mean"] = ref["mean"] if ref else None
        row["paper_ci95"] = ref["ci95"] if ref else None
        row["comp6248_mean"] = comp6248[(method, setting)]["mean"] if (method, setting) in comp6248 else None
        if ref is None:
            row["verdict"] = "no published figure"
        elif first.get("dataset_format") == "demo":
            row["verdict"] = "not comparable (demo data)"
        else:
            row["verdict"] = compare_to_published(pooled["acc_mean"], pooled["ci95"], ref["mean"], ref["ci95"])
        rows.append(row)
    setting_order = list(dict.fromkeys(frame["setting"]))
    rows.sort(key=lambda r: (r["dataset"], setting_order.index(r["setting"]), r["method"] != "meta_lstm", r["method"]))
    table = pd.DataFrame(rows, columns=COLUMNS)
    with atomic_path(out) as tmp:
        table.to_csv(tmp, index=False, float_format="%.4f")
    return table
