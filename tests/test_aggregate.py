"""results/summary.csv from hand-made evaluation outputs: pooling, pairing, verdicts."""

import csv
import json
import math
from pathlib import Path

import pytest

from reproml.errors import UserError
from reproml.report.aggregate import aggregate, mean_ci

PUBLISHED = Path(__file__).resolve().parents[1] / "report" / "published-results.yaml"


def write_eval(folder, method, train_seed, accuracies, shas, dataset_format="ravi", **fields):
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps({
        "method": method, "dataset": "mini", "dataset_format": dataset_format, "setting": "5w1s",
        "train_seed": train_seed, "n_way": 5, "k_shot": 1,
        "acc_mean": sum(accuracies) / len(accuracies) if accuracies else None, **fields}))
    with open(folder / "episodes.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["episode", "accuracy", "episode_sha"])
        writer.writerows((i, a, sha) for i, (a, sha) in enumerate(zip(accuracies, shas)))
    return folder / "summary.json"


def test_pooling_pairing_and_verdict(tmp_path):
    meta = write_eval(tmp_path / "meta", "meta_lstm", 0, [60.0, 40.0, 80.0], ["a", "b", "c"])
    pixel = write_eval(tmp_path / "pixel", "pixel_nearest_neighbor", None, [50.0, 40.0, 50.0], ["a", "b", "c"])
    table = aggregate([str(meta), str(pixel)], PUBLISHED, tmp_path / "summary.csv")
    rows = {r["method"]: r for r in table.to_dict("records")}
    assert rows["meta_lstm"]["acc_mean"] == pytest.approx(60.0)
    assert rows["meta_lstm"]["ci95"] == pytest.approx(1.96 * 20 / math.sqrt(3))
    # |60 - 43.44| = 16.56 < sqrt(22.63^2 + 0.77^2): consistent with the paper's 5w1s figure
    assert rows["meta_lstm"]["verdict"] == "consistent" and rows["meta_lstm"]["paper_mean"] == 43.44
    # differences 10, 0, 30
    assert rows["pixel_nearest_neighbor"]["meta_lstm_minus_this"] == pytest.approx(40 / 3)
    sd = math.sqrt(((10 - 40 / 3) ** 2 + (40 / 3) ** 2 + (30 - 40 / 3) ** 2) / 2)
    assert rows["pixel_nearest_neighbor"]["meta_lstm_minus_this_ci95"] == pytest.approx(1.96 * sd / math.sqrt(3))
    assert rows["pixel_nearest_neighbor"]["verdict"] == "no published figure"


def test_a_baseline_trained_with_fewer_seeds_pairs_with_every_meta_learner_seed(tmp_path):
    shas = ["a", "b", "c"]
    metas = [write_eval(tmp_path / f"meta{seed}", "meta_lstm", seed, accs, shas)
             for seed, accs in ((0, [60.0, 40.0, 80.0]), (1, [50.0, 50.0, 70.0]))]
    baseline = write_eval(tmp_path / "nn0", "baseline_nearest_neighbor", 0, [50.0, 40.0, 60.0], shas)
    table = aggregate([str(p) for p in (*metas, baseline)], PUBLISHED, tmp_path / "summary.csv")
    nn = {r["method"]: r for r in table.to_dict("records")}["baseline_nearest_neighbor"]
    # seed 0: 10, 0, 20; seed 1 against the same seed-0 network: 0, 10, 10
    assert nn["meta_lstm_minus_this"] == pytest.approx(50 / 6) and nn["seeds"] == 1


def test_methods_on_different_episodes_are_not_paired(tmp_path):
    meta = write_eval(tmp_path / "meta", "meta_lstm", 0, [60.0, 40.0], ["a", "b"])
    pixel = write_eval(tmp_path / "pixel", "pixel_nearest_neighbor", None, [50.0, 40.0], ["a", "x"])
    with pytest.raises(UserError, match="evaluated on different test episodes"):
        aggregate([str(meta), str(pixel)], PUBLISHED, tmp_path / "summary.csv")
    assert not (tmp_path / "summary.csv").exists()


def test_transfer_rows_pair_within_their_dataset_and_skipped_transfers_say_why(tmp_path):
    home = write_eval(tmp_path / "home", "meta_lstm", 0, [60.0, 40.0], ["a", "b"], eval_dataset="mini")
    away = write_eval(tmp_path / "away", "meta_lstm", 0, [30.0, 20.0], ["x", "y"], eval_dataset="gray")
    pixel = write_eval(tmp_path / "pixel", "pixel_nearest_neighbor", None, [20.0, 20.0], ["x", "y"],
                       eval_dataset="gray")
    reason = "split 'test': class 'c0' has 6 images; a 5-shot episode with 15 queries needs 20"
    skipped = write_eval(tmp_path / "skip", "meta_lstm", 0, [], [], eval_dataset="gray", setting="5w5s", k_shot=5,
                         skipped=reason)
    table = aggregate([str(p) for p in (home, away, pixel, skipped)], PUBLISHED, tmp_path / "summary.csv")
    rows = {(r["eval_dataset"], r["setting"], r["method"]): r for r in table.to_dict("records")}
    assert rows[("mini", "5w1s", "meta_lstm")]["verdict"] == "consistent"
    transfer = rows[("gray", "5w1s", "meta_lstm")]
    assert transfer["dataset"] == "mini" and transfer["acc_mean"] == pytest.approx(25.0)
    assert transfer["verdict"] == "transfer (no published figure)" and math.isnan(transfer["paper_mean"])
    assert rows[("gray", "5w1s", "pixel_nearest_neighbor")]["meta_lstm_minus_this"] == pytest.approx(5.0)
    gone = rows[("gray", "5w5s", "meta_lstm")]
    assert gone["verdict"] == f"skipped: {reason}" and gone["episodes"] == 0 and math.isnan(gone["acc_mean"])
    written = list(csv.DictReader(open(tmp_path / "summary.csv")))
    assert [r["eval_dataset"] for r in written] == ["mini", "gray", "gray", "gray"]  # in-domain rows first


def test_mean_and_interval_are_printed_one_way_everywhere():
    assert mean_ci(45.0, 1.0) == "45.00 ± 1.00"
    assert mean_ci(3.2, 0.5, signed=True) == "+3.20 ± 0.50"
    assert mean_ci(-1.0, 0.2, signed=True) == "-1.00 ± 0.20"
    assert mean_ci(None, None) == mean_ci(float("nan"), 1.0) == "–"
    assert mean_ci(50.0, float("nan")) == "50.00 ± –"  # one episode has no interval
