FIGURES = ["results/figures/accuracy.png"] + expand("results/figures/{kind}_{setting}.png", kind=["curve", "gates"],
                                                    setting=SETTINGS)
# Snakemake's own report (snakemake --report report.zip) shows these, with its provenance and runtimes.
FIGURE_REPORT = {"accuracy": ("accuracy.rst", "Results"), "curve": ("curve.rst", "Validation curves"),
                 "gates": ("gates.rst", "Gate values")}


def reported(path, caption, category):
    return report(path, caption=f"../report/{caption}", category=category)


def reported_figure(path):
    caption, category = FIGURE_REPORT[Path(path).stem.split("_")[0]]
    return reported(path, caption, category)


def rerun_command():
    """The command that made this run, its config files relative to the working directory (a report
    shows how to remake it, not this machine's paths) and its --cores as given; a run on an executor
    profile gives no cores, and its report names the local command of the README."""
    files = [f for f in map(os.path.relpath, workflow.overwrite_configfiles) if f != "config/config.yaml"]
    try:
        command = f"snakemake --cores {workflow.cores}"
    except WorkflowError:
        command = README_COMMAND
    return command + (" --configfile " + " ".join(files) if files else "")


# Not a param: the report names the command that made it, and another --cores is no reason to remake it.
RERUN_COMMAND = rerun_command()


rule aggregate:
    input:
        evals=all_evals(),
        published="report/published-results.yaml",
    output:
        summary=reported("results/summary.csv", "summary.rst", "Results"),
    log:
        "logs/aggregate.log",
    benchmark:
        "benchmarks/aggregate.tsv"
    shell:
        "reproml aggregate --published {input.published:q} --out {output.summary:q} {input.evals:q} > {log:q} 2>&1"


rule figures:
    input:
        runs=all_runs("run.json"),
        curves=all_runs("curve.csv"),
        gates=all_gates(),
        summary="results/summary.csv",
        published="report/published-results.yaml",
    output:
        [reported_figure(path) for path in FIGURES],
    log:
        "logs/figures.log",
    benchmark:
        "benchmarks/figures.tsv"
    shell:
        "reproml figures --out results/figures {input.runs:q} --gates {input.gates:q} --summary {input.summary:q}"
        " --published {input.published:q} > {log:q} 2>&1"


rule report:
    input:
        summary="results/summary.csv",
        figures=FIGURES,
        runs=all_runs("run.json"),
        evals=all_evals(),
        cross_shot=all_cross_shot_evals(),
        pretrain_runs=expand(f"{PRETRAIN}/run.json", dataset=DATASET, seed=BASELINE_SEEDS) if BASELINE_SETTINGS and BASELINES else [],
        published="report/published-results.yaml",
        manifest=DATA.format(dataset=DATASET) + "/manifest.json",
        templates=[*Path("report/templates").glob("*.j2"), "report/templates/prose.yaml"],
    output:
        html=reported("results/report/report.html", "report.rst", "Reproducibility report"),
        tex="results/report/report.tex",
    params:
        config=json.dumps(config, sort_keys=True),
    log:
        "logs/report.log",
    benchmark:
        "benchmarks/report.tsv"
    shell:
        "reproml report --templates report/templates --summary {input.summary:q} --manifest {input.manifest:q} --figures results/figures"
        " --benchmarks benchmarks --config-json {params.config:q} --command {RERUN_COMMAND:q}"
        " --runs {input.runs:q} --evals {input.evals:q} --cross-shot {input.cross_shot:q} --pretrain-runs {input.pretrain_runs:q} --published {input.published:q}"
        " --out results/report > {log:q} 2>&1"


rule report_pdf:
    input:
        tex="results/report/report.tex",
    output:
        pdf=reported("results/report/report.pdf", "report.rst", "Reproducibility report"),
    log:
        "logs/report_pdf.log",
    benchmark:
        "benchmarks/report_pdf.tsv"
    shell:
        "latexmk -pdf -interaction=nonstopmode -halt-on-error -cd {input.tex:q} > {log:q} 2>&1"


# A copy of the rendered report where it can be committed and linked (config key `publish`).
if "publish" in config:
    PUBLISHED = ["report.html", "summary.csv", "config.yaml"] + (["report.pdf"] if LATEXMK else [])

    localrules:
        publish_report,

    rule publish_report:
        input:
            html="results/report/report.html",
            pdf=["results/report/report.pdf"] if LATEXMK else [],
            summary="results/summary.csv",
            figures=FIGURES,
        output:
            [f"{config['publish']}/{name}" for name in PUBLISHED]
            + [f"{config['publish']}/figures/{Path(path).name}" for path in FIGURES],
        params:
            config=json.dumps(config, sort_keys=True),
            out=config["publish"],
        log:
            "logs/publish_report.log",
        shell:
            "reproml publish {input.html:q} {input.pdf:q} {input.summary:q} --figures {input.figures:q}"
            " --config-json {params.config:q} --command {RERUN_COMMAND:q} --out {params.out:q} > {log:q} 2>&1"
