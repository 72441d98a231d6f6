import json
import os
import shlex
import shutil
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError

from reproml.config import check_config_files, validate_config
from reproml.errors import UserError
from reproml.models.matching_net import DEVIATIONS as MATCHING_NET_DEVIATIONS
from reproml.settings import DEVIATIONS as META_LSTM_DEVIATIONS, README_COMMAND

try:
    check_config_files(workflow.overwrite_configfiles or [Path(workflow.basedir) / "config" / "config.yaml"])
    validate_config(config, Path(workflow.basedir) / "workflow" / "schemas" / "config.schema.yaml")
except UserError as error:
    sys.exit(str(error))

DATASET = config["dataset"]["name"]
DATA = "results/data/{dataset}"
SETTINGS = list(config["settings"])
# An image pool changes only meta-training, so the baselines run once, for the settings without one.
BASELINE_SETTINGS = [name for name, s in config["settings"].items() if s["image_pool"] == "all"]
TRANSFER = {d["name"]: d for d in config["transfer"]}
SEEDS = config["seeds"]
BASELINE_SEEDS = config["baselines"]["seeds"]  # the pre-trained network's: the run's unless given
RUN = "results/runs/{dataset}/{setting}/seed{seed}"
EVAL = "results/eval/{dataset}/{setting}/seed{seed}/{method}"
META_LSTM_EVAL = EVAL.replace("{method}", "meta_lstm")
UNTRAINED_EVAL = "results/eval/{dataset}/{setting}/untrained/{method}"  # methods without a training seed
PRETRAIN = "results/pretrain/{dataset}/seed{seed}"  # the baselines' network: one per dataset and seed
FINETUNE_GRID = "results/finetune_grid/{dataset}/{setting}/seed{seed}"
BASELINES = ["baseline_nearest_neighbor", "baseline_finetune"] if config["baselines"]["enabled"] else []
# Matching Networks: one model per (dataset, variant, seed), trained on 5-way 5-shot episodes, tested in
# every 5-way setting without an image pool.
MATCHING_NETS = config["matching_nets"]["variants"]
MATCHING_NET_SEEDS = config["matching_nets"]["seeds"]
MATCHING_NET_SETTINGS = [name for name in BASELINE_SETTINGS if config["settings"][name]["n_way"] == 5]
MATCHING_NET_RUN = "results/matching_nets/{dataset}/{method}/seed{seed}"
# Cross-shot testing (as the original): each 5-way meta-learner on the test episodes of the other 5-way
# settings without an image pool; {trained} is the setting it was trained in.
CROSS_SHOT_SETTINGS = MATCHING_NET_SETTINGS
CROSS_SHOT_EVAL = "results/cross_shot/{dataset}/{trained}/{setting}/seed{seed}/{method}"
TRANSFER_DATA = "results/data/transfer/{eval_dataset}"
TRANSFER_EVAL = "results/transfer/{dataset}/{eval_dataset}/{setting}/seed{seed}/{method}"
TRANSFER_UNTRAINED_EVAL = "results/transfer/{dataset}/{eval_dataset}/{setting}/untrained/{method}"
LATEXMK = shutil.which("latexmk") is not None

wildcard_constraints:
    dataset=r"[A-Za-z0-9._-]+",
    setting=r"[A-Za-z0-9_-]+",
    seed=r"\d+",
    eval_dataset=r"[A-Za-z0-9._-]+",
    trained=r"[A-Za-z0-9_-]+",


def uses_gpu():
    if config["device"] == "auto":
        import torch

        return torch.cuda.is_available()
    return config["device"] == "cuda"


GPU = 1 if uses_gpu() else 0

# The cores a job holds in Snakemake's count, and the threads it runs on. Given more `--cores` than
# this machine has, Snakemake would run more jobs at once than there are cores, and jobs that share a
# core train slower in sum than jobs that take turns (on 2 cores, four one-thread jobs at once train
# 11% fewer episodes a second than two); so there each job holds that many times its threads. Jobs
# sent to a cluster hold just their threads.
try:
    EXCESS = max(1, workflow.cores // (os.cpu_count() or 1)) if workflow.local_exec else 1
except WorkflowError:  # no --cores: a dry run or a report
    EXCESS = 1
JOB_CORES = config["threads"] * EXCESS


# Each job's torch threads are the config's whatever --cores says (they change the numbers beyond
# rounding), so that a run's results and its jobs' params do not depend on --cores.
TORCH_THREADS = config["threads"]


def all_runs(name):
    return expand(f"{RUN}/{name}", dataset=DATASET, setting=SETTINGS, seed=SEEDS)


def evaluations(trained, untrained, **wildcards):
    """Evaluation summaries: the meta-learner per (setting, seed), the baselines per (setting
    without an image pool, baseline seed), the Matching Networks per (5-way setting without an image
    pool, seed), pixel 1-NN per setting without an image pool."""
    return (expand(f"{trained}/summary.json", dataset=DATASET, setting=SETTINGS, seed=SEEDS, method="meta_lstm",
                   **wildcards)
            + expand(f"{trained}/summary.json", dataset=DATASET, setting=BASELINE_SETTINGS, seed=BASELINE_SEEDS,
                     method=BASELINES, **wildcards)
            + expand(f"{trained}/summary.json", dataset=DATASET, setting=MATCHING_NET_SETTINGS,
                     seed=MATCHING_NET_SEEDS, method=MATCHING_NETS, **wildcards)
            + expand(f"{untrained}/summary.json", dataset=DATASET, setting=BASELINE_SETTINGS,
                     method="pixel_nearest_neighbor", **wildcards))


def all_evals():
    """Every evaluation summary: on the training dataset's test split, then on each transfer dataset's."""
    return (evaluations(EVAL, UNTRAINED_EVAL)
            + evaluations(TRANSFER_EVAL, TRANSFER_UNTRAINED_EVAL, eval_dataset=list(TRANSFER)))


def all_matching_net_runs():
    return expand(f"{MATCHING_NET_RUN}/run.json", dataset=DATASET, method=MATCHING_NETS, seed=MATCHING_NET_SEEDS)


def all_cross_shot_evals():
    return [path for trained in CROSS_SHOT_SETTINGS for setting in CROSS_SHOT_SETTINGS if setting != trained
            for path in expand(f"{CROSS_SHOT_EVAL}/summary.json", dataset=DATASET, trained=trained, setting=setting,
                               seed=SEEDS, method="meta_lstm")]


def all_gates():
    return expand(f"{META_LSTM_EVAL}/gates.csv", dataset=DATASET, setting=SETTINGS, seed=SEEDS)


def episode_args(wildcards):
    """The episode shape of a setting, for the methods that take it on the command line."""
    return "--n-way {n_way} --k-shot {k_shot} --n-query {n_query}".format(**config["settings"][wildcards.setting])
