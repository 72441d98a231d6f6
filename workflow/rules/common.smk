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
LATEXMK = shutil.which("latexmk") is not None


def uses_gpu():
    if config["device"] == "auto":
        import torch

        return torch.cuda.is_available()
    return config["device"] == "cuda"


GPU = 1 if uses_gpu() else 0


def all_runs(name):
    return expand(f"{RUN}/{name}", dataset=DATASET, setting=SETTINGS, seed=SEEDS)


def all_evals(method="meta_lstm"):
    return expand(f"{EVAL}/summary.json", dataset=DATASET, setting=SETTINGS, seed=SEEDS, method=method)
