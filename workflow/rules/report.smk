rule aggregate:
    input:
        evals=all_evals(),
        published="report/published-results.yaml",
    output:
        summary="results/summary.csv",
    log:
        "logs/aggregate.log",
    benchmark:
        "benchmarks/aggregate.tsv"
    shell:
        "reproml aggregate --published {input.published} --out {output.summary} {input.evals} > {log} 2>&1"


rule figures:
    input:
        runs=all_runs("run.json"),
        curves=all_runs("curve.csv"),
        gates=all_gates(),
    output:
        expand("results/figures/{kind}_{setting}.png", kind=["curve", "gates"], setting=SETTINGS),
    log:
        "logs/figures.log",
    benchmark:
        "benchmarks/figures.tsv"
    shell:
        "reproml figures --out results/figures {input.runs} --gates {input.gates} > {log} 2>&1"


rule report:
    input:
        summary="results/summary.csv",
        figures=expand("results/figures/{kind}_{setting}.png", kind=["curve", "gates"], setting=SETTINGS),
        runs=all_runs("run.json"),
        evals=all_evals(),
        pretrain_runs=expand(f"{PRETRAIN}/run.json", dataset=DATASET, seed=SEEDS) if BASELINE_SETTINGS and BASELINES else [],
        published="report/published-results.yaml",
        manifest=f"{DATA}/manifest.json",
        templates=Path("report/templates").glob("*.j2"),
    output:
        html="results/report/report.html",
        tex="results/report/report.tex",
    params:
        config=json.dumps(config, sort_keys=True),
        # relative to the working directory: the report shows a command to rerun, not this machine's paths
        configfiles=" ".join(os.path.relpath(f) for f in workflow.overwrite_configfiles) or "config/config.yaml",
    log:
        "logs/report.log",
    benchmark:
        "benchmarks/report.tsv"
    shell:
        "reproml report --templates report/templates --summary {input.summary} --manifest {input.manifest} --figures results/figures"
        " --benchmarks benchmarks --config-json {params.config:q} --configfiles {params.configfiles:q}"
        " --runs {input.runs} --evals {input.evals} --pretrain-runs {input.pretrain_runs} --published {input.published}"
        " --out results/report > {log} 2>&1"


rule report_pdf:
    input:
        tex="results/report/report.tex",
    output:
        pdf="results/report/report.pdf",
    log:
        "logs/report_pdf.log",
    benchmark:
        "benchmarks/report_pdf.tsv"
    shell:
        "latexmk -pdf -interaction=nonstopmode -halt-on-error -cd {input.tex} > {log} 2>&1"
