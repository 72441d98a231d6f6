"""The reproducibility report: HTML (self-contained, autoescaped) and LaTeX (escaped), rendered
from the Jinja templates in report/templates, plus the long results table as CSV and booktabs LaTeX.

The templates lay out the structure; the prose both share is written once, in prose.yaml, and
formatted here for each (`backticks` become code)."""

import base64
import datetime
import html
import importlib.metadata
import platform
import re
import shutil
import subprocess
from pathlib import Path

import jinja2
from markupsafe import Markup

from reproml.atomic import atomic_path, make_dir, write_text
from reproml.data.prepared import read_manifest
from reproml.files import existing, read_frame, read_yaml, reading
from reproml.report.aggregate import COLUMNS as SUMMARY_COLUMNS
from reproml.report.aggregate import fmt, in_domain, mean_ci, published_lookup, read_summary
from reproml.report.analyses import image_pool_ablation, transfer_table
from reproml.report.claims import assess_claims
from reproml.report.study import budgets, compute, differences, meta_fractions, method_fractions, scope
from reproml.report.tables import LONG_HEADER, LONG_KEYS, cross_shot_table, long_table, long_table_csv, table_one
from reproml.models.matching_net import DEVIATIONS as MATCHING_NET_DEVIATIONS
from reproml.settings import DEVIATIONS, TaskSettings
from reproml.training.run_log import history_text, read_curve, read_run, restart_reason

PACKAGES = ("torch", "torchvision", "numpy", "pandas", "matplotlib", "jinja2", "pillow", "snakemake", "reproml")
LATEX_SPECIALS = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  "<": r"\textless{}", ">": r"\textgreater{}",
                  # symbols that pdflatex's utf8 input does not know
                  "±": r"\ensuremath{\pm}", "√": r"\ensuremath{\surd}", "·": r"\ensuremath{\cdot}",
                  "×": r"\ensuremath{\times}", "≤": r"\ensuremath{\le}", "≥": r"\ensuremath{\ge}",
                  "−": r"\ensuremath{-}", "→": r"\ensuremath{\rightarrow}"}
CODE = re.compile(r"`([^`]*)`")


def latex_escape(value):
    if isinstance(value, Markup):
        return str(value)
    return "".join(LATEX_SPECIALS.get(ch, ch) for ch in str(value))


def prose_html(text):
    """Plain prose (`backticks` for code) as HTML."""
    return Markup(CODE.sub(lambda m: f"<code>{m.group(1)}</code>", html.escape(str(text), quote=False)))


def prose_tex(text):
    """Plain prose (`backticks` for code) as LaTeX."""
    parts = CODE.split(str(text))
    return Markup("".join(latex_escape(p) if i % 2 == 0 else r"\texttt{" + latex_escape(p) + "}"
                          for i, p in enumerate(parts)))


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


def booktabs(rows):
    lines = [r"\begin{tabular}{" + "l" * 3 + "r" * 7 + "l}", r"\toprule",
             " & ".join(latex_escape(h) for h in LONG_HEADER) + r" \\", r"\midrule"]
    lines += [" & ".join(latex_escape(row[k]) for k in LONG_KEYS) + r" \\" for row in rows]
    return "\n".join(lines + [r"\bottomrule", r"\end{tabular}", ""])


def flat_at_end(curve):
    """Whether a validation curve has flattened: its last two validations differ by less than the last one's 95% CI."""
    if len(curve) < 2:
        return None
    return abs(curve[-1]["val_acc"] - curve[-2]["val_acc"]) < curve[-1]["val_ci95"]


def run_details(run_files, evals):
    """Per setting: its hyperparameters and, per seed, the meta-learner's selection, convergence and test result."""
    evals = {(e["setting"], e["train_seed"]): e for e in evals if e["method"] == "meta_lstm"}
    details = {}
    for path in run_files:
        run = read_run(path)
        curve = read_curve(path).to_dict("records")
        e = evals.get((run["setting"], run["seed"]), {})
        settings = TaskSettings.from_dict(run["settings"])
        details.setdefault(run["setting"], {"settings": settings, "inner_steps": settings.inner_steps,
                                            "val_every": run["val_every"], "val_episodes": run["val_episodes"],
                                            "iterations": run["iterations"], "image_pool": run.get("image_pool", "all"),
                                            "seeds": []})
        flat = flat_at_end(curve)
        details[run["setting"]]["seeds"].append({
            "seed": run["seed"], "best_iteration": run["best_iteration"], "best_val_acc": fmt(run["best_val_acc"]),
            "last_two": " → ".join(mean_ci(r["val_acc"], r["val_ci95"]) for r in curve[-2:]),
            "flat": {True: "yes", False: "no", None: "–"}[flat],
            "test": mean_ci(e.get("acc_mean"), e.get("ci95")), "device": run["device"],
            "trained": history_text(run.get("history")), "restart_reason": restart_reason(run),
            "train_s": fmt(run["train_s_per_episode"], 3), "eval_s": fmt(e.get("s_per_episode"), 3)})
    return details


def baseline_details(pretrain_files, evals):
    """The pre-trained networks, and the fine-tuning point chosen per (setting, seed)."""
    pretraining = []
    for path in pretrain_files:
        run = read_run(path, ("seed", "steps", "best_step", "best_val_acc"))
        pretraining.append({"seed": run["seed"], "steps": run["steps"], "batch_size": run["batch_size"], "lr": run["lr"],
                            "best_step": run["best_step"], "best_val_acc": fmt(run["best_val_acc"]),
                            "val": f"every {run['val_every']} steps over {run['val_episodes']} episodes",
                            "device": run["device"], "s_per_step": fmt(run["train_s_per_step"], 3),
                            "trained": history_text(run.get("history")), "restart_reason": restart_reason(run)})
    finetune = [{"setting": e["setting"], "seed": e["train_seed"], "lr": f"{e['finetune_lr']:g}",
                 "decay": f"{e['finetune_decay']:g}", "val_acc": fmt(e["finetune_val_acc"]),
                 "grid_points": e["finetune_grid_points"], "test": mean_ci(e["acc_mean"], e["ci95"])}
                for e in evals if e["method"] == "baseline_finetune"]
    return pretraining, finetune


def embedded_figures(figures, names):
    """Each figure inlined (for the self-contained HTML) and named as the LaTeX report finds its copy."""
    embedded = []
    for label, name in names:
        figure = Path(figures) / name
        with reading(figure, "figure"):
            data = existing(figure, "figure").read_bytes()
        embedded.append({"setting": label, "file": f"figures/{name}", "source": figure,
                         "data_uri": "data:image/png;base64," + base64.b64encode(data).decode()})
    return embedded


def prose(templates, values, formatter):
    """prose.yaml's paragraphs with their {placeholders} filled, formatted by `formatter`."""
    paragraphs = read_yaml(Path(templates) / "prose.yaml", "report prose")
    return {key: formatter(text.format(**values)) for key, text in paragraphs.items()}


def environments(templates):
    html_env = jinja2.Environment(loader=jinja2.FileSystemLoader(templates), autoescape=True,
                                  undefined=jinja2.StrictUndefined)
    tex_env = jinja2.Environment(loader=jinja2.FileSystemLoader(templates), autoescape=False,
                                 undefined=jinja2.StrictUndefined, finalize=latex_escape,
                                 block_start_string="((*", block_end_string="*))",
                                 variable_start_string="(((", variable_end_string=")))",
                                 comment_start_string="((=", comment_end_string="=))", trim_blocks=True)
    html_env.filters["prose"], tex_env.filters["prose"] = prose_html, prose_tex
    return html_env, tex_env


def render_report(templates, summary_csv, manifest_path, figures, benchmarks, config, command, run_files, eval_files,
                  pretrain_files, published_path, out, cross_shot_files=()):
    summary = read_frame(summary_csv, "summary.csv", SUMMARY_COLUMNS)
    manifest = read_manifest(Path(manifest_path).parent)
    demo = manifest["source"]["format"] == "demo"
    home = summary[in_domain(summary)]
    paper, comp6248 = published_lookup(published_path)
    evals = [e for e in map(read_summary, eval_files) if in_domain(e)]
    details = run_details(run_files, evals)
    pretraining, finetune = baseline_details(pretrain_files, evals)
    image_pool = image_pool_ablation(config["settings"], eval_files)
    runs = [read_run(p) for p in run_files]
    retrained = ([f"{name} seed {s['seed']} ({s['restart_reason']})" for name, d in details.items() for s in d["seeds"]
                  if s["restart_reason"]]
                 + [f"pre-training seed {p['seed']} ({p['restart_reason']})" for p in pretraining if p["restart_reason"]])
    devices = sorted({r["device"] for r in runs} | {e["device"] for e in evals})
    long_rows = long_table(home)
    compute_rows = compute(benchmarks, devices)
    context = {
        "generated": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "demo": demo, "manifest": manifest, "config": config, "details": details,
        "claims": assess_claims(home.to_dict("records"), paper, comp6248, demo, meta_fractions(details), image_pool,
                                method_fractions(config, pretraining)),
        "scope": scope(config, home, details), "budgets": budgets(config, details, pretraining),
        "compute": compute_rows, "gpu_hours": any(r["gpu_h"] is not None for r in compute_rows),
        "differences": differences(config, manifest, details, pretraining, home),
        "table_one": table_one(home, paper, comp6248), "long_rows": long_rows,
        "cross_shot": cross_shot_table(home, cross_shot_files),
        "accuracy": embedded_figures(figures, [("accuracy", "accuracy.png")])[0],
        "curves": embedded_figures(figures, [(s, f"curve_{s}.png") for s in details]),
        "gates": embedded_figures(figures, [(s, f"gates_{s}.png") for s in details]),
        "pretraining": pretraining, "finetune": finetune, "retrained": retrained, "image_pool": image_pool, "transfer": transfer_table(summary),
        "deviations": [(name, {**DEVIATIONS, **MATCHING_NET_DEVIATIONS}[name]) for name in config.get("deviations", [])],
        "versions": package_versions(), "commit": git_commit(), "devices": devices,
        "commands": [command, "# one setting again (its training and everything after it):",
                     command + " \\\n    --forcerun results/runs/*/SETTING/*/run.json"],
        "long_header": LONG_HEADER, "long_keys": LONG_KEYS, "fmt": fmt,
    }
    values = {"dataset": manifest["name"], "budget_fraction": f"{config.get('budget_fraction', 1):g}"}
    html_env, tex_env = environments(templates)
    html = html_env.get_template("report.html.j2").render({**context, "prose": prose(templates, values, prose_html)})
    tex = tex_env.get_template("report.tex.j2").render(
        {**context, "prose": prose(templates, values, prose_tex), "long_table": Markup(booktabs(long_rows))})
    # every input read: only now is anything written
    out = make_dir(Path(out))
    for figure in [context["accuracy"], *context["curves"], *context["gates"]]:
        with atomic_path(out / figure["file"]) as tmp:
            shutil.copyfile(figure["source"], tmp)
    write_text(out / "report.html", html)
    write_text(out / "main_table.tex", booktabs(long_rows))
    with atomic_path(out / "main_table.csv") as tmp:
        long_table_csv(long_rows, tmp)
    write_text(out / "report.tex", tex)
