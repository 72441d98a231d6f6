# Matching Networks and Matching Networks FCE as the original trained them: 5-way 5-shot episodes
# whatever the test shot, Adam 1e-4, the last model kept unless `keep: best`. Their evaluations are
# the `evaluate` rule's (the same test episodes as every other method).


def matching_net_args(wildcards):
    m = config["matching_nets"]
    args = [f"--variant {wildcards.method} --iterations {m['iterations']} --val-every {m['val_every']}",
            f"--val-episodes {m['val_episodes']} --keep {m['keep']}"]
    args += [f"--deviation {name}" for name in config["deviations"] if name in MATCHING_NET_DEVIATIONS
             and (wildcards.method == "matching_net_fce" or not name.startswith("fce_"))]
    return " ".join(args)


rule train_matching_net:
    input:
        manifest=f"{DATA}/manifest.json",
    output:
        model=f"{MATCHING_NET_RUN}/model.pt",
        curve=f"{MATCHING_NET_RUN}/curve.csv",
        run=f"{MATCHING_NET_RUN}/run.json",
    wildcard_constraints:
        method="|".join(MATCHING_NETS) or "(?!)",
    params:
        threads=TORCH_THREADS,
        args=matching_net_args,
        data=DATA,
        out=MATCHING_NET_RUN,
        device=config["device"],
    threads: JOB_CORES
    resources:
        gpu=GPU,
    log:
        "logs/train_matching_net/{dataset}/{method}/seed{seed}.log",
    benchmark:
        "benchmarks/train_matching_net/{dataset}/{method}/seed{seed}.tsv"
    shell:
        "reproml train-matching-net --data {params.data:q} {params.args} --seed {wildcards.seed:q}"
        " --device {params.device:q} --threads {params.threads} --replace --out {params.out:q} > {log:q} 2>&1"
