"""results/summary.csv from hand-made evaluation outputs: pooling, pairing, verdicts."""

import csv
import json
import math
from pathlib import Path

import pytest

from reproml.errors import UserError
from reproml.report.aggregate import aggregate

PUBLISHED = Path(__file__).resolve().parents[1] / "report" / "published-results.yaml"


def write_eval(folder, method, train_seed, accuracies, shas, dataset_format="ravi"):
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps({
        "method": method, "dataset": "mini", "dataset_format": dataset_format, "setting": "5w1s",
        "train_seed": train_seed, "n_way": 5, "k_shot": 1,
        "acc_mean": sum(accuracies) / len(accuracies)}))
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


def test_methods_on_different_episodes_are_not_paired(tmp_path):
    meta = write_eval(tmp_path / "meta", "meta_lstm", 0, [60.0, 40.0], ["a", "b"])
    pixel = write_eval(tmp_path / "pixel", "pixel_nearest_neighbor", None, [50.0, 40.0], ["a", "x"])
    with pytest.raises(UserError, match="evaluated on different test episodes"):
        aggregate([str(meta), str(pixel)], PUBLISHED, tmp_path / "summary.csv")
    assert not (tmp_path / "summary.csv").exists()
