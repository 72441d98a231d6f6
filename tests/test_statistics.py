import math

import pytest

from reproml.statistics import summarize


def test_summary_against_hand_computed_values():
    s = summarize([40.0, 50.0, 60.0])
    assert s["acc_mean"] == pytest.approx(50.0)
    assert s["acc_var"] == pytest.approx(100.0)  # (100 + 0 + 100) / (3 - 1)
    assert s["acc_std"] == pytest.approx(10.0)
    assert s["ci95"] == pytest.approx(1.96 * 10 / math.sqrt(3))
    assert s["episodes"] == 3


def test_summary_needs_two_episodes():
    with pytest.raises(ValueError):
        summarize([50.0])


def test_verdict_against_a_published_interval():
    from reproml.statistics import compare_to_published
    # margin = sqrt(0.6^2 + 0.8^2) = 1.0
    assert compare_to_published(60.0, 0.6, 60.99, 0.8) == "consistent"
    assert compare_to_published(59.0, 0.6, 60.01, 0.8) == "lower"
    assert compare_to_published(61.02, 0.6, 60.0, 0.8) == "higher"


def test_paired_difference_against_hand_computed_values():
    from reproml.statistics import paired_difference
    # differences 10, 0, 20, 10: mean 10, sd sqrt((0 + 100 + 100 + 0) / 3) = 8.1650
    d = paired_difference([60.0, 40.0, 70.0, 50.0], [50.0, 40.0, 50.0, 40.0])
    assert d["diff_mean"] == pytest.approx(10.0) and d["pairs"] == 4
    assert d["diff_ci95"] == pytest.approx(1.96 * math.sqrt(200 / 3) / 2)
    with pytest.raises(ValueError):
        paired_difference([1.0, 2.0], [1.0])
