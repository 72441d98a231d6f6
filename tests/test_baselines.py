"""The paper's baselines: the pre-trained network, nearest-neighbour on its features, fine-tuning,
and the promise that every method sees the same test episodes."""

import csv
import json

import pytest
import torch

from conftest import kill_after_first_checkpoint, run_cli
from reproml.cli import main
from reproml.methods.finetune import GRID_DECAYS, GRID_LRS, finetune, finetune_classifier, step_sizes
from reproml.methods.nearest_neighbor import cosine_nearest_neighbor, feature_nearest_neighbor, pixel_nearest_neighbor
from reproml.models.learner import Learner, LearnerSpec
from reproml.models.pretrained import Pretrained, load_pretrained
from reproml.training.pretrain import batch_rows

EPISODE = ["--n-way", 3, "--k-shot", 1, "--n-query", 3]


def pretrain(capsys, data, out, steps=6, val_every=3):
    return run_cli(capsys, "pretrain", "--data", data, "--steps", steps, "--batch-size", 16, "--val-every", val_every,
                   "--val-episodes", 3, "--seed", 0, "--device", "cpu", "--out", out, "--quiet")


def select(capsys, data, pretrained, out, lrs="0.1,0.01", decays="0,1"):
    return run_cli(capsys, "select-finetune", "--data", data, "--checkpoint", pretrained, *EPISODE, "--lrs", lrs,
                   "--decays", decays, "--episodes", 3, "--seed", 0, "--device", "cpu", "--out", out, "--quiet")


@pytest.fixture(scope="module")
def pretrained(prepared, tmp_path_factory):
    out = tmp_path_factory.mktemp("pretrain")
    assert main([str(a) for a in ("pretrain", "--data", prepared, "--steps", 6, "--batch-size", 16, "--val-every", 3,
                                  "--val-episodes", 3, "--device", "cpu", "--out", out, "--quiet")]) == 0
    return out / "best.pt"


def test_the_pretrained_network_has_the_original_size_and_a_1600_d_feature():
    spec = LearnerSpec(64, 84, 64)
    net = Learner(spec)
    # conv1 64*3*9+64, conv2-4 64*64*9+64 each, BN 2*64 each, head 1600*64+64
    assert net.n_params == 1792 + 3 * 36928 + 4 * 128 + 102464 == 215552
    features = Pretrained(spec, net.init_flat(torch.Generator().manual_seed(0)),
                          net.new_bn_stats("cpu")).features(torch.rand(2, 3, 84, 84))
    assert features.shape == (2, 1600)


def test_pretraining_batches_cover_each_epoch_once():
    rows = [batch_rows(7, step, 100, 16) for step in range(6)]  # 6 full batches per epoch; 4 images dropped
    epoch = torch.tensor([r for batch in rows for r in batch])
    assert len(set(epoch.tolist())) == 96 and all(len(r) == 16 for r in rows)
    assert list(batch_rows(7, 6, 100, 16)) != list(rows[0])  # the next epoch is another permutation
    assert list(batch_rows(7, 3, 100, 16)) == list(rows[3])  # a function of (seed, step) only


def test_step_sizes_against_hand_computed_values():
    assert step_sizes(0.1, 1, 4) == pytest.approx([0.1, 0.05, 0.1 / 3, 0.025])
    assert step_sizes(0.5, 0, 3) == [0.5, 0.5, 0.5]
    assert len(step_sizes(0.1, 0.1)) == 15
    assert len(GRID_LRS) * len(GRID_DECAYS) == 42


def test_finetuning_is_plain_sgd_on_every_parameter_and_leaves_the_network_alone():
    spec = LearnerSpec(4, 16, 8)
    learner = Learner(spec)
    params = learner.init_flat(torch.Generator().manual_seed(0))
    x, y = torch.rand(6, 3, 16, 16), torch.tensor([0, 1, 2, 3, 0, 1])
    stats = learner.new_bn_stats("cpu")
    tuned = finetune(learner, params, stats, x, y, [0.3])

    theta = params.clone().requires_grad_()
    loss = torch.nn.functional.cross_entropy(learner(theta, x, learner.new_bn_stats("cpu"), True, 0.1), y)
    loss.backward()
    assert torch.allclose(tuned, params - 0.3 * theta.grad)
    assert (tuned != params).float().mean() > 0.99  # the body too, not only the head
    assert not torch.equal(stats[0][0], torch.zeros(8))  # BN in training mode: the support moved the running mean

    pretrained = Pretrained(LearnerSpec(5, 16, 8), Learner(LearnerSpec(5, 16, 8)).init_flat(torch.Generator()),
                            learner.new_bn_stats("cpu"))
    before = pretrained.params.clone(), [m.clone() for m, _ in pretrained.bn_stats]
    predictions = finetune_classifier(pretrained, 4, 0.1, 0, seed=0)((x, y, x[:3], None))
    assert predictions.shape == (3,) and predictions.max() < 4  # a fresh 4-way head on a 5-class network
    assert torch.equal(pretrained.params, before[0]) and torch.equal(pretrained.bn_stats[0][0], before[1][0])


def test_nearest_neighbour_is_exact_on_copies_of_the_support_set():
    support = torch.rand(3, 3, 4, 4)
    labels = torch.tensor([2, 0, 1])
    query = support[[1, 2, 0, 0]] * 0.5  # cosine similarity ignores scale
    assert pixel_nearest_neighbor((support, labels, query, None)).tolist() == [0, 1, 2, 2]
    assert cosine_nearest_neighbor(torch.tensor([[1.0, 0], [0, 1]]), torch.tensor([4, 7]),
                                   torch.tensor([[3.0, 1], [1, 3]])).tolist() == [4, 7]
    spec = LearnerSpec(5, 16, 8)
    net = Pretrained(spec, Learner(spec).init_flat(torch.Generator().manual_seed(1)), Learner(spec).new_bn_stats("cpu"))
    images = torch.rand(3, 3, 16, 16)
    assert feature_nearest_neighbor(net)((images, labels, images[[2, 1]], None)).tolist() == [1, 0]


def test_every_method_with_the_same_seed_sees_identical_episodes(tmp_path, capsys, prepared, pretrained):
    assert run_cli(capsys, "train", "--data", prepared, *EPISODE, "--epochs", 2, "--iterations", 2, "--val-every", 2,
                   "--val-episodes", 3, "--device", "cpu", "--out", tmp_path / "run", "--quiet")[0] == 0
    assert select(capsys, prepared, pretrained, tmp_path / "grid")[0] == 0

    def evaluate(seed, method, *extra):
        out = tmp_path / f"{method}-{seed}"
        status, _, err = run_cli(capsys, "evaluate", "--method", method, "--data", prepared, "--episodes", 5,
                                 "--seed", seed, "--device", "cpu", "--quiet", "--out", out, *extra)
        assert status == 0, err
        return [row["episode_sha"] for row in csv.DictReader(open(out / "episodes.csv"))]
    runs = {"meta_lstm": evaluate(3, "meta_lstm", "--checkpoint", tmp_path / "run" / "best.pt"),
            "baseline_nearest_neighbor": evaluate(3, "baseline_nearest_neighbor", "--checkpoint", pretrained, *EPISODE),
            "baseline_finetune": evaluate(3, "baseline_finetune", "--checkpoint", pretrained, "--finetune-choice",
                                          tmp_path / "grid" / "choice.json", *EPISODE),
            "pixel_nearest_neighbor": evaluate(3, "pixel_nearest_neighbor", *EPISODE)}
    assert all(shas == runs["meta_lstm"] for shas in runs.values()) and len(set(runs["meta_lstm"])) == 5
    assert not set(evaluate(4, "pixel_nearest_neighbor", *EPISODE)) & set(runs["meta_lstm"])  # another seed
    finetuned = json.loads((tmp_path / "baseline_finetune-3" / "summary.json").read_text())
    choice = json.loads((tmp_path / "grid" / "choice.json").read_text())
    assert (finetuned["finetune_lr"], finetuned["finetune_decay"]) == (choice["lr"], choice["decay"])
    assert (tmp_path / "meta_lstm-3" / "gates.csv").is_file()


def test_the_grid_search_picks_the_best_point_and_resumes(tmp_path, capsys, prepared, pretrained):
    assert select(capsys, prepared, pretrained, tmp_path / "whole")[0] == 0
    rows = list(csv.DictReader(open(tmp_path / "whole" / "grid.csv")))
    assert [(r["lr"], r["decay"]) for r in rows] == [("0.1", "0.0"), ("0.1", "1.0"), ("0.01", "0.0"), ("0.01", "1.0")]
    choice = json.loads((tmp_path / "whole" / "choice.json").read_text())
    best = max(rows, key=lambda r: float(r["val_acc"]))
    assert (choice["lr"], choice["decay"]) == (float(best["lr"]), float(best["decay"]))

    partial = tmp_path / "partial"
    partial.mkdir()
    lines = (tmp_path / "whole" / "grid.csv").read_text().splitlines(keepends=True)
    (partial / "grid.csv").write_text("".join(lines[:3]))  # as if killed after two grid points
    status, _, err = select(capsys, prepared, pretrained, partial)
    assert status == 0 and "resuming after 2 grid points" in err
    assert (partial / "grid.csv").read_text() == (tmp_path / "whole" / "grid.csv").read_text()
    status, _, err = select(capsys, prepared, pretrained, partial, lrs="0.5")
    assert status == 2 and "holds a search over another grid" in err


@pytest.mark.slow
def test_a_killed_pretraining_resumes_to_the_same_network(tmp_path, capsys, prepared):
    assert pretrain(capsys, prepared, tmp_path / "whole", steps=12, val_every=2)[0] == 0
    kill_after_first_checkpoint(["pretrain", "--data", prepared, "--steps", 12, "--batch-size", 16, "--val-every", 2,
                                 "--val-episodes", 3, "--seed", 0, "--device", "cpu", "--out", tmp_path / "killed",
                                 "--quiet"], tmp_path / "killed" / "last.pt")
    assert torch.load(tmp_path / "killed" / "last.pt", weights_only=True)["state"]["iteration"] < 12
    status, _, err = pretrain(capsys, prepared, tmp_path / "killed", steps=12, val_every=2)
    assert status == 0 and "resuming from iteration" in err
    assert (tmp_path / "killed" / "curve.csv").read_text() == (tmp_path / "whole" / "curve.csv").read_text()
    whole, _ = load_pretrained(tmp_path / "whole" / "best.pt", "cpu")
    resumed, _ = load_pretrained(tmp_path / "killed" / "best.pt", "cpu")
    assert torch.equal(whole.params, resumed.params)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(whole.bn_stats, resumed.bn_stats))

    assert pretrain(capsys, prepared, tmp_path / "extended", steps=6, val_every=2)[0] == 0
    assert pretrain(capsys, prepared, tmp_path / "extended", steps=12, val_every=2)[0] == 0  # a longer budget
    assert (tmp_path / "extended" / "curve.csv").read_text() == (tmp_path / "whole" / "curve.csv").read_text()
    status, _, err = pretrain(capsys, prepared, tmp_path / "extended", steps=4, val_every=2)
    assert status == 2 and "already trained for 12 iterations, more than --steps 4" in err


def test_baseline_mistakes_are_one_line(tmp_path, capsys, prepared, pretrained):
    status, _, err = run_cli(capsys, "evaluate", "--method", "baseline_finetune", "--data", prepared,
                             "--checkpoint", pretrained, *EPISODE, "--out", tmp_path / "e")
    assert status == 2 and "needs --finetune-choice" in err and err.count("\n") == 1
    (tmp_path / "choice.json").write_text("{}")
    status, _, err = run_cli(capsys, "evaluate", "--method", "baseline_finetune", "--data", prepared,
                             "--checkpoint", pretrained, "--finetune-choice", tmp_path / "choice.json", *EPISODE,
                             "--out", tmp_path / "e")
    assert status == 2 and "choice.json: not a fine-tuning choice" in err
    meta = tmp_path / "meta.pt"
    torch.save({"format": "reproml-meta-lstm/1"}, meta)
    status, _, err = run_cli(capsys, "evaluate", "--method", "baseline_nearest_neighbor", "--data", prepared,
                             "--checkpoint", meta, *EPISODE, "--out", tmp_path / "e")
    assert status == 2 and "not a reproml pre-trained network" in err
    status, _, err = select(capsys, prepared, pretrained, tmp_path / "g", lrs="fast")
    assert status == 2 and "--lrs 'fast': expected comma-separated numbers" in err
    assert not (tmp_path / "e").exists()
