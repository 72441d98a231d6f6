import json
import shutil
import sys
from pathlib import Path

from reproml.config import validate_config
from reproml.errors import UserError

try:
    validate_config(config, Path(workflow.basedir) / "workflow" / "schemas" / "config.schema.yaml")
except UserError as error:
    sys.exit(str(error))

DATASET = config["dataset"]["name"]
DATA = f"results/data/{DATASET}"
SETTINGS = list(config["settings"])
SEEDS = config["seeds"]
RUN = "results/runs/{dataset}/{setting}/seed{seed}"
EVAL = "results/eval/{dataset}/{setting}/seed{seed}/{method}"
META_LSTM_EVAL = EVAL.replace("{method}", "meta_lstm")
UNTRAINED_EVAL = "results/eval/{dataset}/{setting}/untrained/{method}"  # methods without a training seed
PIXEL_NN_EVAL = UNTRAINED_EVAL.replace("{method}", "pixel_nearest_neighbor")
BASELINE_NN_EVAL = EVAL.replace("{method}", "baseline_nearest_neighbor")
BASELINE_FINETUNE_EVAL = EVAL.replace("{method}", "baseline_finetune")
PRETRAIN = "results/pretrain/{dataset}/seed{seed}"  # the baselines' network: one per dataset and seed
FINETUNE_GRID = "results/finetune_grid/{dataset}/{setting}/seed{seed}"
TRAINED_METHODS = ["meta_lstm", "baseline_nearest_neighbor", "baseline_finetune"]
LATEXMK = shutil.which("latexmk") is not None

wildcard_constraints:
    dataset=r"[A-Za-z0-9._-]+",
    setting=r"[A-Za-z0-9_-]+",
    seed=r"\d+",


def uses_gpu():
    if config["device"] == "auto":
        import torch

        return torch.cuda.is_available()
    return config["device"] == "cuda"


GPU = 1 if uses_gpu() else 0


def all_runs(name):
    return expand(f"{RUN}/{name}", dataset=DATASET, setting=SETTINGS, seed=SEEDS)


def all_evals():
    """Every evaluation summary: trained methods per (setting, seed), pixel 1-NN per setting."""
    return (expand(f"{EVAL}/summary.json", dataset=DATASET, setting=SETTINGS, seed=SEEDS, method=TRAINED_METHODS)
            + expand(f"{PIXEL_NN_EVAL}/summary.json", dataset=DATASET, setting=SETTINGS))


def all_gates():
    return expand(f"{META_LSTM_EVAL}/gates.csv", dataset=DATASET, setting=SETTINGS, seed=SEEDS)


def episode_args(wildcards):
    """The episode shape of a setting, for the methods that take it on the command line."""
    return "--n-way {n_way} --k-shot {k_shot} --n-query {n_query}".format(**config["settings"][wildcards.setting])
