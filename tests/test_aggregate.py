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


PAPER = {("meta_lstm", "5w1s"): {"mean": 43.44, "ci95": 0.77}, ("matching_net", "5w1s"): {"mean": 43.40, "ci95": 0.78},
         ("meta_lstm", "5w5s"): {"mean": 60.60, "ci95": 0.71},
         ("baseline_nearest_neighbor", "5w5s"): {"mean": 51.04, "ci95": 0.65},
         ("baseline_finetune", "5w5s"): {"mean": 49.79, "ci95": 0.79}}


def summary_row(k_shot, method, mean=0.0, ci95=0.0, diff=math.nan, diff_ci95=math.nan):
    return {"n_way": 5, "k_shot": k_shot, "method": method, "acc_mean": mean, "ci95": ci95, "episodes": 600,
            "seeds": 1, "meta_lstm_minus_this": diff, "meta_lstm_minus_this_ci95": diff_ci95}


# The 95% margin against Matching Networks (43.40 +- 0.78) with our CI 0.80: sqrt(0.80^2 + 0.78^2) = 1.1173
@pytest.mark.parametrize("ours, ci95, status", [
    (42.30, 0.80, "supported"),      # 1.10 below: within the margin
    (42.25, 0.80, "not supported"),  # 1.15 below: significantly lower
    (45.00, 0.50, "supported"),      # higher is competitive too
])
def test_the_one_shot_claim_against_matching_networks(ours, ci95, status):
    from reproml.report.claims import assess_claims
    claim = assess_claims([summary_row(1, "meta_lstm", ours, ci95)], PAPER, demo=False)[0]
    assert claim["status"] == status
    assert "43.44 ± 0.77 against 43.40 ± 0.78" in claim["claim"]


@pytest.mark.parametrize("diffs, status", [
    ([(5.0, 1.0), (3.0, 2.9)], "supported"),          # both intervals above 0
    ([(5.0, 1.0), (3.0, 3.1)], "inconclusive"),       # 3.0 - 3.1 < 0: fine-tuning not beaten significantly
    ([(5.0, 1.0), (-2.0, 1.5)], "contradicted"),      # -2.0 + 1.5 < 0: worse than fine-tuning
])
def test_the_five_shot_claim_from_paired_differences(diffs, status):
    from reproml.report.claims import assess_claims
    rows = [summary_row(5, "meta_lstm", 58.0, 0.7)]
    rows += [summary_row(5, method, diff=d, diff_ci95=h)
             for method, (d, h) in zip(("baseline_nearest_neighbor", "baseline_finetune"), diffs)]
    one_shot, five_shot = assess_claims(rows, PAPER, demo=False)
    assert one_shot["status"] == "not tested" and five_shot["status"] == status
    assert f"{diffs[0][0]:+.2f} ± {diffs[0][1]:.2f} points (better)" in five_shot["evidence"]
    assert assess_claims(rows, PAPER, demo=True)[1]["status"] == "not judged (demo data)"
    assert assess_claims(rows[:2], PAPER, demo=False)[1]["status"] == "not tested"  # fine-tuning not run


def test_mean_and_interval_are_printed_one_way_everywhere():
    assert mean_ci(45.0, 1.0) == "45.00 ± 1.00"
    assert mean_ci(3.2, 0.5, signed=True) == "+3.20 ± 0.50"
    assert mean_ci(-1.0, 0.2, signed=True) == "-1.00 ± 0.20"
    assert mean_ci(None, None) == mean_ci(float("nan"), 1.0) == "–"
    assert mean_ci(50.0, float("nan")) == "50.00 ± –"  # one episode has no interval
