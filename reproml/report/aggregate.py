"""One row per (dataset, setting, method): our numbers over all seeds and test episodes, beside
the published ones, with a verdict against the paper where the comparison means something."""

import csv
import json
from pathlib import Path

import pandas as pd
import yaml

from reproml.atomic import atomic_path
from reproml.errors import UserError
from reproml.statistics import compare_to_published, summarize

COLUMNS = ["dataset", "setting", "n_way", "k_shot", "method", "seeds", "episodes", "acc_mean", "acc_std",
           "acc_var", "ci95", "seed_mean_std", "paper_mean", "paper_ci95", "comp6248_mean", "verdict"]


def published_lookup(path):
    published = yaml.safe_load(Path(path).read_text())
    def table(source):
        return {(r["method"], r["setting"]): r for r in published.get(source, {}).get("results", [])}
    return table("paper"), table("comp6248")


def episode_accuracies(summary_path):
    with open(Path(summary_path).parent / "episodes.csv", newline="") as f:
        return [float(row["accuracy"]) for row in csv.DictReader(f)]


def aggregate(eval_summaries, published_path, out):
    if not eval_summaries:
        raise UserError("aggregate: no evaluation summaries given")
    paper, comp6248 = published_lookup(published_path)
    evals = []
    for path in eval_summaries:
        summary = json.loads(Path(path).read_text())
        summary["accuracies"] = episode_accuracies(path)
        evals.append(summary)
    frame = pd.DataFrame(evals)
    rows = []
    for (dataset, setting, method), group in frame.groupby(["dataset", "setting", "method"], sort=False):
        pooled = summarize([a for accuracies in group["accuracies"] for a in accuracies])
        seed_means = group["acc_mean"]
        first = group.iloc[0]
        row = {"dataset": dataset, "setting": setting, "n_way": int(first["n_way"]), "k_shot": int(first["k_shot"]),
               "method": method, "seeds": len(group), **pooled,
               "seed_mean_std": float(seed_means.std(ddof=1)) if len(group) > 1 else None}
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
    table = pd.DataFrame(rows, columns=COLUMNS)
    with atomic_path(out) as tmp:
        table.to_csv(tmp, index=False, float_format="%.4f")
    return table
