"""Matching Networks as the original code ran them: the classifier, the FCE's LSTMs and read-out,
the double Adam update of the tied weights, sizes, determinism and resume."""

import math

import pytest
import torch
import torch.nn.functional as F

from conftest import kill_after_first_checkpoint, run_cli
from reproml import reference
from reproml.kernels.sequence_lstm import lstm_outputs
from reproml.models.matching_net import (ATTENTION_STEPS, MatchingNet, MatchingNetSpec, attention_read, class_scores,
                                         cosine_similarities)
from reproml.methods.matching_net import load_matching_net
from reproml.training.matching_train import Trainer, adam_step, first_shots


def test_the_original_scores_a_class_by_its_summed_raw_cosines():
    query = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    support = torch.tensor([[2.0, 0.0], [0.0, 3.0], [1.0, 1.0]])  # labels 0, 1, 0
    labels = torch.tensor([0, 1, 0])
    r = 1 / math.sqrt(2)
    # query 0: cosines 1, 0, r; query 1: r, r, 1
    assert torch.allclose(cosine_similarities(query, support), torch.tensor([[1, 0, r], [r, r, 1]]), atol=1e-6)
    scores = class_scores(query, support, labels, 2)
    assert torch.allclose(scores, torch.tensor([[1 + r, 0], [r + 1, r]]), atol=1e-6)
    loss = F.cross_entropy(scores, torch.tensor([0, 1]))
    by_hand = (-math.log(math.exp(1 + r) / (math.exp(1 + r) + 1))
               - math.log(math.exp(r) / (math.exp(1 + r) + math.exp(r)))) / 2
    assert loss.item() == pytest.approx(by_hand, rel=1e-6)


def test_softmax_attention_is_the_log_of_each_class_summed_attention():
    query = torch.tensor([[1.0, 0.0]])
    support = torch.tensor([[2.0, 0.0], [0.0, 3.0], [1.0, 1.0]])
    r = 1 / math.sqrt(2)
    e = [math.exp(1), math.exp(0), math.exp(r)]
    scores = class_scores(query, support, torch.tensor([0, 1, 0]), 2, softmax_attention=True)
    assert torch.allclose(scores, torch.tensor([[math.log((e[0] + e[2]) / sum(e)), math.log(e[1] / sum(e))]]),
                          atol=1e-6)
    # cross-entropy of log-probabilities that sum to one is their negative log: -log p(class 1)
    assert F.cross_entropy(scores, torch.tensor([1])).item() == pytest.approx(-math.log(e[1] / sum(e)), rel=1e-5)


def test_the_original_attention_gives_every_support_item_weight_one():
    h, support = torch.randn(4, 3), torch.randn(6, 3)
    assert torch.equal(torch.softmax((h @ support.t())[..., None], -1)[..., 0], torch.ones(4, 6))  # the original's
    read = attention_read(h, support, softmax_read=False)
    assert read.shape == (1, 3) and torch.allclose(read, torch.ones(4, 6) @ support)  # one row for every query
    read = attention_read(h, support, softmax_read=True)
    assert torch.allclose(read, torch.softmax(h @ support.t(), 1) @ support)


@pytest.mark.parametrize("length, d", [(1, 3), (6, 5)])
def test_the_sequence_lstm_gives_the_step_by_step_outputs_and_gradients(length, d):
    """In float64, against the original's cell stepped through autograd (reference.lstm_outputs)."""
    g = torch.Generator().manual_seed(length)
    weight, bias, items = (torch.randn(shape, generator=g, dtype=torch.float64).requires_grad_()
                           for shape in ((2 * d, 4 * d), (4 * d,), (length, d)))
    outside = torch.randn(length, d, generator=g, dtype=torch.float64)
    results = []
    for run in (lstm_outputs, reference.lstm_outputs):
        out = run(weight, bias, items)
        results.append([out.detach(), *torch.autograd.grad((out * outside).sum(), [weight, bias, items])])
    for fast, plain in zip(*results):
        torch.testing.assert_close(fast, plain, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("deviations", [(), ("fce_softmax_read",)])
def test_the_attention_lstm_gives_the_originals_embedding_and_gradients(deviations):
    d, n_query, n_support = 6, 4, 5
    g = torch.Generator().manual_seed(7)
    weight, bias, f, support = (torch.randn(shape, generator=g, dtype=torch.float64).requires_grad_()
                                for shape in ((3 * d, 4 * d), (4 * d,), (n_query, d), (n_support, d)))
    model = MatchingNet(MatchingNetSpec("matching_net_fce", 16, deviations))
    model.embed = lambda flat, x, bn, training, generator: x  # the CNN's output given directly
    params = {"attention.weight": weight, "attention.bias": bias}
    outside = torch.randn(n_query, d, generator=g, dtype=torch.float64)
    results = []
    for embedding in (lambda: model.query_embedding(None, params, f, support, {"f": None}, False, None),
                      lambda: reference.fce_query_embedding(weight, bias, f, support, ATTENTION_STEPS, bool(deviations))):
        out = embedding()
        results.append([out.detach(), *torch.autograd.grad((out * outside).sum(), [weight, bias, f, support])])
    for fast, plain in zip(*results):
        torch.testing.assert_close(fast, plain, rtol=1e-12, atol=1e-12)


def episode(n_way=5, k_shot=5, n_query=3, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    support_y = torch.arange(n_way).repeat_interleave(k_shot)[torch.randperm(n_way * k_shot, generator=g)]
    return (torch.rand(n_way * k_shot, 3, size, size, generator=g), support_y,
            torch.rand(n_way * n_query, 3, size, size, generator=g), torch.arange(n_way).repeat_interleave(n_query))


def test_sizes_at_84x84():
    assert MatchingNet(MatchingNetSpec("matching_net", 84)).n_params() == 113_088
    assert MatchingNet(MatchingNetSpec("matching_net_fce", 84)).n_params() == 71_812_288


@pytest.mark.parametrize("training", [False, True])
def test_fce_starts_as_the_simple_model(training):
    """Every LSTM of the FCE starts at zero, so its outputs are zero and both embeddings are the CNN's."""
    simple, fce = MatchingNet(MatchingNetSpec("matching_net", 16)), MatchingNet(MatchingNetSpec("matching_net_fce", 16))
    params = fce.init_params(torch.Generator().manual_seed(3))
    assert torch.equal(params["embedding"], simple.init_params(torch.Generator().manual_seed(3))["embedding"])
    scores = [m.scores(params, episode(), 5, m.new_bn_stats("cpu"), training, torch.Generator().manual_seed(1))
              for m in (simple, fce)]
    assert torch.equal(scores[0], scores[1])


def test_the_backward_lstm_is_misaligned_unless_asked():
    """The original adds the backward LSTM's i-th output (after reading the last i items) to item i."""
    support = torch.randn(4, 8)
    spec = {False: MatchingNetSpec("matching_net_fce", 16), True: MatchingNetSpec("matching_net_fce", 16,
                                                                                  ("fce_aligned_backward",))}
    params = {"support_forward.weight": torch.zeros(2 * 8, 4 * 8), "support_forward.bias": torch.zeros(4 * 8),
              "support_backward.weight": torch.randn(2 * 8, 4 * 8), "support_backward.bias": torch.randn(4 * 8)}
    backward = reference.lstm_outputs(params["support_backward.weight"], params["support_backward.bias"],
                                      support.flip(0))
    for aligned, expected in ((False, support + backward), (True, support + backward.flip(0))):
        model = MatchingNet(spec[aligned])
        model.embed = lambda flat, x, bn, training, generator: x  # the CNN's output given directly
        assert torch.allclose(model.support_embedding({"embedding": None, **params}, support, {"g": None}, False, None),
                              expected)


def test_adam_against_hand_computed_steps():
    """torch/optim's Adam, two steps: eps beside sqrt(v), the corrections in the step size."""
    lr, p, state = 0.1, torch.tensor([1.0]), {}
    adam_step(p, torch.tensor([2.0]), state, lr)
    m, v = 0.1 * 2, 0.001 * 4
    after_one = 1 - lr * math.sqrt(1 - 0.999) / (1 - 0.9) * m / (math.sqrt(v) + 1e-8)
    assert p.item() == pytest.approx(after_one, rel=1e-6)
    adam_step(p, torch.tensor([-1.0]), state, lr)
    m, v = 0.9 * m + 0.1 * -1, 0.999 * v + 0.001 * 1
    after_two = after_one - lr * math.sqrt(1 - 0.999 ** 2) / (1 - 0.9 ** 2) * m / (math.sqrt(v) + 1e-8)
    assert p.item() == pytest.approx(after_two, rel=1e-6)


def test_the_tied_weights_take_two_adam_steps_per_episode():
    """f's and g's gradients (which sum to the embedding's whole gradient) each drive an Adam state
    of their own, and both steps move the one embedding; the deviation takes one step on the sum."""
    ep = episode()
    moved = {}
    for deviations in ((), ("single_embedding_update",)):
        model = MatchingNet(MatchingNetSpec("matching_net", 16, deviations))
        params = model.init_params(torch.Generator().manual_seed(0))
        trainer = Trainer(model, {k: v.clone() for k, v in params.items()}, "cpu")
        trainer.step(ep, 5, torch.Generator().manual_seed(1))
        # the same partial gradients by hand
        f_leaf, g_leaf = (params["embedding"].clone().requires_grad_() for _ in range(2))
        loss = F.cross_entropy(model.scores({"embedding": g_leaf}, ep, 5, model.new_bn_stats("cpu"), True,
                                            torch.Generator().manual_seed(1), query_cnn=f_leaf), ep[3])
        grad_f, grad_g = torch.autograd.grad(loss, [f_leaf, g_leaf])
        expected, moved[deviations] = params["embedding"].clone(), torch.zeros_like(params["embedding"])
        for grad in ((grad_f, grad_g) if not deviations else (grad_f + grad_g,)):
            adam_step(expected, grad, {}, 1e-4)
            adam_step(moved[deviations], grad, {}, 1e-4)
        assert torch.equal(trainer.params["embedding"], expected)
        assert set(trainer.adam) >= ({"embedding"} if deviations else {"embedding.f", "embedding.g"})
    # the first Adam step moves each coordinate by about lr: twice that with two steps of one sign
    assert moved[()].abs().max().item() == pytest.approx(2e-4, rel=0.01)
    assert moved[("single_embedding_update",)].abs().max().item() == pytest.approx(1e-4, rel=0.01)


def test_first_shots_keeps_the_first_k_of_each_class_in_order():
    support_y = torch.tensor([2, 0, 2, 1, 0, 1, 2])
    x = torch.arange(7.0)[:, None]
    kept_x, kept_y, _, _ = first_shots((x, support_y, None, None), 1, 3)
    assert kept_y.tolist() == [2, 0, 1] and kept_x.flatten().tolist() == [0, 1, 3]
    kept_x, kept_y, _, _ = first_shots((x, support_y, None, None), 2, 3)
    assert kept_x.flatten().tolist() == [0, 1, 2, 3, 4, 5]


def train(capsys, prepared, out, variant="matching_net", iterations=4, *extra):
    return run_cli(capsys, "train-matching-net", "--data", prepared, "--variant", variant, "--iterations", iterations,
                   "--val-every", 2, "--val-episodes", 2, "--device", "cpu", "--out", out, "--quiet", *extra)


@pytest.mark.parametrize("variant", ["matching_net", "matching_net_fce"])
def test_training_is_deterministic_and_evaluates_at_any_shot(tmp_path, capsys, prepared, variant):
    for name in ("a", "b"):
        assert train(capsys, prepared, tmp_path / name, variant)[0] == 0
    a, b = (load_matching_net(tmp_path / name / "model.pt", "cpu") for name in ("a", "b"))
    assert all(torch.equal(a[1][k], b[1][k]) for k in a[1])
    assert (tmp_path / "a" / "curve.csv").read_text() == (tmp_path / "b" / "curve.csv").read_text()
    assert "val_acc_1shot" in (tmp_path / "a" / "curve.csv").read_text().splitlines()[0]
    for k in (1, 5):
        status, out, _ = run_cli(capsys, "evaluate", "--data", prepared, "--method", variant, "--checkpoint",
                                 tmp_path / "a" / "model.pt", "--n-way", 5, "--k-shot", k, "--n-query", 5,
                                 "--episodes", 3, "--device", "cpu", "--out", tmp_path / f"eval{k}", "--quiet")
        assert status == 0 and f"{variant}, 5-way {k}-shot, 3 test episodes" in out
    other = "matching_net_fce" if variant == "matching_net" else "matching_net"
    status, _, err = run_cli(capsys, "evaluate", "--data", prepared, "--method", other, "--checkpoint",
                             tmp_path / "a" / "model.pt", "--n-way", 5, "--k-shot", 1, "--episodes", 3,
                             "--out", tmp_path / "wrong", "--quiet")
    assert status == 2 and f"a {variant} model, not --method {other}" in err


def test_the_kept_model_is_the_last_unless_best_is_asked(tmp_path, capsys, prepared):
    assert train(capsys, prepared, tmp_path / "last", "matching_net", 6)[0] == 0
    assert train(capsys, prepared, tmp_path / "best", "matching_net", 6, "--keep", "best")[0] == 0
    last = torch.load(tmp_path / "last" / "model.pt", weights_only=True)
    best = torch.load(tmp_path / "best" / "model.pt", weights_only=True)
    assert (last["keep"], last["iteration"]) == ("last", 6)
    assert best["keep"] == "best" and best["iteration"] == torch.load(tmp_path / "best" / "best.pt",
                                                                       weights_only=True)["iteration"]

    # which model is kept does not shape the training: changing it rewrites model.pt, without training again
    status, _, err = train(capsys, prepared, tmp_path / "last", "matching_net", 6, "--keep", "best", "--replace")
    assert status == 0 and "finished at 6; writing its outputs again" in err
    assert torch.load(tmp_path / "last" / "model.pt", weights_only=True)["iteration"] == best["iteration"]
    assert torch.equal(torch.load(tmp_path / "last" / "model.pt", weights_only=True)["params"]["embedding"],
                       best["params"]["embedding"])
    status, _, err = train(capsys, prepared, tmp_path / "last", "matching_net", 6, "--keep", "best", "--replace")
    assert status == 0 and "a rerun was asked for" in err  # the same options again: a rerun retrains


@pytest.mark.slow
def test_a_killed_training_resumes_to_the_same_model(tmp_path, capsys, prepared):
    assert train(capsys, prepared, tmp_path / "whole", "matching_net_fce", 8)[0] == 0
    kill_after_first_checkpoint(["train-matching-net", "--data", prepared, "--variant", "matching_net_fce",
                                 "--iterations", 8, "--val-every", 2, "--val-episodes", 2, "--device", "cpu",
                                 "--out", tmp_path / "killed", "--quiet"], tmp_path / "killed" / "last.pt")
    status, _, err = train(capsys, prepared, tmp_path / "killed", "matching_net_fce", 8)
    assert status == 0 and "resuming from iteration" in err
    assert (tmp_path / "killed" / "curve.csv").read_text() == (tmp_path / "whole" / "curve.csv").read_text()
    whole, resumed = (load_matching_net(tmp_path / name / "model.pt", "cpu") for name in ("whole", "killed"))
    assert all(torch.equal(whole[1][k], resumed[1][k]) for k in whole[1])
    assert all(torch.equal(a[0], b[0]) for path in ("f", "g") for a, b in zip(whole[2][path], resumed[2][path]))
