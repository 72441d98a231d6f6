# Every method on test episodes: one rule per output family, the method a wildcard, the inputs and
# options derived from the wildcards. Every method runs with the same eval seed, so on the same
# episodes (their fingerprints are checked when the aggregation pairs them). On a transfer dataset
# (prepared at the training image size) a setting the data cannot fill gives a summary saying why.


def evaluation_inputs(wildcards):
    """The test data, and what a trained method is evaluated from: the meta-learner's best.pt, a
    Matching Network's model.pt, or the pre-trained network (for fine-tuning also the (lr, decay)
    chosen on the training dataset's validation split)."""
    w = dict(wildcards.items())
    inputs = {"manifest": (TRANSFER_DATA if "eval_dataset" in w else DATA).format(**w) + "/manifest.json"}
    if w["method"] == "meta_lstm":
        inputs["checkpoint"] = RUN.format(**{**w, "setting": w.get("trained", w["setting"])}) + "/best.pt"
    elif w["method"] in MATCHING_NETS:
        inputs["checkpoint"] = MATCHING_NET_RUN.format(**w) + "/model.pt"
    elif w["method"] in BASELINES:
        inputs["checkpoint"] = PRETRAIN.format(**w) + "/best.pt"
    if w["method"] == "baseline_finetune":
        inputs["choice"] = FINETUNE_GRID.format(**w) + "/choice.json"
    return inputs


def evaluation_args(wildcards, input):
    """`reproml evaluate`'s options for a method: its files, and the episode shape for the methods
    that do not take it from a checkpoint (and for a meta-learner tested at another shot); on a
    transfer dataset, the training dataset's name."""
    args = [f"--method {wildcards.method}", f"--data {shlex.quote(os.path.dirname(input.manifest))}",
            f"--label {shlex.quote(wildcards.setting)}"]
    if "checkpoint" in input.keys():
        args.append(f"--checkpoint {shlex.quote(input.checkpoint)}")
    if "choice" in input.keys():
        args.append(f"--finetune-choice {shlex.quote(input.choice)}")
    if wildcards.method != "meta_lstm" or "trained" in wildcards.keys():
        args.append(episode_args(wildcards))
    if "eval_dataset" in wildcards.keys():
        args.append(f"--train-dataset {shlex.quote(wildcards.dataset)} --skip-if-too-small")
    return " ".join(args)


rule evaluate:
    input:
        unpack(evaluation_inputs),
    output:
        summary=f"{EVAL}/summary.json",
        episodes=f"{EVAL}/episodes.csv",
    wildcard_constraints:
        method="|".join(BASELINES + MATCHING_NETS) or "(?!)",
    params:
        threads=TORCH_THREADS,
        args=evaluation_args,
        out=lambda wildcards, output: os.path.dirname(output.summary),
        episodes=config["test_episodes"],
        seed=config["eval_seed"],
        device=config["device"],
    threads: JOB_CORES
    resources:
        gpu=GPU,
    log:
        "logs/evaluate/{dataset}/{setting}/seed{seed}/{method}.log",
    benchmark:
        "benchmarks/evaluate/{dataset}/{setting}/seed{seed}/{method}.tsv"
    shell:
        "reproml evaluate {params.args} --episodes {params.episodes} --seed {params.seed} --device {params.device:q}"
        " --threads {params.threads} --out {params.out:q} > {log:q} 2>&1"


use rule evaluate as evaluate_meta_lstm with:
    output:
        summary=f"{EVAL}/summary.json",
        episodes=f"{EVAL}/episodes.csv",
        gates=f"{EVAL}/gates.csv",  # the meta-learner's gate values per inner update and learner layer
    wildcard_constraints:
        method="meta_lstm",


use rule evaluate as evaluate_cross_shot with:
    output:
        summary=f"{CROSS_SHOT_EVAL}/summary.json",
        episodes=f"{CROSS_SHOT_EVAL}/episodes.csv",
    wildcard_constraints:
        method="meta_lstm",
    log:
        "logs/evaluate_cross_shot/{dataset}/{trained}/{setting}/seed{seed}/{method}.log",
    benchmark:
        "benchmarks/evaluate_cross_shot/{dataset}/{trained}/{setting}/seed{seed}/{method}.tsv"


use rule evaluate as evaluate_untrained with:
    output:
        summary=f"{UNTRAINED_EVAL}/summary.json",
        episodes=f"{UNTRAINED_EVAL}/episodes.csv",
    wildcard_constraints:
        method="pixel_nearest_neighbor",
    resources:
        gpu=0,  # raw pixels: nothing worth a GPU
    log:
        "logs/evaluate/{dataset}/{setting}/untrained/{method}.log",
    benchmark:
        "benchmarks/evaluate/{dataset}/{setting}/untrained/{method}.tsv"


use rule evaluate as evaluate_transfer with:
    output:
        summary=f"{TRANSFER_EVAL}/summary.json",
        episodes=f"{TRANSFER_EVAL}/episodes.csv",
    wildcard_constraints:
        method="|".join(["meta_lstm"] + BASELINES + MATCHING_NETS),
    log:
        "logs/evaluate_transfer/{dataset}/{eval_dataset}/{setting}/seed{seed}/{method}.log",
    benchmark:
        "benchmarks/evaluate_transfer/{dataset}/{eval_dataset}/{setting}/seed{seed}/{method}.tsv"


use rule evaluate as evaluate_transfer_untrained with:
    output:
        summary=f"{TRANSFER_UNTRAINED_EVAL}/summary.json",
        episodes=f"{TRANSFER_UNTRAINED_EVAL}/episodes.csv",
    wildcard_constraints:
        method="pixel_nearest_neighbor",
    resources:
        gpu=0,
    log:
        "logs/evaluate_transfer/{dataset}/{eval_dataset}/{setting}/untrained/{method}.log",
    benchmark:
        "benchmarks/evaluate_transfer/{dataset}/{eval_dataset}/{setting}/untrained/{method}.tsv"
