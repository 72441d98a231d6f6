# The paper's baselines: a 64-filter network pre-trained as a classifier (one per dataset and
# seed), used for cosine 1-NN on its features and for fine-tuning; plus 1-NN on raw pixels.
# Every method is evaluated on the same test episodes as the meta-learner (same eval seed).


def pretrain_args(wildcards):
    p = config["baselines"]["pretrain"]
    return (f"--steps {p['steps']} --batch-size {p['batch_size']} --lr {p['lr']}"
            f" --val-every {p['val_every']} --val-episodes {p['val_episodes']}")


def finetune_grid_args(wildcards):
    f = config["baselines"]["finetune"]
    return (f"--lrs {','.join(map(str, f['lrs']))} --decays {','.join(map(str, f['decays']))}"
            f" --episodes {f['val_episodes']}")


rule pretrain:
    input:
        manifest=f"{DATA}/manifest.json",
    output:
        best=f"{PRETRAIN}/best.pt",
        curve=f"{PRETRAIN}/curve.csv",
        run=f"{PRETRAIN}/run.json",
    params:
        threads=TORCH_THREADS,
        args=pretrain_args,
        data=DATA,
        out=PRETRAIN,
        device=config["device"],
    threads: JOB_CORES
    resources:
        gpu=GPU,
    log:
        "logs/pretrain/{dataset}/seed{seed}.log",
    benchmark:
        "benchmarks/pretrain/{dataset}/seed{seed}.tsv"
    shell:
        "reproml pretrain --data {params.data:q} {params.args} --seed {wildcards.seed:q} --device {params.device:q}"
        " --threads {params.threads} --replace --out {params.out:q} > {log:q} 2>&1"


rule select_finetune:
    input:
        manifest=f"{DATA}/manifest.json",
        pretrained=f"{PRETRAIN}/best.pt",
    output:
        grid=f"{FINETUNE_GRID}/grid.csv",
        choice=f"{FINETUNE_GRID}/choice.json",
    params:
        threads=TORCH_THREADS,
        episode=episode_args,
        grid=finetune_grid_args,
        data=DATA,
        out=FINETUNE_GRID,
        seed=config["eval_seed"],
        device=config["device"],
    threads: JOB_CORES
    resources:
        gpu=GPU,
    log:
        "logs/select_finetune/{dataset}/{setting}/seed{seed}.log",
    benchmark:
        "benchmarks/select_finetune/{dataset}/{setting}/seed{seed}.tsv"
    shell:
        "reproml select-finetune --data {params.data:q} --checkpoint {input.pretrained:q} {params.episode} {params.grid}"
        " --seed {params.seed} --device {params.device:q} --threads {params.threads} --out {params.out:q} > {log:q} 2>&1"
