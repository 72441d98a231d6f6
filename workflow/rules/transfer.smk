# Transfer: every trained method, unchanged, on each transfer dataset's test split (prepared at the
# training image size), on the same episodes for every method. A setting that the dataset cannot
# support (too few classes or images per class) gives a summary that says why, and the report shows it.


def transfer_inputs(wildcards):
    w = dict(wildcards.items())
    inputs = {"manifest": TRANSFER_DATA.format(**w) + "/manifest.json"}
    if wildcards.method == "meta_lstm":
        inputs["checkpoint"] = RUN.format(**w) + "/best.pt"
    else:
        inputs["checkpoint"] = PRETRAIN.format(**w) + "/best.pt"
    if wildcards.method == "baseline_finetune":  # the (lr, decay) chosen on the training dataset's validation split
        inputs["choice"] = FINETUNE_GRID.format(**w) + "/choice.json"
    return inputs


def transfer_method_args(wildcards, input):
    args = f"--checkpoint {shlex.quote(input.checkpoint)}"
    if wildcards.method != "meta_lstm":
        args += " " + episode_args(wildcards)
    if wildcards.method == "baseline_finetune":
        args += f" --finetune-choice {shlex.quote(input.choice)}"
    return args


rule evaluate_transfer:
    input:
        unpack(transfer_inputs),
    output:
        summary=f"{TRANSFER_EVAL}/summary.json",
        episodes=f"{TRANSFER_EVAL}/episodes.csv",
    wildcard_constraints:
        method="|".join(["meta_lstm"] + BASELINES),
    params:
        method=transfer_method_args,
        data=TRANSFER_DATA,
        out=TRANSFER_EVAL,
        episodes=config["test_episodes"],
        seed=config["eval_seed"],
        device=config["device"],
    threads: config["threads"]
    resources:
        gpu=GPU,
    log:
        "logs/evaluate_transfer/{dataset}/{eval_dataset}/{setting}/seed{seed}/{method}.log",
    benchmark:
        "benchmarks/evaluate_transfer/{dataset}/{eval_dataset}/{setting}/seed{seed}/{method}.tsv"
    shell:
        "reproml evaluate --method {wildcards.method:q} --data {params.data:q} {params.method} --label {wildcards.setting:q}"
        " --train-dataset {wildcards.dataset:q} --skip-if-too-small --episodes {params.episodes} --seed {params.seed}"
        " --device {params.device:q} --threads {threads} --out {params.out:q} > {log:q} 2>&1"


rule evaluate_transfer_pixel_nearest_neighbor:
    input:
        manifest=f"{TRANSFER_DATA}/manifest.json",
    output:
        summary=TRANSFER_UNTRAINED_EVAL.replace("{method}", "pixel_nearest_neighbor") + "/summary.json",
        episodes=TRANSFER_UNTRAINED_EVAL.replace("{method}", "pixel_nearest_neighbor") + "/episodes.csv",
    params:
        episode=episode_args,
        data=TRANSFER_DATA,
        out=TRANSFER_UNTRAINED_EVAL.replace("{method}", "pixel_nearest_neighbor"),
        episodes=config["test_episodes"],
        seed=config["eval_seed"],
        device=config["device"],
    threads: config["threads"]
    log:
        "logs/evaluate_transfer/{dataset}/{eval_dataset}/{setting}/pixel_nearest_neighbor.log",
    benchmark:
        "benchmarks/evaluate_transfer/{dataset}/{eval_dataset}/{setting}/pixel_nearest_neighbor.tsv"
    shell:
        "reproml evaluate --method pixel_nearest_neighbor --data {params.data:q} {params.episode} --label {wildcards.setting:q}"
        " --train-dataset {wildcards.dataset:q} --skip-if-too-small --episodes {params.episodes} --seed {params.seed}"
        " --device {params.device:q} --threads {threads} --out {params.out:q} > {log:q} 2>&1"
