"""The student report's two analyses, measured: does a fixed image pool (as the public loaders
had) explain its lower accuracy, and how far does a trained meta-learner transfer to another
dataset?"""

from reproml.report.aggregate import in_domain, mean_ci, read_episodes, read_summary
from reproml.report.claims import METHOD_NAMES, paired_outcome
from reproml.statistics import paired_difference, summarize

POOL_VERDICTS = {
    "better": "the fixed pool scored higher on the same test episodes, as the student report's explanation "
              "(fresh images per episode lower accuracy) would have it",
    "worse": "the fixed pool scored lower on the same test episodes: the opposite of the student report's "
             "explanation (fresh images per episode lower accuracy)",
    "no significant difference": "no significant difference on the same test episodes: these runs do not support "
                                 "the student report's explanation (fresh images per episode lower accuracy)",
}


def image_pool_partners(settings):
    """(setting with image_pool all, setting with a fixed pool) for every pair of settings that
    differ in image_pool alone."""
    def rest(setting):
        return {key: value for key, value in setting.items() if key != "image_pool"}
    return [(free, pooled) for pooled, p in settings.items() if p["image_pool"] != "all"
            for free, f in settings.items() if f["image_pool"] == "all" and rest(f) == rest(p)]


def meta_lstm_episodes(eval_files, setting):
    """{train seed: {episode fingerprint: accuracy}} of the in-domain meta-learner evaluations of `setting`."""
    by_seed = {}
    for path in eval_files:
        summary = read_summary(path)
        if summary["method"] == "meta_lstm" and summary["setting"] == setting and in_domain(summary):
            by_seed[summary["train_seed"]] = read_episodes(path)
    return by_seed


def image_pool_ablation(settings, eval_files):
    """Per pair of settings: both results and their paired difference (pool minus all) over the
    test episodes of every training seed the two share."""
    ablation = []
    for free, pooled in image_pool_partners(settings):
        free_runs, pooled_runs = meta_lstm_episodes(eval_files, free), meta_lstm_episodes(eval_files, pooled)
        ours, theirs = [], []
        for seed in sorted(free_runs.keys() & pooled_runs.keys()):
            shared = sorted(free_runs[seed].keys() & pooled_runs[seed].keys())
            ours += [pooled_runs[seed][sha] for sha in shared]
            theirs += [free_runs[seed][sha] for sha in shared]
        if len(ours) < 2:
            continue
        diff = paired_difference(ours, theirs)
        outcome = paired_outcome(diff["diff_mean"], diff["diff_ci95"])
        ablation.append({"free": free, "pooled": pooled, "pool": settings[pooled]["image_pool"],
                         "n_way": settings[free]["n_way"], "k_shot": settings[free]["k_shot"],
                         "free_acc": summary_text(theirs), "pooled_acc": summary_text(ours),
                         "difference": mean_ci(diff["diff_mean"], diff["diff_ci95"], signed=True),
                         "pairs": diff["pairs"], "outcome": outcome, "verdict": POOL_VERDICTS[outcome]})
    return ablation


def summary_text(accuracies):
    s = summarize(accuracies)
    return mean_ci(s["acc_mean"], s["ci95"])


def transfer_table(summary):
    """Transfer rows beside the same (setting, method) evaluated on its training dataset."""
    at_home = in_domain(summary)
    home_rows = summary[at_home].set_index(["dataset", "setting", "method"])
    rows = []
    for row in summary[~at_home].to_dict("records"):
        key = (row["dataset"], row["setting"], row["method"])
        home = home_rows.loc[key] if key in home_rows.index else None
        skipped = str(row["verdict"]).startswith("skipped: ")
        rows.append({
            "trained_on": row["dataset"], "evaluated_on": row["eval_dataset"], "setting": row["setting"],
            "method": METHOD_NAMES.get(row["method"], row["method"]),
            "home": mean_ci(home["acc_mean"], home["ci95"]) if home is not None else "–",
            "transfer": "–" if skipped else mean_ci(row["acc_mean"], row["ci95"]),
            "change": "–" if skipped or home is None else f"{row['acc_mean'] - home['acc_mean']:+.2f}",
            "paired": "–" if skipped else mean_ci(row["meta_lstm_minus_this"], row["meta_lstm_minus_this_ci95"], signed=True),
            "note": row["verdict"].removeprefix("skipped: ") if skipped else "",
        })
    return rows
