"""The student report's two analyses in the report: the image-pool comparison and the transfer table."""

import math

import pandas as pd

from reproml.report.analyses import image_pool_ablation, image_pool_partners, transfer_table
from test_aggregate import write_eval


def setting(**changes):
    return {"n_way": 5, "k_shot": 5, "n_query": 15, "iterations": 100, "image_pool": "all", **changes}


def test_settings_pair_when_they_differ_in_the_image_pool_alone():
    settings = {"5w5s": setting(), "5w5s-pool20": setting(image_pool=20), "5w1s": setting(k_shot=1),
                "5w5s-pool20-long": setting(image_pool=20, iterations=200)}
    assert image_pool_partners(settings) == [("5w5s", "5w5s-pool20")]


def test_the_pool_comparison_is_paired_over_the_episodes_of_every_shared_seed(tmp_path):
    settings = {"5w5s": setting(), "5w5s-pool20": setting(image_pool=20)}
    files = []
    for seed, free, pooled in [(0, [50.0, 60.0], [55.0, 60.0]), (1, [40.0, 70.0], [50.0, 75.0])]:
        files.append(write_eval(tmp_path / f"free{seed}", "meta_lstm", seed, free, ["a", "b"], setting="5w5s"))
        files.append(write_eval(tmp_path / f"pool{seed}", "meta_lstm", seed, pooled, ["a", "b"], setting="5w5s-pool20"))
    files.append(write_eval(tmp_path / "away", "meta_lstm", 0, [0.0, 0.0], ["x", "y"], setting="5w5s-pool20",
                            eval_dataset="gray"))  # a transfer result is not part of the comparison
    [row] = image_pool_ablation(settings, files)
    differences = [5.0, 0.0, 10.0, 5.0]  # pool minus all, per episode
    sd = math.sqrt(sum((d - 5.0) ** 2 for d in differences) / 3)
    assert row["difference"] == f"+5.00 ± {1.96 * sd / 2:.2f}" and row["pairs"] == 4
    assert row["free_acc"].startswith("55.00 ± ") and row["pooled_acc"].startswith("60.00 ± ")
    assert row["outcome"] == "better" and "as the student report's explanation" in row["verdict"]


def test_a_pool_comparison_within_noise_does_not_support_the_explanation(tmp_path):
    settings = {"5w5s": setting(), "5w5s-pool20": setting(image_pool=20)}
    files = [write_eval(tmp_path / "free", "meta_lstm", 0, [50.0, 60.0, 40.0], ["a", "b", "c"], setting="5w5s"),
             write_eval(tmp_path / "pool", "meta_lstm", 0, [55.0, 55.0, 40.0], ["a", "b", "c"], setting="5w5s-pool20")]
    [row] = image_pool_ablation(settings, files)
    assert row["outcome"] == "no significant difference" and "do not support" in row["verdict"]


def test_the_transfer_table_sets_each_result_beside_its_home_dataset():
    summary = pd.DataFrame([
        {"dataset": "mini", "eval_dataset": "mini", "setting": "5w1s", "method": "meta_lstm", "acc_mean": 45.0,
         "ci95": 1.0, "meta_lstm_minus_this": math.nan, "meta_lstm_minus_this_ci95": math.nan, "verdict": "consistent"},
        {"dataset": "mini", "eval_dataset": "gray", "setting": "5w1s", "method": "meta_lstm", "acc_mean": 30.5,
         "ci95": 2.0, "meta_lstm_minus_this": math.nan, "meta_lstm_minus_this_ci95": math.nan,
         "verdict": "transfer (no published figure)"},
        {"dataset": "mini", "eval_dataset": "gray", "setting": "5w5s", "method": "meta_lstm", "acc_mean": math.nan,
         "ci95": math.nan, "meta_lstm_minus_this": math.nan, "meta_lstm_minus_this_ci95": math.nan,
         "verdict": "skipped: too few images"},
    ])
    moved, skipped = transfer_table(summary)
    assert (moved["home"], moved["transfer"], moved["change"], moved["note"]) == \
        ("45.00 ± 1.00", "30.50 ± 2.00", "-14.50", "")
    assert (skipped["home"], skipped["transfer"], skipped["note"]) == ("–", "–", "too few images")

