"""The reproducibility report: HTML (self-contained, autoescaped) and LaTeX (escaped), rendered
from the Jinja templates in report/templates, plus the main table as CSV and booktabs LaTeX."""

import base64
import csv
import datetime
import importlib.metadata
import json
import platform
import shutil
import subprocess
from pathlib import Path

import jinja2
import pandas as pd
from markupsafe import Markup

from reproml.atomic import atomic_path, write_text
from reproml.data.prepared import read_manifest
from reproml.report.aggregate import fmt, in_domain, mean_ci, published_lookup
from reproml.report.analyses import image_pool_ablation, transfer_table
from reproml.report.claims import METHOD_NAMES, assess_claims
from reproml.settings import DEVIATIONS, TaskSettings

PACKAGES = ("torch", "torchvision", "numpy", "pandas", "matplotlib", "jinja2", "pillow", "snakemake", "reproml")
LATEX_SPECIALS = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  "<": r"\textless{}", ">": r"\textgreater{}"}


def latex_escape(value):
    if isinstance(value, Markup):
        return str(value)
    return "".join(LATEX_SPECIALS.get(ch, ch) for ch in str(value))


def package_versions():
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return {"python": platform.python_version(), **versions}


def git_commit():
    try:
        result = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10,
                                cwd=Path(__file__).parent)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=10, cwd=Path(__file__).parent).stdout.strip()
        return result.stdout.strip() + (" (with uncommitted changes)" if dirty else "") if result.returncode == 0 \
            else "unknown (not a git checkout)"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown (git not available)"


def rule_times(benchmarks):
    """Total wall seconds and job count per Snakemake rule, from benchmarks/<rule>/... .tsv files."""
    times = {}
    for path in sorted(Path(benchmarks).rglob("*.tsv")):
        rule = path.relative_to(benchmarks).parts[0].removesuffix(".tsv")
        seconds = float(next(csv.DictReader(open(path), delimiter="\t"))["s"])
        total, jobs = times.get(rule, (0.0, 0))
        times[rule] = (total + seconds, jobs + 1)
    return [{"rule": rule, "seconds": total, "jobs": jobs} for rule, (total, jobs) in times.items()]


def main_table(summary):
    rows = []
    for row in summary.to_dict("records"):
        rows.append({"dataset": row["dataset"], "setting": row["setting"],
                     "method": METHOD_NAMES.get(row["method"], row["method"]),
                     "ours": mean_ci(row["acc_mean"], row["ci95"]), "seeds": row["seeds"],
                     "paired": mean_ci(row["meta_lstm_minus_this"], row["meta_lstm_minus_this_ci95"], signed=True),
                     "episodes": row["episodes"], "seed_sd": fmt(row["seed_mean_std"]),
                     "paper": mean_ci(row["paper_mean"], row["paper_ci95"]),
                     "comp6248": fmt(row["comp6248_mean"]), "verdict": row["verdict"]})
    return rows


TABLE_HEADER = ["Dataset", "Setting", "Method", "Ours (95% CI)", "Seeds", "Episodes", "SD across seeds",
                "Meta-LSTM minus this, paired (95% CI)", "Paper (95% CI)", "COMP6248", "Verdict vs paper"]
TABLE_KEYS = ["dataset", "setting", "method", "ours", "seeds", "episodes", "seed_sd", "paired", "paper", "comp6248",
              "verdict"]


def booktabs(rows):
    lines = [r"\begin{tabular}{" + "l" * 3 + "r" * 7 + "l}", r"\toprule",
             " & ".join(latex_escape(h) for h in TABLE_HEADER) + r" \\", r"\midrule"]
    lines += [" & ".join(latex_escape(row[k]).replace("±", r"$\pm$") for k in TABLE_KEYS) + r" \\" for row in rows]
    return "\n".join(lines + [r"\bottomrule", r"\end{tabular}", ""])


def run_details(run_files, evals):
    """Per setting: its hyperparameters and, per seed, the meta-learner's selection and test result."""
    evals = {(e["setting"], e["train_seed"]): e for e in evals if e["method"] == "meta_lstm"}
    details = {}
    for path in run_files:
        run = json.loads(Path(path).read_text())
        e = evals.get((run["setting"], run["seed"]), {})
        settings = TaskSettings.from_dict(run["settings"])
        details.setdefault(run["setting"], {"settings": settings, "inner_steps": settings.inner_steps,
                                            "val_every": run["val_every"], "val_episodes": run["val_episodes"],
                                            "iterations": run["iterations"], "image_pool": run.get("image_pool", "all"),
                                            "seeds": []})
        details[run["setting"]]["seeds"].append({
            "seed": run["seed"], "best_iteration": run["best_iteration"], "best_val_acc": fmt(run["best_val_acc"]),
            "test": mean_ci(e.get("acc_mean"), e.get("ci95")), "device": run["device"],
            "train_s": fmt(run["train_s_per_episode"], 3), "eval_s": fmt(e.get("s_per_episode"), 3)})
    return details


def baseline_details(pretrain_files, evals):
    """The pre-trained networks, and the fine-tuning point chosen per (setting, seed)."""
    pretraining = []
    for path in pretrain_files:
        run = json.loads(Path(path).read_text())
        pretraining.append({"seed": run["seed"], "steps": run["steps"], "batch_size": run["batch_size"], "lr": run["lr"],
                            "best_step": run["best_step"], "best_val_acc": fmt(run["best_val_acc"]),
                            "val": f"every {run['val_every']} steps over {run['val_episodes']} episodes",
                            "device": run["device"], "s_per_step": fmt(run["train_s_per_step"], 3)})
    finetune = [{"setting": e["setting"], "seed": e["train_seed"], "lr": f"{e['finetune_lr']:g}",
                 "decay": f"{e['finetune_decay']:g}", "val_acc": fmt(e["finetune_val_acc"]),
                 "grid_points": e["finetune_grid_points"], "test": mean_ci(e["acc_mean"], e["ci95"])}
                for e in evals if e["method"] == "baseline_finetune"]
    return pretraining, finetune


def embedded_figures(figures, names, out):
    """Copy each figure beside the report (for LaTeX) and inline it (for the self-contained HTML)."""
    embedded = []
    for setting, name in names:
        figure = Path(figures) / name
        shutil.copyfile(figure, out / "figures" / name)
        embedded.append({"setting": setting, "file": f"figures/{name}",
                         "data_uri": "data:image/png;base64," + base64.b64encode(figure.read_bytes()).decode()})
    return embedded


def rerun_command(configfiles):
    """The command that made this report; several config files go after one --configfile."""
    files = [f for f in configfiles.split() if f != "config/config.yaml"]
    return "snakemake --cores 4" + (" --configfile " + " ".join(files) if files else "")


def render_report(templates, summary_csv, manifest_path, figures, benchmarks, config, configfiles, run_files, eval_files,
                  pretrain_files, published_path, out):
    out = Path(out)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    summary = pd.read_csv(summary_csv, dtype={"image_pool": str})
    manifest = read_manifest(Path(manifest_path).parent)
    demo = manifest["source"]["format"] == "demo"
    home = summary[in_domain(summary)]
    rows = main_table(home)
    evals = [e for e in map(json.loads, (Path(p).read_text() for p in eval_files)) if in_domain(e)]
    details = run_details(run_files, evals)
    pretraining, finetune = baseline_details(pretrain_files, evals)
    curves = embedded_figures(figures, [(s, f"curve_{s}.png") for s in details], out)
    gates = embedded_figures(figures, [(s, f"gates_{s}.png") for s in details], out)
    claims = assess_claims(home.to_dict("records"), published_lookup(published_path)[0], demo)
    runs = [json.loads(Path(p).read_text()) for p in run_files]
    context = {
        "generated": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "demo": demo, "manifest": manifest, "config": config, "rows": rows, "details": details, "curves": curves,
        "gates": gates, "claims": claims, "pretraining": pretraining, "finetune": finetune,
        "image_pool": image_pool_ablation(config["settings"], eval_files), "transfer": transfer_table(summary),
        "deviations": [(name, DEVIATIONS[name]) for name in config.get("deviations", [])],
        "versions": package_versions(), "commit": git_commit(),
        "devices": sorted({r["device"] for r in runs}), "rule_times": rule_times(benchmarks),
        "commands": [rerun_command(configfiles),
                     rerun_command(configfiles) + " --forcerun results/runs/*/SETTING/*/run.json   # rerun one setting"],
        "table_header": TABLE_HEADER, "table_keys": TABLE_KEYS, "fmt": fmt,
    }
    html_env = jinja2.Environment(loader=jinja2.FileSystemLoader(templates), autoescape=True,
                                  undefined=jinja2.StrictUndefined)
    tex_env = jinja2.Environment(loader=jinja2.FileSystemLoader(templates), autoescape=False,
                                 undefined=jinja2.StrictUndefined, finalize=latex_escape,
                                 block_start_string="((*", block_end_string="*))",
                                 variable_start_string="(((", variable_end_string=")))",
                                 comment_start_string="((=", comment_end_string="=))", trim_blocks=True)
    write_text(out / "report.html", html_env.get_template("report.html.j2").render(context))
    write_text(out / "main_table.tex", booktabs(rows))
    with atomic_path(out / "main_table.csv") as tmp:
        pd.DataFrame(rows, columns=TABLE_KEYS).set_axis(TABLE_HEADER, axis=1).to_csv(tmp, index=False)
    write_text(out / "report.tex", tex_env.get_template("report.tex.j2").render(
        {**context, "main_table": Markup(booktabs(rows))}))
