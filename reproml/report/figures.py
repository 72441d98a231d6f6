"""The report's figures: every method's accuracy beside the published figures (Table 1 as a picture),
validation-accuracy curves (every seed, the selected checkpoint marked) and the meta-learner's gate
values across inner updates, one of each per setting."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from reproml.atomic import atomic_path  # noqa: E402
from reproml.evaluation.gates import GATE_COLUMNS  # noqa: E402
from reproml.files import read_frame  # noqa: E402
from reproml.report.aggregate import COLUMNS as SUMMARY_COLUMNS  # noqa: E402
from reproml.report.aggregate import in_domain, published_lookup, read_summary  # noqa: E402
from reproml.report.claims import METHOD_NAMES  # noqa: E402
from reproml.report.tables import method_order  # noqa: E402
from reproml.training.run_log import read_curve, read_run  # noqa: E402


def save(fig, target, layout=True):
    if layout:
        fig.tight_layout()
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return target


def accuracy_figure(summary_csv, published_path, out):
    """Write `accuracy.png` into `out`: per setting, every method's test accuracy with its 95% CI
    (ours), beside the paper's published figure and the COMP6248 reproduction's."""
    summary = read_frame(summary_csv, "summary.csv", SUMMARY_COLUMNS)
    summary = summary[in_domain(summary) & (summary["episodes"] > 0)]
    paper, comp6248 = published_lookup(published_path)
    settings = list(dict.fromkeys(summary["setting"]))
    methods = [m for m in method_order(summary["method"])
               if m in set(summary["method"]) or any((m, s) in paper for s in settings)]
    fig, axes = plt.subplots(1, len(settings), figsize=(2.6 + 2.4 * len(settings), 0.9 + 0.42 * len(methods)),
                             dpi=120, sharey=True, squeeze=False)
    for ax, setting in zip(axes[0], settings):
        rows = summary[summary["setting"] == setting].set_index("method")
        for y, method in enumerate(methods):
            if method in rows.index:
                ax.errorbar(rows.loc[method, "acc_mean"], y, xerr=rows.loc[method, "ci95"], fmt="o", color="C0",
                            capsize=3, label="ours")
            if (method, setting) in paper:
                ref = paper[(method, setting)]
                ax.errorbar(ref["mean"], y + 0.25, xerr=ref["ci95"], fmt="D", mfc="white", color="C1", capsize=3,
                            label="paper")
            if (method, setting) in comp6248:
                ax.plot(comp6248[(method, setting)]["mean"], y - 0.25, "^", color="C2", label="COMP6248")
        n_way = int(rows["n_way"].iloc[0])
        ax.axvline(100 / n_way, color="grey", lw=1, ls="--")
        ax.set_title(f"{setting} ({n_way}-way {int(rows['k_shot'].iloc[0])}-shot)", fontsize=9)
        ax.set_xlabel("test accuracy (%)", fontsize=8)
        ax.grid(alpha=0.3, axis="x")
        ax.tick_params(labelsize=8)
    axes[0][0].set_yticks(range(len(methods)), [METHOD_NAMES.get(m, m) for m in methods])
    axes[0][0].invert_yaxis()
    handles = {label: handle for ax in axes[0] for handle, label in zip(*ax.get_legend_handles_labels())}
    labels = [label for label in ("ours", "paper", "COMP6248") if label in handles]
    fig.legend([handles[label] for label in labels], labels, loc="upper center", ncol=3, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / fig.get_figheight()))
    return save(fig, Path(out) / "accuracy.png", layout=False)


def curve_figures(run_files, out):
    """Write `curve_<setting>.png` into `out` for the runs (run.json files) of each setting."""
    runs = {}
    for path in run_files:
        run = read_run(path)
        run["curve"] = read_curve(path)
        runs.setdefault(run["setting"], []).append(run)
    written = []
    for setting, setting_runs in runs.items():
        fig, ax = plt.subplots(figsize=(6, 3.6), dpi=120)
        for run in sorted(setting_runs, key=lambda r: r["seed"]):
            curve = run["curve"]
            line, = ax.plot(curve["iteration"], curve["val_acc"], marker="o", ms=3, label=f"seed {run['seed']}: validation")
            ax.fill_between(curve["iteration"], curve["val_acc"] - curve["val_ci95"],
                            curve["val_acc"] + curve["val_ci95"], color=line.get_color(), alpha=0.15)
            ax.plot(curve["iteration"], curve["train_acc"], ls=":", color=line.get_color(),
                    label=f"seed {run['seed']}: meta-training episodes")
            ax.plot([run["best_iteration"]], [run["best_val_acc"]], marker="*", ms=14, color=line.get_color(),
                    markeredgecolor="black", ls="none")
        n_way = setting_runs[0]["settings"]["n_way"]
        ax.axhline(100 / n_way, color="grey", lw=1, ls="--", label=f"chance ({100 / n_way:.0f}%)")
        ax.set_xlabel("meta-training episodes")
        ax.set_ylabel("accuracy (%)")
        ax.set_title(f"{setting}: validation accuracy (95% CI band; star = selected checkpoint)", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
        written.append(save(fig, Path(out) / f"curve_{setting}.png"))
    return written


def gate_figures(gate_files, out):
    """Write `gates_<setting>.png` into `out`, like the paper's Figure 2: per learner layer, the mean
    input and forget gate at each inner update, over the test episodes (and seeds) of a setting.

    Each gates.csv sits beside the summary.json of its evaluation, which names the setting."""
    tables = {}
    for path in gate_files:
        setting = read_summary(Path(path).parent / "summary.json")["setting"]
        tables.setdefault(setting, []).append(read_frame(path, "gates.csv", GATE_COLUMNS))
    written = []
    for setting, frames in tables.items():
        gates = pd.concat(frames)
        gates["weighted"] = gates["mean"] * gates["episodes"]
        pooled = gates.groupby(["gate", "layer", "update"], sort=False)[["weighted", "episodes"]].sum()
        pooled = (pooled["weighted"] / pooled["episodes"]).rename("mean").reset_index()
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), dpi=120)
        for ax, gate in zip(axes, ("input", "forget")):
            for layer, rows in pooled[pooled["gate"] == gate].groupby("layer", sort=False):
                ax.plot(rows["update"], rows["mean"], marker="o", ms=3, label=layer,
                        ls="--" if layer.startswith("bn") else "-")
            ax.set_xlabel("inner update t")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_title(f"{gate} gate" + (" (step size on -gradient)" if gate == "input" else
                                          " (1 = keep the parameter)"), fontsize=9)
            ax.grid(alpha=0.3)
        axes[0].set_ylabel("mean gate value")
        axes[1].legend(fontsize=7, ncol=3, loc="best")
        seeds = len(frames)
        fig.suptitle(f"{setting}: gate values per learner layer, mean over {int(frames[0]['episodes'].iloc[0])} test "
                     f"episodes" + (f" x {seeds} seeds" if seeds > 1 else ""), fontsize=9)
        written.append(save(fig, Path(out) / f"gates_{setting}.png"))
    return written
