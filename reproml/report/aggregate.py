"""One row per (training dataset, evaluation dataset, setting, method): our numbers over all seeds
and test episodes, beside the published ones, with a verdict against the paper where the
comparison means something. Rows whose evaluation dataset is not the training dataset are
transfer results; a transfer the data cannot support (too few classes or images per class) is a
row whose verdict says why it was skipped."""

from pathlib import Path

import pandas as pd

from reproml.atomic import atomic_path
from reproml.errors import UserError
from reproml.files import read_csv, read_json, read_yaml
from reproml.statistics import compare_to_published, paired_difference, summarize

COLUMNS = ["dataset", "eval_dataset", "setting", "n_way", "k_shot", "image_pool", "method", "seeds", "episodes", "acc_mean", "acc_std",
           "acc_var", "ci95", "seed_mean_std", "meta_lstm_minus_this", "meta_lstm_minus_this_ci95",
           "paper_mean", "paper_ci95", "comp6248_mean", "verdict"]


def fmt(value, digits=2):
    """Numbers for tables: fixed digits, an en dash where there is none."""
    if value is None or pd.isna(value):
        return "–"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def mean_ci(mean, ci95, signed=False):
    """'mean ± 95% CI' as every table and sentence of the report prints it (signed for differences)."""
    if mean is None or pd.isna(mean):
        return "–"
    return (f"{mean:+.2f}" if signed else f"{mean:.2f}") + f" ± {fmt(ci95)}"


def published_lookup(path):
    published = read_yaml(path, "published-results file")
    if not isinstance(published, dict):
        raise UserError(f"{path}: not a published-results file (expected a mapping of sources)")
    def table(source):
        return {(r["method"], r["setting"]): r for r in published.get(source, {}).get("results", [])}
    return table("paper"), table("comp6248")


SUMMARY_KEYS = ("method", "dataset", "setting", "n_way", "k_shot", "train_seed")


def read_summary(path):
    """An evaluation's summary.json, checked to be one."""
    return read_json(path, "evaluation summary", SUMMARY_KEYS)


def in_domain(summary):
    """Whether an evaluation was on its training dataset's own test split: for one summary JSON's
    dict a bool, for summary.csv's frame a mask (transfer results have a table of their own)."""
    return summary.get("eval_dataset", summary["dataset"]) == summary["dataset"]


def read_episodes(summary_path):
    """{episode fingerprint: accuracy} from the episodes.csv beside a summary.json."""
    path = Path(summary_path).parent / "episodes.csv"
    rows = read_csv(path, "evaluation's episodes.csv", ("accuracy", "episode_sha"))
    try:
        return {row["episode_sha"]: float(row["accuracy"]) for row in rows}
    except ValueError:
        raise UserError(f"{path}: not an evaluation's episodes.csv (an accuracy is not a number)") from None


def paired_with_meta_lstm(group, meta_lstm_group):
    """Pair every meta-learner episode (each training seed) with this method's result on the
    same episode, checked by fingerprint: with its run of the same training seed where it has one,
    else with each of its runs (a method without training seeds, or baselines trained with fewer seeds)."""
    ours, theirs = [], []
    for _, meta_row in meta_lstm_group.iterrows():
        same_seed = group[group["train_seed"] == meta_row["train_seed"]]
        partners = same_seed if len(same_seed) else group
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
        summary = read_summary(path)
        summary["episodes_by_sha"] = read_episodes(path)
        evals.append(summary)
    frame = pd.DataFrame(evals)
    for column in ("eval_dataset", "image_pool", "skipped"):  # absent from summaries of older versions
        if column not in frame:
            frame[column] = None
    frame["eval_dataset"] = frame["eval_dataset"].fillna(frame["dataset"])
    frame["train_seed"] = frame["train_seed"].astype("float")  # None for untrained methods -> NaN
    rows = []
    keys = ["dataset", "eval_dataset", "setting"]
    for (dataset, eval_dataset, setting, method), group in frame.groupby(keys + ["method"], sort=False):
        first = group.iloc[0]
        row = {"dataset": dataset, "eval_dataset": eval_dataset, "setting": setting, "n_way": int(first["n_way"]),
               "k_shot": int(first["k_shot"]), "image_pool": first["image_pool"], "method": method,
               "seeds": len(group)}
        if group["skipped"].notna().any():
            rows.append({**row, "episodes": 0, "verdict": f"skipped: {group['skipped'].dropna().iloc[0]}"})
            continue
        pooled = summarize([a for by_sha in group["episodes_by_sha"] for a in by_sha.values()])
        row.update(pooled, seed_mean_std=float(group["acc_mean"].std(ddof=1)) if len(group) > 1 else None)
        same_task = (frame[keys] == [dataset, eval_dataset, setting]).all(axis=1)
        meta_lstm = frame[same_task & (frame["method"] == "meta_lstm") & frame["skipped"].isna()]
        paired = paired_with_meta_lstm(group, meta_lstm) if method != "meta_lstm" and len(meta_lstm) else None
        row["meta_lstm_minus_this"] = paired["diff_mean"] if paired else None
        row["meta_lstm_minus_this_ci95"] = paired["diff_ci95"] if paired else None
        ref = paper.get((method, setting)) if eval_dataset == dataset else None
        row["paper_mean"] = ref["mean"] if ref else None
        row["paper_ci95"] = ref["ci95"] if ref else None
        row["comp6248_mean"] = comp6248[(method, setting)]["mean"] \
            if eval_dataset == dataset and (method, setting) in comp6248 else None
        if eval_dataset != dataset:
            row["verdict"] = "transfer (no published figure)"
        elif ref is None:
            row["verdict"] = "no published figure"
        elif first.get("dataset_format") == "demo":
            row["verdict"] = "not comparable (demo data)"
        else:
            row["verdict"] = compare_to_published(pooled["acc_mean"], pooled["ci95"], ref["mean"], ref["ci95"])
        rows.append(row)
    setting_order = list(dict.fromkeys(frame["setting"]))
    rows.sort(key=lambda r: (r["dataset"], r["eval_dataset"] != r["dataset"], r["eval_dataset"],
                             setting_order.index(r["setting"]), r["method"] != "meta_lstm", r["method"]))
    table = pd.DataFrame(rows, columns=COLUMNS)
    with atomic_path(out) as tmp:
        table.to_csv(tmp, index=False, float_format="%.4f")
    return table
