"""The Snakemake DAG end to end on config/smoke.yaml, in a copy of the workflow files."""

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import REAL_DATA, make_folders, make_ravi, needs_real_data
from test_data import break_truncated_csv, break_unreadable_image

pytestmark = pytest.mark.slow  # every test here runs Snakemake

REPO = Path(__file__).resolve().parents[1]
WORKFLOW_FILES = ["Snakefile", "workflow", "config", "report", "profiles"]


def workdir(tmp_path):
    tmp_path.mkdir(parents=True, exist_ok=True)
    for name in WORKFLOW_FILES:
        source = REPO / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, tmp_path / name)
    return tmp_path


def snakemake(cwd, *args, background=False, cores=2):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    command = [sys.executable, "-m", "snakemake", "--cores", str(cores), *args]
    if background:
        # A shell's background job inherits SIGINT ignored; give the interrupt test its Ctrl-C back.
        return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)


def summary_rows(cwd):
    return list(csv.DictReader(open(cwd / "results" / "summary.csv")))


# One DAG serves the module's tests: config/smoke-analyses.yaml (config/smoke.yaml's settings, each
# also with a fixed image pool) with its transfer dataset replaced by a 30x30 grayscale one with
# 5 images a class: enough for 5w1s with 4 queries, too few for 5w2s (skipped, with the reason).
SMOKE_CONFIG = ("--configfile", "config/smoke-analyses.yaml", "gray.yaml")


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    cwd = workdir(tmp_path_factory.mktemp("smoke"))
    make_folders(cwd / "gray", per_class=5, size=(30, 30), mode="L")
    (cwd / "gray.yaml").write_text("transfer: [{name: gray, format: folders, root: gray}]\npublish: reports/smoke\n")
    result = snakemake(cwd, *SMOKE_CONFIG)
    assert result.returncode == 0, result.stderr[-3000:]
    return cwd


def test_smoke_dag_produces_summary_and_report(smoke_run):
    rows = [r for r in summary_rows(smoke_run) if r["image_pool"] != "6" and r["eval_dataset"] == r["dataset"]]
    methods = ["meta_lstm", "baseline_finetune", "baseline_nearest_neighbor", "matching_net", "matching_net_fce",
               "pixel_nearest_neighbor"]
    assert [(r["setting"], r["method"]) for r in rows] == [(s, m) for s in ("5w1s", "5w2s") for m in methods]
    for row in rows:
        assert row["dataset"] == "demo-smoke" and int(row["episodes"]) == 6
        assert 0 <= float(row["acc_mean"]) <= 100 and float(row["ci95"]) >= 0
        assert (row["meta_lstm_minus_this"] == "") == (row["method"] == "meta_lstm")
    assert rows[0]["paper_mean"] == "43.4400" and rows[0]["verdict"] == "not comparable (demo data)"
    assert rows[1]["paper_mean"] == "28.8600" and rows[2]["paper_mean"] == "41.0800"
    meta = list(csv.DictReader(open(smoke_run / "results/eval/demo-smoke/5w1s/seed0/meta_lstm/episodes.csv")))
    assert rows[3]["paper_mean"] == "43.4000" and rows[4]["paper_mean"] == "43.5600"
    for row, folder in zip(rows[1:6], ("seed0/baseline_finetune", "seed0/baseline_nearest_neighbor",
                                       "seed0/matching_net", "seed0/matching_net_fce",
                                       "untrained/pixel_nearest_neighbor")):
        other = list(csv.DictReader(open(smoke_run / f"results/eval/demo-smoke/5w1s/{folder}/episodes.csv")))
        assert [o["episode_sha"] for o in other] == [m["episode_sha"] for m in meta]
        differences = [float(m["accuracy"]) - float(o["accuracy"]) for m, o in zip(meta, other)]
        assert float(row["meta_lstm_minus_this"]) == pytest.approx(sum(differences) / len(differences), abs=1e-3)
    html = (smoke_run / "results" / "report" / "report.html").read_text()
    assert "Demo data." in html and "data:image/png;base64," in html and "5w2s" in html
    for text in ("Pixel nearest-neighbour", "Baseline fine-tune", "Meta-LSTM minus this", "Summary: the claims",
                 "Not judged (demo data)", "gate values for 5w1s", "Chosen lr", "What differs from the paper, and why",
                 "<td>meta-training</td>", "5w1s: meta-training episodes", "<td>Matching Networks training</td>",
                 "Matching Networks and Matching Networks FCE: 5-way 5-shot training episodes, each"):
        assert text in html, text
    tex = (smoke_run / "results" / "report" / "report.tex").read_text()
    assert r"\begin{tabular}" in tex and r"\toprule" in tex and "demo-smoke" in tex
    assert r"{figures/gates\_5w2s.png}" in tex and "Summary: the claims" in tex and r"\section{Compute}" in tex
    per_job = ["prepare_data/demo-smoke", "train_meta_lstm/demo-smoke/5w1s/seed0", "pretrain/demo-smoke/seed0",
               "select_finetune/demo-smoke/5w2s/seed0", "evaluate/demo-smoke/5w1s/seed0/baseline_finetune",
               "evaluate/demo-smoke/5w1s/seed0/baseline_nearest_neighbor", "evaluate/demo-smoke/5w2s/untrained/"
               "pixel_nearest_neighbor", "evaluate/demo-smoke/5w2s/seed0/meta_lstm",
               "train_matching_net/demo-smoke/matching_net_fce/seed0", "evaluate/demo-smoke/5w2s/seed0/matching_net",
               "evaluate_cross_shot/demo-smoke/5w1s/5w2s/seed0/meta_lstm", "aggregate", "figures", "report"]
    for job in per_job:
        assert (smoke_run / "logs" / f"{job}.log").is_file(), job
        assert (smoke_run / "benchmarks" / f"{job}.tsv").is_file(), job


def test_the_student_analyses_pool_and_transfer_rows(smoke_run):
    cwd = smoke_run
    rows = summary_rows(cwd)
    pooled = [r for r in rows if r["setting"].endswith("-pool6")]
    assert {(r["method"], r["image_pool"]) for r in pooled} == {("meta_lstm", "6")}  # no baselines for a pool
    reason = "has 5 images; a 2-shot episode with 4 queries needs 6"
    transfer = [r for r in rows if r["eval_dataset"] != r["dataset"]]
    assert {(r["dataset"], r["eval_dataset"]) for r in transfer} == {("demo-smoke", "gray")} and len(transfer) == 14
    for r in transfer:
        if r["k_shot"] == "1":
            assert int(r["episodes"]) == 6 and r["verdict"] == "transfer (no published figure)"
        else:
            assert r["episodes"] == "0" and r["verdict"].startswith("skipped: ") and reason in r["verdict"]
    gray = cwd / "results" / "transfer" / "demo-smoke" / "gray" / "5w1s"
    shas = {folder: [e["episode_sha"] for e in csv.DictReader(open(gray / folder / "episodes.csv"))]
            for folder in ("seed0/meta_lstm", "seed0/baseline_finetune", "untrained/pixel_nearest_neighbor")}
    assert len({tuple(v) for v in shas.values()}) == 1  # every method on the same transfer episodes
    with np.load(cwd / "results" / "data" / "transfer" / "gray" / "test.npz") as npz:
        assert npz["images"].shape == (25, 3, 16, 16)

    html = (cwd / "results" / "report" / "report.html").read_text()
    for text in ("snakemake --cores 2 --configfile config/smoke-analyses.yaml gray.yaml\n", "5w1s / 5w1s-pool6", "5w2s / 5w2s-pool6", "(P = 6)", "Transfer to other datasets",
                 "skipped: split &#39;test&#39;: class", "<code>gray</code> (format <code>folders</code>)"):
        assert text in html, text
    tex = (cwd / "results" / "report" / "report.tex").read_text()
    assert "5w1s-pool6" in tex and "Transfer to other datasets" in tex and "skipped: split" in tex
    for job in ("prepare_transfer_data/gray", "evaluate_transfer/demo-smoke/gray/5w1s/seed0/meta_lstm"):
        assert (cwd / "logs" / f"{job}.log").is_file(), job


def test_table_one_has_the_papers_rows_and_a_column_per_setting(smoke_run):
    from reproml.report.aggregate import published_lookup
    from reproml.report.tables import table_one

    summary = pd.read_csv(smoke_run / "results" / "summary.csv", dtype={"image_pool": str})
    home = summary[summary["eval_dataset"] == summary["dataset"]]
    table = table_one(home, *published_lookup(REPO / "report" / "published-results.yaml"))
    assert [s["name"] for s in table["settings"]] == ["5w1s", "5w1s-pool6", "5w2s", "5w2s-pool6"]
    assert table["settings"][2]["task"] == "5-way 2-shot"
    assert [r["method"] for r in table["rows"]] == [
        "Baseline fine-tune", "Baseline nearest-neighbour", "Matching Networks", "Matching Networks FCE",
        "Meta-learner LSTM", "Pixel nearest-neighbour", "Meta-learner LSTM, COMP6248 reproduction"]
    ours = home[(home["method"] == "meta_lstm") & (home["setting"] == "5w1s")].iloc[0]
    meta_lstm = table["rows"][4]["cells"]
    assert meta_lstm[0] == {"ours": f"{ours['acc_mean']:.2f} ± {ours['ci95']:.2f}", "published": "43.44 ± 0.77"}
    assert meta_lstm[2]["published"] == "–"  # no published 5-way 2-shot
    ours_mn = home[(home["method"] == "matching_net") & (home["setting"] == "5w1s")].iloc[0]
    assert table["rows"][2]["cells"][0] == {"ours": f"{ours_mn['acc_mean']:.2f} ± {ours_mn['ci95']:.2f}",
                                            "published": "43.40 ± 0.78"}
    assert table["rows"][3]["cells"][1] == {"ours": "–", "published": "–"}  # trained once: no image pool
    assert table["rows"][0]["cells"][1] == {"ours": "–", "published": "–"}  # baselines skip an image pool
    assert table["rows"][6]["cells"][0] == {"ours": "", "published": "42.59"}
    html = (smoke_run / "results" / "report" / "report.html").read_text()
    assert f"{meta_lstm[0]['ours']}<br><span class=\"muted\">published 43.44 ± 0.77</span>" in html
    tex = (smoke_run / "results" / "report" / "report.tex").read_text()
    assert r"\published{published 43.44 \ensuremath{\pm} 0.77}" in tex
    assert (smoke_run / "results" / "figures" / "accuracy.png").stat().st_size > 10_000


def test_every_five_way_model_is_tested_at_every_shot(smoke_run):
    """The cross-shot table: a meta-learner per training setting on both settings' test episodes (the
    other shot with the original's inner loop for it), the Matching Networks and baselines trained once."""
    from reproml.report.tables import cross_shot_table

    summary = pd.read_csv(smoke_run / "results" / "summary.csv", dtype={"image_pool": str})
    home = summary[summary["eval_dataset"] == summary["dataset"]]
    crossed = sorted((smoke_run / "results" / "cross_shot").rglob("summary.json"))
    assert [p.relative_to(smoke_run / "results" / "cross_shot").parts[:3] for p in crossed] == [
        ("demo-smoke", "5w1s", "5w2s"), ("demo-smoke", "5w2s", "5w1s")]
    one_to_two = json.loads(crossed[0].read_text())
    assert (one_to_two["k_shot"], one_to_two["trained_k_shot"], one_to_two["inner_loop"]) == (
        2, 1, {"batch_size": 5, "epochs": 12})  # 2 shots: the 1-shot training config's own entry
    assert json.loads(crossed[1].read_text())["inner_loop"] == {"batch_size": 5, "epochs": 5}  # its 1-shot entry
    table = cross_shot_table(home, crossed)
    assert table["tests"] == ["5w1s", "5w2s"]
    assert [(r["method"], r["trained"]) for r in table["rows"]] == [
        ("Baseline fine-tune", "a 64-class classifier"), ("Baseline nearest-neighbour", "a 64-class classifier"),
        ("Matching Networks", "5-way 5-shot episodes"), ("Matching Networks FCE", "5-way 5-shot episodes"),
        ("Meta-learner LSTM", "5w1s"), ("Meta-learner LSTM", "5w2s")]
    off = json.loads(crossed[0].read_text())
    assert table["rows"][4]["cells"][1] == f"{off['acc_mean']:.2f} ± {off['ci95']:.2f}"
    matched = home[(home["method"] == "meta_lstm") & (home["setting"] == "5w1s")].iloc[0]
    assert table["rows"][4]["cells"][0] == f"{matched['acc_mean']:.2f} ± {matched['ci95']:.2f}"
    assert "Trained at one shot, tested at another" in (smoke_run / "results" / "report" / "report.html").read_text()


def test_the_report_is_published_and_in_snakemakes_own_report(smoke_run, monkeypatch):
    published = smoke_run / "reports" / "smoke"
    copies = {"report.html": "report/report.html", "summary.csv": "summary.csv",
              "figures/accuracy.png": "figures/accuracy.png", "figures/curve_5w2s-pool6.png": "figures/curve_5w2s-pool6.png"}
    for name, source in copies.items():
        assert (published / name).read_bytes() == (smoke_run / "results" / source).read_bytes(), name
    config = yaml.safe_load((published / "config.yaml").read_text())
    monkeypatch.chdir(smoke_run)  # the transfer dataset's root is relative to the workflow folder
    assert config == smoke_config(smoke_run)
    assert "# Remade by: snakemake --cores 2 --configfile config/smoke-analyses.yaml gray.yaml" in \
        (published / "config.yaml").read_text()
    result = snakemake(smoke_run, *SMOKE_CONFIG, "--report", "report.zip")
    assert result.returncode == 0, result.stderr[-3000:]
    names = zipfile.ZipFile(smoke_run / "report.zip").namelist()
    for name in ("report.html", "summary.csv", "accuracy.png", "curve_5w1s.png", "gates_5w2s.png"):
        assert any(n.endswith("/" + name) and "/data/raw/" in n for n in names), name


@pytest.mark.parametrize("cores", [2, 1, 4])
def test_a_second_run_has_nothing_to_do_whatever_its_cores(smoke_run, cores):
    result = snakemake(smoke_run, *SMOKE_CONFIG, "-n", cores=cores)
    assert result.returncode == 0
    assert "Nothing to be done" in result.stdout + result.stderr


def test_rerunning_one_setting_reruns_only_its_jobs(smoke_run):
    runs = smoke_run / "results" / "runs" / "demo-smoke"
    other_before = (runs / "5w1s" / "seed0" / "run.json").stat().st_mtime_ns
    target_before = (runs / "5w2s" / "seed0" / "run.json").stat().st_mtime_ns
    summary_before = (smoke_run / "results" / "summary.csv").stat().st_mtime_ns
    # the documented command: snakemake --cores 4 --forcerun results/runs/*/5w2s/*/run.json
    forced = [str(p.relative_to(smoke_run)) for p in smoke_run.glob("results/runs/*/5w2s/*/run.json")]
    result = snakemake(smoke_run, *SMOKE_CONFIG, "--forcerun", *forced)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (runs / "5w1s" / "seed0" / "run.json").stat().st_mtime_ns == other_before
    assert (runs / "5w2s" / "seed0" / "run.json").stat().st_mtime_ns > target_before
    assert (smoke_run / "results" / "summary.csv").stat().st_mtime_ns > summary_before
    log = (smoke_run / "logs" / "train_meta_lstm" / "demo-smoke" / "5w2s" / "seed0.log").read_text()
    assert "training afresh: it holds this run, finished at 4, and a rerun was asked for" in log  # from episode 0
    assert json.loads((runs / "5w2s" / "seed0" / "run.json").read_text())["history"][0]["at"] == 0


def planned_jobs(result):
    """{rule: count} of a dry run's job table."""
    table = (result.stdout + result.stderr).split("Job stats:")[1].split("\n\n")[0]
    rows = [line.split() for line in table.splitlines()[3:] if line.strip()]
    return {rule: int(count) for rule, count in rows if rule != "total"}


def test_editing_a_setting_reruns_exactly_what_it_touches_and_retrains_it(tmp_path):
    cwd = workdir(tmp_path)
    config = ("--configfile", "config/smoke.yaml", "edit.yaml")
    (cwd / "edit.yaml").write_text("threads: 1\n")
    assert snakemake(cwd, *config).returncode == 0
    run = cwd / "results" / "runs" / "demo-smoke" / "5w1s" / "seed0"
    curve_before = (run / "curve.csv").read_text()

    (cwd / "edit.yaml").write_text("settings: {5w1s: {lr: 0.005}}\n")
    planned = snakemake(cwd, *config, "-n")
    assert planned_jobs(planned) == {"train_meta_lstm": 1, "evaluate_meta_lstm": 1, "evaluate_cross_shot": 1,
                                     "aggregate": 1, "figures": 1, "report": 1, "all": 1}
    assert "results/runs/demo-smoke/5w1s/seed0/best.pt" in planned.stdout + planned.stderr  # that setting's
    result = snakemake(cwd, *config)
    assert result.returncode == 0, result.stderr[-3000:]
    log = (cwd / "logs" / "train_meta_lstm" / "demo-smoke" / "5w1s" / "seed0.log").read_text()
    assert "training afresh: it holds a run with settings.lr 0.001 (this run: 0.005)" in log
    assert (run / "curve.csv").read_text() != curve_before
    assert "Nothing to be done" in (lambda r: r.stdout + r.stderr)(snakemake(cwd, *config, "-n", cores=1))

    (cwd / "edit.yaml").write_text("settings: {5w1s: {lr: 0.005, iterations: 2}}\n")  # lowered: retrained
    result = snakemake(cwd, *config)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [r["iteration"] for r in csv.DictReader(open(run / "curve.csv"))] == ["2"]
    html = (cwd / "results" / "report" / "report.html").read_text()
    assert "Trained afresh in the place of an earlier run in the same folder" in html
    assert "5w1s seed 0 (already trained for 4 iterations, more than --iterations 2)" in html


@pytest.mark.parametrize("override, message", [
    ("dataset: {colour: red}", "config: unknown key 'dataset.colour'"),
    ("settings: {5w1s: {k_shot: -1}}", "config: settings.5w1s.k_shot: -1 is less than the minimum of 1"),
    ("dataset: {name: x, format: ravi, root: /nowhere/at/all}", "config: dataset.root: /nowhere/at/all does not exist"),
])
def test_a_wrong_config_stops_before_any_job(tmp_path, override, message):
    cwd = workdir(tmp_path)
    (cwd / "wrong.yaml").write_text(override + "\n")
    result = snakemake(cwd, "--configfile", "config/smoke.yaml", "wrong.yaml")
    assert result.returncode != 0
    assert message in result.stderr
    assert len([line for line in result.stderr.splitlines() if line.startswith("config:")]) == 1
    assert "Traceback" not in result.stderr
    assert not (cwd / "results").exists()


# The fault tests need only one setting's chain (prepare, train, evaluate), not the whole DAG.
CHAIN_EVAL = Path("results/eval/demo-smoke/5w1s/seed0/meta_lstm")
ONE_CHAIN = (str(CHAIN_EVAL / "summary.json"), "--configfile", "config/smoke.yaml", "long.yaml")


def start_until_first_checkpoint(cwd):
    """Start ONE_CHAIN with long.yaml in the background; return it and the 5w1s training's
    last.pt as soon as that exists."""
    process = snakemake(cwd, *ONE_CHAIN, background=True)
    last = cwd / "results" / "runs" / "demo-smoke" / "5w1s" / "seed0" / "last.pt"
    deadline = time.time() + 300
    while not last.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.02)
    assert last.exists(), "training never wrote a checkpoint"
    return process, last


def test_more_cores_than_the_machine_has_run_no_more_jobs_at_once_than_it_has(tmp_path):
    cwd = workdir(tmp_path)
    cpus = os.cpu_count()
    for cores, held in ((cpus, "1"), (2 * cpus, "2")):
        result = snakemake(cwd, "--configfile", "config/smoke.yaml", "--cores", str(cores), "-n", "-p")
        assert result.returncode == 0, result.stderr[-3000:]
        torch_jobs = [job for job in (result.stdout + result.stderr).split("rule ")[1:] if "--threads" in job]
        assert torch_jobs and all("--threads 1 " in job for job in torch_jobs)
        held_by_job = [re.findall(r"threads: (\d+)", job) or ["1"] for job in torch_jobs]
        assert held_by_job == [[held]] * len(torch_jobs)


def test_interrupted_training_resumes_without_redoing_finished_jobs(tmp_path):
    cwd = workdir(tmp_path)
    (cwd / "long.yaml").write_text("settings: {5w1s: {iterations: 60, val_every: 3}}\n")
    process, last = start_until_first_checkpoint(cwd)
    os.killpg(process.pid, signal.SIGINT)
    process.wait(timeout=60)
    summary = cwd / CHAIN_EVAL / "summary.json"
    assert not summary.exists()
    manifest = cwd / "results" / "data" / "demo-smoke" / "manifest.json"
    prepared_at = manifest.stat().st_mtime_ns

    result = snakemake(cwd, *ONE_CHAIN)
    assert result.returncode == 0, result.stderr[-3000:]
    assert manifest.stat().st_mtime_ns == prepared_at and summary.exists()
    log = (cwd / "logs" / "train_meta_lstm" / "demo-smoke" / "5w1s" / "seed0.log").read_text()
    assert "resuming from iteration" in log
    curve = list(csv.DictReader(open(last.parent / "curve.csv")))
    assert [int(r["iteration"]) for r in curve] == list(range(3, 61, 3))


def processes_in(cwd, *words):
    """PIDs of this machine's processes that run in `cwd` with all of `words` in their command line."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            command = (entry / "cmdline").read_bytes().split(b"\0")
            here = os.readlink(entry / "cwd") == str(cwd)
        except (OSError, ValueError):
            continue
        if here and all(word.encode() in command for word in words):
            found.append(int(entry.name))
    return found


def test_a_killed_training_job_resumes_to_the_uninterrupted_results_and_a_second_pipeline_is_refused(tmp_path):
    longer = "settings: {5w1s: {iterations: 300, val_every: 10}}\n"  # long enough to be caught running
    whole = workdir(tmp_path / "whole")
    (whole / "long.yaml").write_text(longer)
    uninterrupted = snakemake(whole, *ONE_CHAIN, background=True)  # alongside: each job uses one thread

    cwd = workdir(tmp_path / "killed")
    (cwd / "long.yaml").write_text(longer)
    first, _ = start_until_first_checkpoint(cwd)

    trainers = processes_in(cwd, "train", "5w1s")
    assert trainers, "the training job finished before it could be killed"
    for pid in trainers:
        os.kill(pid, signal.SIGSTOP)  # so that the first pipeline cannot finish while the second starts
    second = snakemake(cwd, *ONE_CHAIN)
    assert second.returncode != 0
    assert "Directory cannot be locked" in second.stderr and "Traceback" not in second.stderr

    for pid in trainers:
        os.kill(pid, signal.SIGKILL)  # as a pre-empted cluster job dies: no chance to clean up
    first.wait(timeout=300)
    assert first.returncode != 0
    assert not (cwd / "results" / "eval").exists()

    rerun = snakemake(cwd, *ONE_CHAIN)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    log = (cwd / "logs" / "train_meta_lstm" / "demo-smoke" / "5w1s" / "seed0.log").read_text()
    assert "resuming from iteration" in log
    assert uninterrupted.wait(timeout=600) == 0
    for name in ("results/runs/demo-smoke/5w1s/seed0/curve.csv", CHAIN_EVAL / "episodes.csv"):
        assert (cwd / name).read_text() == (whole / name).read_text(), name


@pytest.mark.parametrize("breaker", [break_unreadable_image, break_truncated_csv])
def test_a_broken_source_stops_the_pipeline_with_one_line_and_no_outputs(tmp_path, breaker):
    root, message = breaker(make_ravi(tmp_path / "source"))
    cwd = workdir(tmp_path / "run")
    (cwd / "broken.yaml").write_text(f"dataset: {{name: broken, format: ravi, root: {root}, image_size: 16}}\n")
    result = snakemake(cwd, "--configfile", "config/smoke.yaml", "broken.yaml")
    assert result.returncode != 0
    log = (cwd / "logs" / "prepare_data" / "broken.log").read_text().strip().splitlines()
    assert [line for line in log if "error" in line] == [log[-1]]  # above it, only progress bars
    assert log[-1].startswith("reproml prepare: error: ") and message in log[-1]
    assert not (cwd / "results" / "data").exists() or not any((cwd / "results" / "data").iterdir())
    assert not (cwd / "results" / "summary.csv").exists()
    # Snakemake holds no half-finished job to finish: the next run starts the preparation afresh
    assert "incomplete" not in snakemake(cwd, "--configfile", "config/smoke.yaml", "broken.yaml", "-n").stdout.lower()


@needs_real_data
def test_the_same_pipeline_runs_on_real_data_by_overriding_the_dataset(tmp_path):
    cwd = workdir(tmp_path)
    (cwd / "real.yaml").write_text(
        f"dataset: {{name: miniimagenet-100, format: ravi, root: {REAL_DATA}, image_size: 84}}\n")
    result = snakemake(cwd, "--configfile", "config/smoke.yaml", "real.yaml")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = summary_rows(cwd)
    assert {r["dataset"] for r in rows} == {"miniimagenet-100"} and len(rows) == 12
    assert [r["method"] for r in rows[:5]] == ["meta_lstm", "baseline_finetune", "baseline_nearest_neighbor",
                                               "matching_net", "matching_net_fce"]
    assert all(r["verdict"] in ("consistent", "lower", "higher") for r in rows[:5])
    manifest = json.loads((cwd / "results" / "data" / "miniimagenet-100" / "manifest.json").read_text())
    assert manifest["splits"]["train"]["classes"] == 64 and manifest["image_size"] == 84


def smoke_config(cwd):
    """The configuration the module's DAG ran with (its files laid over each other, as Snakemake does)."""
    from reproml.config import validate_config

    config = yaml.safe_load((cwd / "config" / "smoke-analyses.yaml").read_text())
    config.update(yaml.safe_load((cwd / "gray.yaml").read_text()))
    return validate_config(config, REPO / "workflow" / "schemas" / "config.schema.yaml")


def test_report_escapes_html_and_latex(smoke_run, tmp_path, monkeypatch):
    from reproml.report.render import latex_escape, render_report

    assert latex_escape(r"a_b & 50% $x# {y} ~^\ <z>") == (r"a\_b \& 50\% \$x\# \{y\} \textasciitilde{}"
                                                          r"\textasciicircum{}\textbackslash{} \textless{}z\textgreater{}")
    data = tmp_path / "data"
    shutil.copytree(smoke_run / "results" / "data" / "demo-smoke", data)
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["name"] = "<script>alert(1)</script> & 100%_x"
    (data / "manifest.json").write_text(json.dumps(manifest))
    results = smoke_run / "results"
    monkeypatch.chdir(smoke_run)  # the transfer dataset's root is relative to the workflow folder
    render_report(REPO / "report" / "templates", results / "summary.csv", data / "manifest.json",
                  results / "figures", smoke_run / "benchmarks", smoke_config(smoke_run),
                  "snakemake --cores 2 " + " ".join(SMOKE_CONFIG), sorted(map(str, results.glob("runs/*/*/*/run.json"))),
                  sorted(map(str, results.glob("eval/*/*/*/*/summary.json"))),
                  sorted(map(str, results.glob("pretrain/*/*/run.json"))), REPO / "report" / "published-results.yaml",
                  tmp_path / "report")
    html = (tmp_path / "report" / "report.html").read_text()
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt; &amp; 100%_x" in html
    tex = (tmp_path / "report" / "report.tex").read_text()
    assert r"\textless{}script\textgreater{}alert(1)\textless{}/script\textgreater{} \& 100\%\_x" in tex
