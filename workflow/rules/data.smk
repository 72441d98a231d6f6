def prepare_args(wildcards):
    d = config["dataset"]
    if d["format"] == "demo":
        return f"--format demo --seed {d['seed']} --images-per-class {d['images_per_class']}"
    return f"--format {d['format']} --root '{d['root']}'"


rule prepare_data:
    output:
        manifest="results/data/{dataset}/manifest.json",
    params:
        source=prepare_args,
        image_size=config["dataset"]["image_size"],
    log:
        "logs/prepare_data/{dataset}.log",
    benchmark:
        "benchmarks/prepare_data/{dataset}.tsv"
    shell:
        "reproml prepare {params.source} --image-size {params.image_size} --name {wildcards.dataset}"
        " --out results/data/{wildcards.dataset} > {log} 2>&1"
