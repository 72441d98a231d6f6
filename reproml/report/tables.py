"""The report's result tables: Table 1 in the paper's shape (a row per method, a column per
setting, ours beside the published figure) and the long form (a row per setting and method, with
paired differences and verdicts), from results/summary.csv's in-domain rows."""

import pandas as pd

from reproml.report.aggregate import fmt, mean_ci, read_episodes, read_summary
from reproml.report.claims import METHOD_NAMES
from reproml.statistics import summarize

# The rows of the paper's Table 1, in its order; methods it does not have follow.
PAPER_ORDER = ("baseline_finetune", "baseline_nearest_neighbor", "matching_net", "matching_net_fce", "meta_lstm")


def method_order(methods):
    return list(PAPER_ORDER) + [m for m in dict.fromkeys(methods) if m not in PAPER_ORDER]


def table_one(summary, paper, comp6248):
    """{"settings": [{name, task}], "rows": [{method, cells: [{ours, published}]}]}: every method of
    the paper (a method not run here reads "not run") and every other method run, each setting a
    column; ours is the mean ± 95% CI over every seed's test episodes. The COMP6248 reproduction's
    meta-learner is a row of its own, with only published cells."""
    settings = list(dict.fromkeys(summary["setting"]))
    tasks = summary.drop_duplicates("setting").set_index("setting")
    columns = [{"name": s, "task": f"{tasks.loc[s, 'n_way']}-way {tasks.loc[s, 'k_shot']}-shot"} for s in settings]
    ran = summary[summary["episodes"] > 0].set_index(["method", "setting"])
    rows = []
    for method in method_order(summary["method"]):
        cells = []
        for setting in settings:
            ref = paper.get((method, setting))
            ours = ran.loc[(method, setting)] if (method, setting) in ran.index else None
            cells.append({"ours": mean_ci(ours["acc_mean"], ours["ci95"]) if ours is not None else
                          ("not run" if method not in ran.index.get_level_values(0) else "–"),
                          "published": mean_ci(ref["mean"], ref["ci95"]) if ref else "–"})
        rows.append({"method": METHOD_NAMES.get(method, method), "cells": cells})
    if any(("meta_lstm", s) in comp6248 for s in settings):
        rows.append({"method": "Meta-learner LSTM, COMP6248 reproduction",
                     "cells": [{"ours": "", "published": fmt(comp6248[("meta_lstm", s)]["mean"])
                                if ("meta_lstm", s) in comp6248 else "–"} for s in settings]})
    return {"settings": columns, "rows": rows}


LONG_HEADER = ["Dataset", "Setting", "Method", "Ours (95% CI)", "Seeds", "Episodes", "SD across seeds",
               "Meta-LSTM minus this, paired (95% CI)", "Paper (95% CI)", "COMP6248", "Verdict vs paper"]
LONG_KEYS = ["dataset", "setting", "method", "ours", "seeds", "episodes", "seed_sd", "paired", "paper", "comp6248",
             "verdict"]


def long_table(summary):
    """A row per (setting, method) of summary.csv, formatted for the report."""
    return [{"dataset": row["dataset"], "setting": row["setting"],
             "method": METHOD_NAMES.get(row["method"], row["method"]),
             "ours": mean_ci(row["acc_mean"], row["ci95"]), "seeds": row["seeds"],
             "paired": mean_ci(row["meta_lstm_minus_this"], row["meta_lstm_minus_this_ci95"], signed=True),
             "episodes": row["episodes"], "seed_sd": fmt(row["seed_mean_std"]),
             "paper": mean_ci(row["paper_mean"], row["paper_ci95"]),
             "comp6248": fmt(row["comp6248_mean"]), "verdict": row["verdict"]}
            for row in summary.to_dict("records")]


def long_table_csv(rows, path):
    pd.DataFrame(rows, columns=LONG_KEYS).set_axis(LONG_HEADER, axis=1).to_csv(path, index=False)


def cross_shot_table(summary, cross_shot_files):
    """Trained-at x tested-at for the 5-way settings (the original tests every model at both shots):
    a row per trained model, a column per 5-way test setting. The matched cells and the models
    trained once for every shot (the baselines' network, the Matching Networks on 5-shot episodes)
    come from summary.csv; a meta-learner at another shot from its cross-shot evaluations, pooled
    over seeds. Empty when the run has fewer than two 5-way settings."""
    five_way = summary[(summary["n_way"] == 5) & (summary["episodes"] > 0) & (summary["image_pool"].fillna("all").astype(str) == "all")]
    tests = list(dict.fromkeys(five_way["setting"]))
    if len(tests) < 2:
        return None
    ran = five_way.set_index(["method", "setting"])
    crossed = {}
    for path in cross_shot_files:
        s = read_summary(path)
        crossed.setdefault((s["trained_setting"], s["setting"]), []).extend(read_episodes(path).values())
    trained_as = {"baseline_finetune": "a 64-class classifier", "baseline_nearest_neighbor": "a 64-class classifier",
                  "matching_net": "5-way 5-shot episodes", "matching_net_fce": "5-way 5-shot episodes"}
    rows = []
    for method in method_order(five_way["method"]):
        if method == "meta_lstm":
            for trained in tests:
                cells = [mean_ci(ran.loc[(method, t), "acc_mean"], ran.loc[(method, t), "ci95"]) if t == trained else
                         mean_ci(*pooled(crossed.get((trained, t)))) for t in tests]
                rows.append({"method": METHOD_NAMES[method], "trained": trained, "cells": cells})
        elif method in trained_as and method in ran.index.get_level_values(0):
            rows.append({"method": METHOD_NAMES[method], "trained": trained_as[method],
                         "cells": [mean_ci(ran.loc[(method, t), "acc_mean"], ran.loc[(method, t), "ci95"])
                                   if (method, t) in ran.index else "–" for t in tests]})
    return {"tests": tests, "rows": rows}


def pooled(accuracies):
    """(mean, 95% CI) over episodes, or (None, None) without any."""
    if not accuracies:
        return None, None
    s = summarize(accuracies)
    return s["acc_mean"], s["ci95"]
