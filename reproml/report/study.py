"""The parts of the report that make it a reproducibility study rather than a table of numbers:
what was run (scope), each budget beside the paper's, the compute each stage took, and what
differs from the paper and why. All of it is derived from the run's configuration, its run.json
files and Snakemake's benchmark files, so that it cannot drift from what was actually done."""

from pathlib import Path

from reproml.errors import UserError
from reproml.files import read_csv
from reproml.methods.finetune import GRID_DECAYS, GRID_EPISODES, GRID_LRS
from reproml.report.claims import BASELINES, METHOD_NAMES
from reproml.report.tables import PAPER_ORDER
from reproml.settings import (PAPER_MATCHING_NET_EPISODES, PAPER_PRETRAIN_STEPS, PAPER_TEST_EPISODES,
                              PAPER_VALIDATION, paper_iterations, shot_defaults)

PAPER_FINETUNE_GRID = len(GRID_LRS) * len(GRID_DECAYS)
PAPER_FINETUNE_EPISODES = GRID_EPISODES
PAPER_IMAGE_SIZE = 84
# Stages of the pipeline for the compute table, by Snakemake rule (a trailing * matches a prefix).
STAGES = {"data": ("prepare_data", "prepare_transfer_data"), "meta-training": ("train_meta_lstm",),
          "pre-training": ("pretrain",), "fine-tuning search": ("select_finetune",),
          "Matching Networks training": ("train_matching_net",), "evaluation": ("evaluate*",),
          "report": ("aggregate", "figures", "report", "report_pdf", "publish_report")}
DEVICE_STAGES = ("meta-training", "pre-training", "fine-tuning search", "Matching Networks training", "evaluation")


def fraction_text(ours, paper):
    return f"{100 * ours / paper:.3g}%"


def original_inner_steps(settings):
    """T of the original code's inner loop for a setting's shot count (its batch size and epochs)."""
    original = shot_defaults(settings.k_shot)
    return original["epochs"] * -(-settings.n_way * settings.k_shot // original["batch_size"])


def meta_fractions(details):
    """Per setting: its meta-training episodes as a fraction of the paper's."""
    return {name: d["iterations"] / paper_iterations(d["settings"].k_shot) for name, d in details.items()}


def method_fractions(config, pretraining):
    """Per trained method other than the meta-learner: its training budget as a fraction of the paper's
    (the baselines' pre-training steps, the smallest over seeds; each Matching Network's episodes)."""
    fractions = {}
    if pretraining:
        fractions.update(dict.fromkeys(BASELINES, min(p["steps"] for p in pretraining) / PAPER_PRETRAIN_STEPS))
    matching = config.get("matching_nets", {})
    for variant in matching.get("variants", []):
        fractions[variant] = matching["iterations"] / PAPER_MATCHING_NET_EPISODES
    return fractions


def budgets(config, details, pretraining):
    """Rows (what, ours, paper, fraction) of every budget beside the original code's."""
    rows = []
    for name, d in details.items():
        s = d["settings"]
        paper = paper_iterations(s.k_shot)
        rows.append({"what": f"{name}: meta-training episodes", "ours": f"{d['iterations']:,}", "paper": f"{paper:,}",
                     "fraction": fraction_text(d["iterations"], paper)})
        original = original_inner_steps(s)
        rows.append({"what": f"{name}: inner updates T", "ours": f"{d['inner_steps']} ({s.epochs} epochs of batch "
                     f"{s.batch_size})", "paper": str(original), "fraction": fraction_text(d["inner_steps"], original)})
        rows.append({"what": f"{name}: validation", "ours": f"every {d['val_every']:,} over {d['val_episodes']} episodes",
                     "paper": f"every {PAPER_VALIDATION['every']:,} over {PAPER_VALIDATION['episodes']} episodes",
                     "fraction": "–"})
    for p in pretraining:
        rows.append({"what": f"pre-training steps (seed {p['seed']})", "ours": f"{p['steps']:,} of {p['batch_size']}",
                     "paper": f"{PAPER_PRETRAIN_STEPS:,} of 64", "fraction": fraction_text(p["steps"], PAPER_PRETRAIN_STEPS)})
    if pretraining:
        f = config["baselines"]["finetune"]
        points = len(f["lrs"]) * len(f["decays"])
        rows.append({"what": "fine-tuning search", "ours": f"{points} (lr, decay) points on {f['val_episodes']} "
                     "validation episodes", "paper": f"{PAPER_FINETUNE_GRID} points on {PAPER_FINETUNE_EPISODES}",
                     "fraction": fraction_text(points * f["val_episodes"], PAPER_FINETUNE_GRID * PAPER_FINETUNE_EPISODES)})
    matching = config.get("matching_nets", {})
    if matching.get("variants"):
        names = " and ".join(METHOD_NAMES[v] for v in matching["variants"])
        rows.append({"what": f"{names}: 5-way 5-shot training episodes, each", "ours": f"{matching['iterations']:,}",
                     "paper": f"{PAPER_MATCHING_NET_EPISODES:,}",
                     "fraction": fraction_text(matching["iterations"], PAPER_MATCHING_NET_EPISODES)})
        rows.append({"what": f"{names}: validation", "ours": f"every {matching['val_every']:,} over "
                     f"{matching['val_episodes']} episodes; the {matching['keep']} model tested",
                     "paper": f"every {PAPER_VALIDATION['every']:,} over {PAPER_VALIDATION['episodes']} episodes; "
                     "the last model tested", "fraction": "–"})
    rows.append({"what": "test episodes per method and seed", "ours": f"{config['test_episodes']:,}",
                 "paper": f"{PAPER_TEST_EPISODES:,}", "fraction": fraction_text(config["test_episodes"], PAPER_TEST_EPISODES)})
    return rows


def rule_of(benchmark, root):
    return benchmark.relative_to(root).parts[0].removesuffix(".tsv")


def stage_of(rule):
    for stage, rules in STAGES.items():
        if any(rule == r or (r.endswith("*") and rule.startswith(r[:-1])) for r in rules):
            return stage
    return "other"


def compute(benchmarks, devices):
    """Per stage: jobs, wall hours summed over its jobs, CPU-hours (Snakemake's cpu_time) and, where the
    jobs ran on a GPU, GPU-hours (their wall time on one GPU each); the last row is the total."""
    stages = {}
    for path in sorted(Path(benchmarks).rglob("*.tsv")):
        rows = read_csv(path, "Snakemake benchmark file", ("s", "cpu_time"), delimiter="\t")
        if not rows:
            raise UserError(f"{path}: an empty Snakemake benchmark file")
        row = rows[0]
        stage = stages.setdefault(stage_of(rule_of(path, Path(benchmarks))), {"jobs": 0, "wall": 0.0, "cpu": 0.0})
        stage["jobs"] += 1
        try:
            stage["wall"] += float(row["s"])
            stage["cpu"] += float(row["cpu_time"] or 0)
        except ValueError:
            raise UserError(f"{path}: not a Snakemake benchmark file (its times are not numbers)") from None
    on_gpu = any(d.startswith("cuda") for d in devices)
    order = list(STAGES) + ["other"]
    rows = [{"stage": name, "jobs": s["jobs"], "wall_h": s["wall"] / 3600, "cpu_h": s["cpu"] / 3600,
             "gpu_h": s["wall"] / 3600 if on_gpu and name in DEVICE_STAGES else None}
            for name, s in sorted(stages.items(), key=lambda item: order.index(item[0]))]
    if rows:
        rows.append({"stage": "total", "jobs": sum(r["jobs"] for r in rows), "wall_h": sum(r["wall_h"] for r in rows),
                     "cpu_h": sum(r["cpu_h"] for r in rows),
                     "gpu_h": sum(r["gpu_h"] or 0 for r in rows) if on_gpu else None})
    return rows


def scope(config, summary, details):
    """What this report covers: the settings, the methods (and the paper's methods it lacks), the analyses."""
    methods = list(dict.fromkeys(summary["method"]))
    absent = [METHOD_NAMES.get(m, m) for m in PAPER_ORDER if m not in methods]
    analyses = []
    if any(d["image_pool"] != "all" for d in details.values()):
        analyses.append("the student report's image-pool explanation")
    if config["transfer"]:
        analyses.append("transfer of every trained method to " + ", ".join(t["name"] for t in config["transfer"]))
    return {"settings": [f"{name} ({d['settings'].n_way}-way {d['settings'].k_shot}-shot"
                         + (f", image pool {d['image_pool']}" if d["image_pool"] != "all" else "") + ")"
                         for name, d in details.items()],
            "methods": [METHOD_NAMES.get(m, m) for m in methods], "absent": absent, "analyses": analyses}


def differences(config, manifest, details, pretraining, summary):
    """(what differs from the paper, why) for everything this run does otherwise than the original."""
    items = []
    demo = manifest["source"]["format"] == "demo"
    if demo:
        items.append(("Data: the project's synthetic glyphs (demo), not miniImagenet.",
                      "The default run needs no download and finishes in minutes; its numbers are not comparable to "
                      "the paper's."))
    else:
        per_class = manifest["splits"]["train"]["images"] // max(manifest["splits"]["train"]["classes"], 1)
        if per_class != 600:
            items.append((f"Data: {per_class} images per class, not miniImagenet's 600.",
                          "A subset of the real data, for a budget; fewer images per class make meta-training "
                          "episodes repeat images more often."))
    if manifest["image_size"] != PAPER_IMAGE_SIZE:
        items.append((f"Images at {manifest['image_size']}×{manifest['image_size']}, not 84×84.",
                      "Compute: the learner's cost grows with the image area."))
    fractions = sorted({round(f, 6) for f in meta_fractions(details).values()})
    steps = sorted({p["steps"] for p in pretraining})
    if fractions != [1.0] or any(s != PAPER_PRETRAIN_STEPS for s in steps):
        text = ", ".join(f"{100 * f:.3g}%" for f in fractions)
        items.append((f"Training budgets: meta-training at {text} of the paper's episodes"
                      + (f", pre-training at {', '.join(fraction_text(s, PAPER_PRETRAIN_STEPS) for s in steps)} of its "
                         "30,000 steps" if steps else "") + ".",
                      "Compute: the budget fits the machine the report was made on. One factor for every method keeps "
                      "the paper's ratio between meta-training and pre-training, so that no method is compared "
                      "unfinished against another one finished; absolute accuracies are lower than at the paper's "
                      "budget, which is why a shortfall against a published figure is read as inconclusive."))
    reduced = [f"{name} (T = {d['inner_steps']}, the original {original_inner_steps(d['settings'])})"
               for name, d in details.items() if d["inner_steps"] < original_inner_steps(d["settings"])]
    if reduced:
        items.append(("Fewer inner updates: " + "; ".join(reduced) + ".",
                      "Compute: an inner update costs a forward and backward pass on a support batch."))
    if pretraining:
        f = config["baselines"]["finetune"]
        points = len(f["lrs"]) * len(f["decays"])
        if points < PAPER_FINETUNE_GRID or f["val_episodes"] < PAPER_FINETUNE_EPISODES:
            items.append((f"Baseline-finetune's search: {points} of the paper's {PAPER_FINETUNE_GRID} (lr, decay) "
                          f"points on {f['val_episodes']} validation episodes (the paper: {PAPER_FINETUNE_EPISODES}).",
                          "Compute: each point fine-tunes the 64-filter network on every validation episode."))
    if config["test_episodes"] != PAPER_TEST_EPISODES:
        items.append((f"{config['test_episodes']} test episodes per method and seed, not 600.",
                      "Compute; the confidence intervals are correspondingly wider."))
    items.append(("The meta-learner tested is the one best on validation, and pre-training keeps its best step on "
                  "validation 1-NN.",
                  "The original kept no best checkpoint (it selected by hand from the curves) and pre-trained a fixed "
                  "30,000 steps; a rule instead of a judgement, recorded with the iteration chosen."))
    items.append(("Every method is tested on the same seeded test episodes, and compared by paired differences.",
                  "The original set no seed, so its methods saw different episodes; pairing removes the episodes' "
                  "difficulty from each comparison."))
    if len(config["seeds"]) > 1:
        items.append((f"{len(config['seeds'])} training seeds of the meta-learner, pooled in every figure of ours.",
                      "The paper reports one run; seeds show the training variability."))
    absent = [METHOD_NAMES[m] for m in ("matching_net", "matching_net_fce") if m not in set(summary["method"])]
    if absent:
        items.append((f"{' and '.join(absent)} not run: compared through their published figures only.",
                      "Left out of this run's configuration (matching_nets.variants)."))
    for name in config.get("deviations", []):
        items.append((f"Deviation `{name}` on.", "Chosen in the configuration (see Methodology)."))
    return [{"what": what, "why": why} for what, why in items]
