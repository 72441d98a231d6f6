# reproml: raw data -> meta-training per (setting, seed) -> test episodes -> tables, figures -> report.
# Run `snakemake --cores 4` (demo data) or add `--configfile config/paper.yaml` (miniImagenet, paper budgets).

# The default config applies only when no --configfile is given, so that a config file
# (config/smoke.yaml, config/paper.yaml) defines the settings alone, not merged into the default's.
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/meta_lstm.smk"
include: "workflow/rules/baselines.smk"
include: "workflow/rules/matching_nets.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


# On a cluster (profiles/slurm) these run on the submitting machine: they are light and need
# no GPU, and waiting in a queue for them would cost more than running them.
localrules:
    all,
    aggregate,
    figures,
    report,
    report_pdf,


rule all:
    input:
        "results/summary.csv",
        "results/report/report.html",
        "results/report/report.tex",
        ["results/report/report.pdf"] if LATEXMK else [],
        rules.publish_report.output if "publish" in config else [],
