"""Validation-accuracy curves, one figure per setting, every seed, the selected checkpoint marked."""

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from reproml.atomic import atomic_path  # noqa: E402


def curve_figures(run_files, out):
    """Write `curve_<setting>.png` into `out` for the runs (run.json files) of each setting."""
    runs = {}
    for path in run_files:
        run = json.loads(Path(path).read_text())
        run["curve"] = pd.read_csv(Path(path).parent / "curve.csv")
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
        fig.tight_layout()
        target = Path(out) / f"curve_{setting}.png"
        with atomic_path(target) as tmp:
            fig.savefig(tmp, format="png")
        plt.close(fig)
        written.append(target)
    return written
