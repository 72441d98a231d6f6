def source_args(d):
    """The `reproml prepare` options that name a dataset entry's source."""
    if d["format"] == "demo":
        return f"--format demo --seed {d['seed']} --images-per-class {d['images_per_class']}"
    return f"--format {d['format']} --root {shlex.quote(d['root'])}"


rule prepare_data:
    output:
        manifest=f"{DATA}/manifest.json",
    params:
        source=source_args(config["dataset"]),
        image_size=config["dataset"]["image_size"],
        out=DATA,
    log:
        "logs/prepare_data/{dataset}.log",
    benchmark:
        "benchmarks/prepare_data/{dataset}.tsv"
    shell:
        "reproml prepare {params.source} --image-size {params.image_size} --name {wildcards.dataset:q}"
        " --out {params.out:q} > {log:q} 2>&1"


# A transfer dataset is prepared at the training image size, whatever its own size or colour.
rule prepare_transfer_data:
    output:
        manifest=f"{TRANSFER_DATA}/manifest.json",
    params:
        source=lambda wildcards: source_args(TRANSFER[wildcards.eval_dataset]),
        image_size=config["dataset"]["image_size"],
        out=TRANSFER_DATA,
    log:
        "logs/prepare_transfer_data/{eval_dataset}.log",
    benchmark:
        "benchmarks/prepare_transfer_data/{eval_dataset}.tsv"
    shell:
        "reproml prepare {params.source} --image-size {params.image_size} --name {wildcards.eval_dataset:q}"
        " --quiet --out {params.out:q} > {log:q} 2>&1"
