"""The command line end to end on tiny data: describe, train, evaluate, and their errors."""

import csv
import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REAL_DATA, kill_after_first_checkpoint, make_folders, needs_real_data, run_cli
from reproml.statistics import summarize

TINY = ["--n-way", 3, "--k-shot", 1, "--n-query", 3, "--epochs", 2]


def test_describe_prints_the_counts(capsys):
    status, out, _ = run_cli(capsys, "describe", "--n-way", 5, "--image-size", 84)
    report = json.loads(out)
    assert status == 0
    assert report["learner"]["parameters"] == 32901
    assert report["meta_learner"]["per_layer"]["layer2"] == 32947
    assert report["meta_learner"]["parameters"] == 2080 + 32947


def train(capsys, data, out, *extra, iterations=4, val_every=2):
    return run_cli(capsys, "train", "--data", data, *TINY, "--iterations", iterations, "--val-every", val_every,
                   "--val-episodes", 3, "--seed", 0, "--device", "cpu", "--out", out, "--quiet", *extra)


def test_train_then_evaluate(tmp_path, capsys, prepared):
    status, out, err = train(capsys, prepared, tmp_path / "run")
    assert status == 0, err
    run = tmp_path / "run"
    rows = list(csv.DictReader(open(run / "curve.csv")))
    assert [r["iteration"] for r in rows] == ["2", "4"]
    assert list(rows[0]) == ["iteration", "train_loss", "train_acc", "val_acc", "val_ci95"]
    summary = json.loads((run / "run.json").read_text())
    best = max(rows, key=lambda r: float(r["val_acc"]))
    assert summary["best_iteration"] == int(best["iteration"])
    assert torch.load(run / "best.pt", weights_only=True)["iteration"] == summary["best_iteration"]

    status, out, err = run_cli(capsys, "evaluate", "--data", prepared, "--checkpoint", run / "best.pt",
                               "--episodes", 6, "--seed", 0, "--device", "cpu", "--out", tmp_path / "eval", "--quiet")
    assert status == 0, err
    accuracies = [float(r["accuracy"]) for r in csv.DictReader(open(tmp_path / "eval" / "episodes.csv"))]
    result = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert len(accuracies) == result["episodes"] == 6
    for key, value in summarize(accuracies).items():
        assert result[key] == pytest.approx(value)
    assert all(0 <= a <= 100 and abs(a * 9 / 100 - round(a * 9 / 100)) < 1e-4 for a in accuracies)  # 9 queries

    # the same seed gives the same numbers
    run_cli(capsys, "evaluate", "--data", prepared, "--checkpoint", run / "best.pt", "--episodes", 6,
            "--seed", 0, "--device", "cpu", "--out", tmp_path / "again", "--quiet")
    assert (tmp_path / "again" / "episodes.csv").read_text() == (tmp_path / "eval" / "episodes.csv").read_text()


def test_checkpoint_must_match_the_request(tmp_path, capsys, prepared):
    train(capsys, prepared, tmp_path / "run", iterations=2)
    ckpt = tmp_path / "run" / "best.pt"
    status, _, err = run_cli(capsys, "evaluate", "--data", prepared, "--checkpoint", ckpt, "--n-way", 5,
                             "--episodes", 2, "--out", tmp_path / "e")
    assert status == 2 and "trained for 3-way episodes, not --n-way 5" in err and err.count("\n") == 1

    other = tmp_path / "data20"
    from conftest import make_folders
    run_cli(capsys, "prepare", "--format", "folders", "--root", make_folders(tmp_path / "src"), "--image-size", 20,
            "--out", other, "--quiet")
    status, _, err = run_cli(capsys, "evaluate", "--data", other, "--checkpoint", ckpt, "--episodes", 2,
                             "--out", tmp_path / "e")
    assert status == 2 and "trained on 16x16 images, but" in err and "holds 20x20" in err

    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    status, _, err = run_cli(capsys, "evaluate", "--data", prepared, "--checkpoint", tmp_path / "junk.pt",
                             "--episodes", 2, "--out", tmp_path / "e")
    assert status == 2 and "junk.pt: not a readable meta-learner checkpoint (cut short" in err
    assert not (tmp_path / "e").exists()


def test_too_many_shots_for_the_data(tmp_path, capsys, prepared):
    status, _, err = run_cli(capsys, "train", "--data", prepared, "--n-way", 3, "--k-shot", 10, "--iterations", 1,
                             "--out", tmp_path / "run", "--quiet")
    assert status == 2 and "class 'train_c0' has 20 images; a 10-shot episode with 15 queries needs 25" in err
    status, _, err = run_cli(capsys, "train", "--data", prepared, "--n-way", 6, "--iterations", 1,
                             "--out", tmp_path / "run", "--quiet")
    assert status == 2 and "split 'val' has 5 classes; a 6-way episode needs at least 6" in err


def test_user_errors_print_no_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "reproml", "train", "--data", tmp_path / "missing",
                             "--out", tmp_path / "run"], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"reproml train: error: {tmp_path / 'missing'}: no manifest.json; create the folder with 'reproml prepare'"]


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_same_numbers(tmp_path, capsys, prepared):
    assert train(capsys, prepared, tmp_path / "whole", iterations=30, val_every=3)[0] == 0

    kill_after_first_checkpoint(["train", "--data", prepared, *TINY, "--iterations", 30, "--val-every", 3,
                                 "--val-episodes", 3, "--seed", 0, "--device", "cpu", "--out", tmp_path / "killed",
                                 "--quiet"], tmp_path / "killed" / "last.pt")
    interrupted_at = torch.load(tmp_path / "killed" / "last.pt", weights_only=True)["state"]["iteration"]
    assert interrupted_at < 30, "the run finished before it could be killed"
    assert not (tmp_path / "killed" / "run.json").exists()

    status, _, err = train(capsys, prepared, tmp_path / "killed", iterations=30, val_every=3)
    assert status == 0, err
    assert (tmp_path / "killed" / "curve.csv").read_text() == (tmp_path / "whole" / "curve.csv").read_text()
    whole = torch.load(tmp_path / "whole" / "best.pt", weights_only=True)
    resumed = torch.load(tmp_path / "killed" / "best.pt", weights_only=True)
    assert whole["iteration"] == resumed["iteration"]
    for name, tensor in whole["meta_learner"].items():
        assert torch.equal(tensor, resumed["meta_learner"][name]), name


def test_a_full_disk_while_checkpointing_keeps_the_previous_checkpoint(tmp_path, capsys, prepared, monkeypatch):
    assert train(capsys, prepared, tmp_path / "run", iterations=4, val_every=2)[0] == 0
    last = tmp_path / "run" / "last.pt"
    before = last.read_bytes()

    def full_disk(obj, path):
        Path(path).write_bytes(b"the first bytes of a checkpoint")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", full_disk)
    status, _, err = train(capsys, prepared, tmp_path / "run", iterations=8, val_every=2)
    assert status == 2
    assert err.splitlines()[-1].startswith(f"reproml train: error: {last}: could not write it (No space left on device)")
    assert "Traceback" not in err
    assert last.read_bytes() == before
    assert not [p.name for p in last.parent.iterdir() if p.name.endswith(".tmp")]

    monkeypatch.undo()  # space again: the run goes on from its last checkpoint, as if nothing happened
    assert train(capsys, prepared, tmp_path / "run", iterations=8, val_every=2)[0] == 0
    assert train(capsys, prepared, tmp_path / "whole", iterations=8, val_every=2)[0] == 0
    assert (tmp_path / "run" / "curve.csv").read_text() == (tmp_path / "whole" / "curve.csv").read_text()


def test_rerunning_a_finished_run_does_nothing_and_other_settings_are_refused(tmp_path, capsys, prepared):
    train(capsys, prepared, tmp_path / "run", iterations=2)
    before = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    curve = (tmp_path / "run" / "curve.csv").read_text()
    (tmp_path / "run" / "best.pt").unlink()  # as Snakemake does with the outputs of an interrupted job
    assert train(capsys, prepared, tmp_path / "run", iterations=2)[0] == 0
    after = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    assert after["iteration"] == before["iteration"] and (tmp_path / "run" / "curve.csv").read_text() == curve
    assert all(torch.equal(before["meta_learner"][k], after["meta_learner"][k]) for k in before["meta_learner"])
    status, _, err = train(capsys, prepared, tmp_path / "run", "--lr", "0.01", iterations=2)
    assert status == 2 and "holds a run with settings.lr 0.001 (this run: 0.01); use another --out, or " \
        "--replace" in err


def folder_digest(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_a_run_is_continued_only_where_that_equals_training_it_afresh(tmp_path, capsys, prepared):
    """Resume, extend, refuse, or with --replace (the pipeline's) train afresh: one case each."""
    run, whole = tmp_path / "run", tmp_path / "whole"
    assert train(capsys, prepared, whole, iterations=6)[0] == 0
    assert train(capsys, prepared, run, iterations=4)[0] == 0

    status, _, err = train(capsys, prepared, run, iterations=6)  # extended: 4 is on the every-2 schedule
    assert status == 0 and "extending a finished run from iteration 4" in err
    assert (run / "curve.csv").read_text() == (whole / "curve.csv").read_text()
    assert json.loads((run / "run.json").read_text())["history"] == [{"how": "afresh", "at": 0},
                                                                     {"how": "extended", "at": 4}]

    kept = folder_digest(run)
    for extra, iterations, reason in (
            (["--lr", "0.01"], 6, "holds a run with settings.lr 0.001 (this run: 0.01)"),
            (["--n-query", "2"], 6, "holds a run with settings.n_query 3 (this run: 2)"),
            ([], 4, "already trained for 6 iterations, more than --iterations 4"),
            (["--val-every", "4"], 8, "holds a run with val_every 2 (this run: 4)")):
        status, _, err = train(capsys, prepared, run, *extra, iterations=iterations)
        assert (status, err.splitlines()) == (2, [f"reproml train: error: {run}: {reason}; use another --out, or "
                                                  "--replace to train afresh in its place"]), extra
        assert folder_digest(run) == kept  # refused: nothing lost

    status, _, err = train(capsys, prepared, run, "--replace", iterations=4)  # lowered: retrained, and says so
    assert status == 0 and "training afresh: it already trained for 6 iterations" in err
    history = json.loads((run / "run.json").read_text())["history"]
    assert history == [{"how": "afresh", "at": 0, "reason": "already trained for 6 iterations, more than "
                                                           "--iterations 4"}]
    assert [r["iteration"] for r in csv.DictReader(open(run / "curve.csv"))] == ["2", "4"]

    status, _, err = train(capsys, prepared, run, "--replace", iterations=4)  # a rerun asked for: from 0
    assert status == 0 and "training afresh: it holds this run, finished at 4, and a rerun was asked for" in err
    status, _, err = train(capsys, prepared, run, iterations=4)  # the same command without: nothing to train
    assert status == 0 and "finished at 4; writing its outputs again" in err

    assert train(capsys, prepared, tmp_path / "odd", iterations=3)[0] == 0  # ends off the schedule (2, 3)
    status, _, err = train(capsys, prepared, tmp_path / "odd", iterations=6)
    assert status == 2 and "off the every-2 validation schedule" in err
    assert train(capsys, prepared, tmp_path / "odd", "--replace", iterations=6)[0] == 0
    assert (tmp_path / "odd" / "curve.csv").read_text() == (whole / "curve.csv").read_text()


@pytest.mark.slow
@needs_real_data
def test_a_few_iterations_on_real_miniimagenet(tmp_path, capsys):
    status, out, _ = run_cli(capsys, "prepare", "--format", "ravi", "--root", REAL_DATA, "--image-size", 84,
                             "--out", tmp_path / "data", "--quiet")
    assert status == 0
    assert "train: 64 classes, 6400 images" in out and "val: 16 classes, 1600 images" in out
    assert "test: 20 classes, 2000 images" in out
    status, _, err = run_cli(capsys, "train", "--data", tmp_path / "data", "--n-way", 5, "--k-shot", 1,
                             "--iterations", 2, "--val-every", 2, "--val-episodes", 2, "--device", "cpu",
                             "--out", tmp_path / "run", "--quiet")
    assert status == 0, err
    rows = list(csv.DictReader(open(tmp_path / "run" / "curve.csv")))
    assert len(rows) == 1 and 0 <= float(rows[0]["val_acc"]) <= 100


def test_bench_prints_json_per_setting(capsys):
    from reproml.bench import learner_forward_flops
    from reproml.settings import TaskSettings

    # conv1..conv4 at 84, 42, 21, 10 pixels (2 x H x W x C_out x C_in x 9), then Linear(800, 5)
    assert learner_forward_flops(TaskSettings(5, 1, 84)) == (
        2 * 84 * 84 * 32 * 3 * 9 + 2 * 42 * 42 * 32 * 32 * 9 + 2 * 21 * 21 * 32 * 32 * 9 + 2 * 10 * 10 * 32 * 32 * 9
        + 2 * 800 * 5) == 54_686_528
    status, out, _ = run_cli(capsys, "bench", "--settings", "5w1s,5w2s", "--image-size", 16, "--episodes", 1,
                             "--device", "cpu", "--json")
    results = json.loads(out)
    assert status == 0 and list(results) == ["5w1s", "5w2s"]
    for r in results.values():
        assert r["train_s_per_episode"] > 0 and r["eval_s_per_episode"] > 0 and r["matmul_gflops"] > 0
    assert results["5w1s"]["inner_steps"] == 12 and results["5w2s"]["inner_steps"] == 8
    status, _, err = run_cli(capsys, "bench", "--settings", "five-way", "--device", "cpu")
    assert status == 2 and "'five-way' is not of the form <N>w<K>s" in err


def test_training_with_an_image_pool_records_it_and_refuses_to_resume_without(tmp_path, capsys, prepared):
    status, _, err = train(capsys, prepared, tmp_path / "run", "--image-pool", 12)
    assert status == 0, err
    assert json.loads((tmp_path / "run" / "run.json").read_text())["image_pool"] == 12
    assert torch.load(tmp_path / "run" / "best.pt", weights_only=True)["image_pool"] == 12
    status, _, err = train(capsys, prepared, tmp_path / "run", iterations=6)  # all images now: another run
    assert status == 2 and "holds a run with image_pool 12 (this run: all)" in err
    with pytest.raises(SystemExit) as exit:  # argparse's own usage error
        train(capsys, prepared, tmp_path / "other", "--image-pool", "some")
    assert exit.value.code == 2
    assert "'some': expected 'all' or a positive number of images per class" in capsys.readouterr().err


def test_transfer_to_a_grayscale_dataset_of_another_size(tmp_path, capsys, prepared):
    """A meta-learner trained on 16x16 RGB images, tested on 30x30 grayscale ones with 6 images a
    class: prepared at 16x16 RGB; a setting that needs more images per class is skipped with its reason."""
    make_folders(tmp_path / "gray", per_class=6, size=(30, 30), mode="L")
    assert Image.open(next((tmp_path / "gray").rglob("*.png"))).mode == "L"
    status, _, err = run_cli(capsys, "prepare", "--format", "folders", "--root", tmp_path / "gray", "--image-size", 16,
                             "--name", "gray", "--out", tmp_path / "gray-16", "--quiet")
    assert status == 0, err
    with np.load(tmp_path / "gray-16" / "test.npz") as npz:
        images = npz["images"]
    assert images.shape == (5 * 6, 3, 16, 16)
    assert np.array_equal(images[:, 0], images[:, 1]) and np.array_equal(images[:, 1], images[:, 2])

    assert train(capsys, prepared, tmp_path / "run")[0] == 0  # 3-way 1-shot, 3 queries: 4 images a class
    evaluate = ["evaluate", "--data", tmp_path / "gray-16", "--checkpoint", tmp_path / "run" / "best.pt",
                "--train-dataset", "small", "--episodes", 4, "--device", "cpu", "--quiet"]
    status, out, err = run_cli(capsys, *evaluate, "--skip-if-too-small", "--out", tmp_path / "eval")
    assert status == 0, err
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert (summary["dataset"], summary["eval_dataset"], summary["episodes"]) == ("small", "gray", 4)
    assert "skipped" not in summary and len(list(csv.DictReader(open(tmp_path / "eval" / "episodes.csv")))) == 4

    status, out, err = run_cli(capsys, *evaluate, "--skip-if-too-small", "--n-query", 6, "--out", tmp_path / "skip")
    assert status == 0, err
    reason = "split 'test': class 'test_c0' has 6 images; a 1-shot episode with 6 queries needs 7"
    assert out.strip() == f"meta_lstm on gray: skipped: {reason}"
    summary = json.loads((tmp_path / "skip" / "summary.json").read_text())
    assert summary["skipped"] == reason and summary["episodes"] == 0 and "acc_mean" not in summary
    assert (tmp_path / "skip" / "episodes.csv").read_text().strip() == "episode,accuracy,episode_sha"

    status, _, err = run_cli(capsys, *evaluate, "--n-query", 6, "--out", tmp_path / "fail")
    assert status == 2 and err.strip() == f"reproml evaluate: error: {tmp_path / 'gray-16'}: {reason}"
    assert not (tmp_path / "fail" / "summary.json").exists()
