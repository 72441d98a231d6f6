"""`reproml selfcheck`: each numerical path against float64, beside the rounding floor, at small size."""

import json

import pytest

from conftest import run_cli
from reproml import selfcheck

SMALL = ["--settings", "5w1s", "--image-size", 16, "--episodes", 3, "--draws", 1, "--threads", 1, "--quiet"]


def test_the_verdict_is_the_median_over_episodes_against_the_median_floor():
    # (gradient error, cosine, logit error) per episode; one episode of each path jumps (a near-tie
    # in max-pooling resolved the other way), which the medians leave aside
    per_episode = [{"floor": (1e-6, 1.0, 2e-6), "good": (1.5e-6, 1.0, 3e-6), "bad": (1e-2, 0.99, 1e-6)},
                   {"floor": (2e-6, 1.0, 1e-6), "good": (5e-2, 0.998, 1e-6), "bad": (5e-6, 1.0, 1e-6)},
                   {"floor": (4e-2, 0.999, 3e-6), "good": (3e-6, 1.0, 2e-6), "bad": (3e-6, 1.0, 1e-6)}]
    summary = selfcheck.summarize(per_episode)
    assert summary["floor"]["grad_error"] == 2e-6 and summary["floor"]["logit_error"] == 2e-6
    assert summary["good"]["grad_error"] == 3e-6 and summary["good"]["ratio"] == pytest.approx(1.5)
    assert summary["good"]["ok"]
    assert summary["bad"]["ratio"] == pytest.approx(2.5) and not summary["bad"]["ok"]  # 5e-6 / 2e-6
    assert summary["bad"]["grad_cosine"] == 1.0


def test_every_path_here_is_within_twice_the_floor(capsys):
    status, out, err = run_cli(capsys, "selfcheck", *SMALL, "--json")
    assert status == 0, out + err
    results = json.loads(out)["5w1s"]
    assert list(results) == ["initial", "moved"]
    for paths in results.values():
        assert list(paths)[:2] == ["floor", "plain float32"] and set(paths) <= {"floor", "plain float32", "kernels",
                                                                              "cuda"}
        for name, r in paths.items():
            assert r["ok"] and r["ratio"] <= selfcheck.BOUND and r["grad_cosine"] > 0.999, name
            assert 0 < r["grad_error"] < 0.25 and 0 < r["logit_error"] < 1e-3, name  # a wrong equation: O(1)


def test_a_path_off_by_a_thousandth_fails_with_status_one(capsys, monkeypatch):
    path = selfcheck.query_logits
    monkeypatch.setattr(selfcheck, "query_logits", lambda *args, **kwargs: path(*args, **kwargs) * (1 + 1e-3))
    status, out, _ = run_cli(capsys, "selfcheck", *SMALL)
    assert status == 1
    rows = out.splitlines()[1:]
    assert len(rows) >= 4 and all(("FAIL (over 2x)" in row) == (row.split()[2] != "floor") for row in rows)
