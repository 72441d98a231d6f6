OPTIONAL_TRAIN_KEYS = ("batch_size", "epochs", "bn_momentum")


def train_args(wildcards):
    s = config["settings"][wildcards.setting]
    args = [f"--n-way {s['n_way']} --k-shot {s['k_shot']} --n-query {s['n_query']}",
            f"--iterations {s['iterations']} --val-every {s['val_every']} --val-episodes {s['val_episodes']}",
            f"--lr {s['lr']} --grad-clip {s['grad_clip']}"]
    args += [f"--{key.replace('_', '-')} {s[key]}" for key in OPTIONAL_TRAIN_KEYS if key in s]
    args += [f"--deviation {name}" for name in config["deviations"] if name in META_LSTM_DEVIATIONS]
    args.append(f"--image-pool {s['image_pool']}")
    return " ".join(args)


rule train_meta_lstm:
    input:
        manifest=f"{DATA}/manifest.json",
    output:
        best=f"{RUN}/best.pt",
        curve=f"{RUN}/curve.csv",
        run=f"{RUN}/run.json",
    params:
        threads=TORCH_THREADS,
        args=train_args,
        data=DATA,
        out=RUN,
        device=config["device"],
    threads: JOB_CORES
    resources:
        gpu=GPU,
    log:
        "logs/train_meta_lstm/{dataset}/{setting}/seed{seed}.log",
    benchmark:
        "benchmarks/train_meta_lstm/{dataset}/{setting}/seed{seed}.tsv"
    shell:
        "reproml train --data {params.data:q} {params.args} --seed {wildcards.seed:q} --label {wildcards.setting:q}"
        " --device {params.device:q} --threads {params.threads} --replace --out {params.out:q} > {log:q} 2>&1"
