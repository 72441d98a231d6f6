"""The learner and the meta-learner against hand-computed values and the original's counts."""

import csv
import math

import pytest
import torch
import torch.nn.functional as F

from reproml.methods.meta_lstm import adapt, build, query_logits
from reproml.kernels import build as kernels
from reproml.kernels import lstm as kernel_lstm
from reproml.models.learner import Learner, LearnerSpec
from reproml.models.meta_learner import MetaLearnerLSTM, preprocess
from reproml.settings import TaskSettings, resolve_device


@pytest.mark.parametrize("n_way, learner_params, layer2", [(5, 32901, 32947), (10, 36906, 36952)])
def test_parameter_counts_match_the_original(n_way, learner_params, layer2):
    learner = Learner(LearnerSpec(n_way, 84))
    assert learner.n_params == learner_params
    assert learner.layer_sizes() == {"conv1": 896, "bn1": 64, "conv2": 9248, "bn2": 64, "conv3": 9248,
                                     "bn3": 64, "conv4": 9248, "bn4": 64, "head": 800 * n_way + n_way}
    sizes = MetaLearnerLSTM(learner.n_params).layer_sizes()
    assert sizes == {"layer1": 4 * 20 * (4 + 20) + 2 * 4 * 20, "layer2": layer2}


def test_learner_output_shape_and_feature_size():
    learner = Learner(LearnerSpec(5, 84))
    flat = learner.init_flat(torch.Generator().manual_seed(0))
    logits = learner(flat, torch.rand(7, 3, 84, 84), learner.new_bn_stats("cpu"), True, 0.9)
    assert logits.shape == (7, 5)
    assert LearnerSpec(5, 84).feature_size == 800
    assert LearnerSpec(5, 32).feature_size == 32 * 2 * 2


def test_preprocessing_on_hand_computed_inputs():
    x = torch.tensor([1.0, -0.01, 1e-5, 0.0, math.exp(-10), 2.5], dtype=torch.float64)
    expected = torch.tensor([[0.0, 1.0], [-0.4605170185988091, -1.0], [-1.0, 0.2202646579480672],
                             [-1.0, 0.0], [-1.0, 1.0], [0.0916290731874155, 1.0]], dtype=torch.float64)
    torch.testing.assert_close(preprocess(x), expected.t())


def hand_set_meta_learner():
    """Two coordinates, weights chosen so every step can be followed with a calculator."""
    meta = MetaLearnerLSTM(2).double()
    with torch.no_grad():
        for p in meta.parameters():
            p.zero_()
        h = meta.lstm.hidden_size
        meta.lstm.weight_ih[2 * h] = torch.tensor([0.0, 0.0, 1.0, 0.5])  # cell candidate of unit 0 sees the gradient
        meta.lstm.weight_ih[0] = torch.tensor([0.2, 0.0, 0.0, 0.0])  # input gate of unit 0 sees the loss
        meta.WF[0], meta.WF[h], meta.WF[h + 1], meta.bF[0] = 2.0, 0.1, 0.3, 1.0
        meta.WI[0], meta.WI[h], meta.WI[h + 1], meta.bI[0] = 1.0, -0.2, -0.4, -1.0
        meta.cI.copy_(torch.tensor([0.5, -1.0]))
    return meta


def test_two_meta_learner_steps_against_hand_computed_values():
    # Worked out from the update equations: layer 1 unit 0 has i = sigmoid(0.2 * loss_log),
    # f = o = 0.5, g = tanh(grad_log + 0.5 * grad_sign); h_0 = 0.5 tanh(cell); then
    # f_pre = 2 h_0 + 0.1 c + 0.3 f_pre_prev + 1, i_pre = h_0 - 0.2 c - 0.4 i_pre_prev - 1,
    # c' = sigmoid(f_pre) c - sigmoid(i_pre) grad.
    meta = hand_set_meta_learner()
    c, state = meta.cI, meta.initial_state()
    c, state, (f, i) = meta.step(torch.tensor(1.5, dtype=torch.float64),
                                 torch.tensor([0.02, -3e-5], dtype=torch.float64), c, state)
    torch.testing.assert_close(c, torch.tensor([0.37043993401579284, -0.6199368799642184], dtype=torch.float64))
    torch.testing.assert_close(state[2], torch.tensor([1.1043513093292923, 0.48931443192846147], dtype=torch.float64))
    torch.testing.assert_close(state[3], torch.tensor([-1.0728243453353539, -1.0053427840357692], dtype=torch.float64))
    torch.testing.assert_close(f, torch.sigmoid(state[2]))
    # The second step feeds back the first step's pre-sigmoid gate values.
    c, state, _ = meta.step(torch.tensor(0.9, dtype=torch.float64),
                            torch.tensor([-0.5, 0.001], dtype=torch.float64), c, state)
    torch.testing.assert_close(c, torch.tensor([0.44038119051848174, -0.42572255054669206], dtype=torch.float64))


def test_initialisation_follows_the_original_ranges():
    settings = TaskSettings(5, 1, 84)
    learner, meta = build(settings, seed=3, device="cpu")
    assert 4 <= meta.bF.item() <= 5 and -5 <= meta.bI.item() <= -4
    for w in (*meta.lstm.parameters(), meta.WF, meta.WI):
        assert w.abs().max() <= 0.01
    pieces = dict(zip([f"{l}.{n}" for l, n, _ in learner.shapes], learner.unflatten(meta.cI.detach())))
    assert 0 <= pieces["bn1.weight"].min() and pieces["bn1.weight"].max() <= 1 and pieces["bn1.weight"].std() > 0.1
    assert torch.all(pieces["bn1.bias"] == 0)
    assert pieces["conv2.weight"].abs().max() <= 1 / math.sqrt(32 * 9)
    _, meta_again = build(settings, seed=3, device="cpu")
    assert all(torch.equal(a, b) for a, b in zip(meta.parameters(), meta_again.parameters()))
    _, meta_one = build(TaskSettings(5, 1, 84, deviations=("bn_scale_init_one",)), seed=3, device="cpu")
    assert torch.all(learner.unflatten(meta_one.cI.detach())[2] == 1)


def tiny_episode(n_way=3, k_shot=2, n_query=4, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n_way * k_shot, 3, size, size, generator=g), torch.arange(n_way).repeat_interleave(k_shot),
            torch.rand(n_way * n_query, 3, size, size, generator=g), torch.arange(n_way).repeat_interleave(n_query))


def test_inner_loop_runs_the_original_number_of_updates():
    for k_shot, n_way, expected in [(1, 5, 12), (5, 5, 8), (10, 10, 32), (20, 10, 64)]:
        assert TaskSettings(n_way, k_shot, 84).inner_steps == expected
    settings = TaskSettings(3, 2, 16, batch_size=4, epochs=2)  # 6 support images -> 2 batches per epoch
    learner, meta = build(settings, 0, "cpu")
    gates = []
    adapt(meta, learner, settings, *tiny_episode()[:2], gates=gates)
    assert len(gates) == settings.inner_steps == 4


def test_second_derivatives_are_ignored():
    # With gates that do not depend on c (W_F = W_I = 0), c_T = prod(f) c_0 - sum(...) grad_t.
    # Ignoring second derivatives (grad_t treated as constants) gives dL/dc_0 = f^T dL/dc_T exactly.
    settings = TaskSettings(3, 2, 16, batch_size=6, epochs=3)
    learner, meta = build(settings, 0, "cpu")
    with torch.no_grad():
        meta.WF.zero_()
        meta.WI.zero_()
    episode = tiny_episode()
    logits = query_logits(meta, learner, settings, episode, meta_training=True)
    F.cross_entropy(logits, episode[3]).backward()

    c_T, bn = adapt(meta, learner, settings, *episode[:2])
    c_T = c_T.detach().requires_grad_()
    F.cross_entropy(learner(c_T, episode[2], bn, True, settings.bn_momentum), episode[3]).backward()
    forget = torch.sigmoid(meta.bF.detach())
    torch.testing.assert_close(meta.cI.grad, forget ** settings.inner_steps * c_T.grad)


def test_query_statistics_do_not_leak_into_batchnorm_at_meta_test():
    settings = TaskSettings(3, 2, 16)
    learner, meta = build(settings, 0, "cpu")
    episode = tiny_episode()
    changed = list(episode)
    changed[2] = episode[2].clone()
    changed[2][1:] = torch.rand_like(changed[2][1:]) * 5  # every query but the first is replaced
    with torch.no_grad():
        test_a = query_logits(meta, learner, settings, episode, meta_training=False)[0]
        test_b = query_logits(meta, learner, settings, changed, meta_training=False)[0]
        train_a = query_logits(meta, learner, settings, episode, meta_training=True)[0]
        train_b = query_logits(meta, learner, settings, changed, meta_training=True)[0]
    torch.testing.assert_close(test_a, test_b)  # running statistics of the support steps only
    assert not torch.allclose(train_a, train_b)  # batch statistics at meta-training: queries interact


def test_batchnorm_statistics_are_reset_every_episode():
    settings = TaskSettings(3, 2, 16)
    learner, meta = build(settings, 0, "cpu")
    episode = tiny_episode()
    with torch.no_grad():
        first = query_logits(meta, learner, settings, episode, meta_training=False)
        query_logits(meta, learner, settings, tiny_episode(seed=1), meta_training=False)
        again = query_logits(meta, learner, settings, episode, meta_training=False)
    torch.testing.assert_close(first, again)


def test_gradient_batch_division_is_the_default_and_can_be_turned_off():
    faithful = TaskSettings(3, 2, 16)
    deviating = TaskSettings(3, 2, 16, deviations=("no_grad_batch_division",))
    learner, meta = build(faithful, 0, "cpu")
    episode = tiny_episode()
    with torch.no_grad():
        c_faithful, _ = adapt(meta, learner, faithful, *episode[:2])
        c_deviating, _ = adapt(meta, learner, deviating, *episode[:2])
    assert not torch.allclose(c_faithful, c_deviating)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_gives_the_cpu_meta_gradient_and_predictions():
    settings = TaskSettings(3, 2, 16)
    episode = tiny_episode()
    results = {}
    for name in ("cpu", "cuda"):
        device = resolve_device(name)
        learner, meta = build(settings, 0, device)
        on_device = [t.to(device) for t in episode]
        logits = query_logits(meta, learner, settings, on_device, meta_training=True)
        F.cross_entropy(logits, on_device[3]).backward()
        with torch.no_grad():
            test_logits = query_logits(meta, learner, settings, on_device, meta_training=False)
        results[name] = (meta.cI.grad.cpu(), meta.bF.grad.cpu(), test_logits.cpu())
    for cpu, cuda in zip(results["cpu"], results["cuda"]):
        torch.testing.assert_close(cpu, cuda, rtol=1e-3, atol=1e-4)


def to_blocked(rows):
    """(n, 20) -> the fused kernel's (blocks, 20, 8), zero padding rows."""
    n = rows.shape[0]
    padded = torch.zeros(kernel_lstm.blocks(n) * 8, rows.shape[1], dtype=rows.dtype)
    padded[:n] = rows
    return padded.view(-1, 8, rows.shape[1]).transpose(1, 2).contiguous()


def from_blocked(blocked, n):
    return blocked.transpose(1, 2).reshape(-1, blocked.shape[1])[:n]


def needs_fused_kernel(implementation):
    if implementation == "fused" and kernel_lstm.library() is None:
        pytest.skip(f"no compiled kernels here ({kernels.unavailable_reason() or 'they did not build'})")


@pytest.mark.parametrize("implementation", ["pytorch", "fused"])
def test_layer1_follows_torch_lstm_cell_values_and_gradients(implementation):
    needs_fused_kernel(implementation)
    n = 37  # several blocks of 8 rows, the last one partial
    meta = MetaLearnerLSTM(n)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in (*meta.lstm.parameters(), meta.WF, meta.WI):
            p.copy_(torch.rand(p.shape, generator=generator) - 0.5)
    loss = torch.tensor(1.7)
    grad_features = torch.randn(2, n, generator=generator)
    h, c = torch.randn(n, 20, generator=generator), torch.randn(n, 20, generator=generator)
    outside = [torch.randn(n, 20, generator=generator), torch.randn(n, 20, generator=generator),
               torch.randn(2, n, generator=generator)]  # weights of a loss on the three outputs

    def expected():
        h_in, c_in = h.clone().requires_grad_(), c.clone().requires_grad_()
        inputs = torch.cat([preprocess(loss).expand(n, 2), grad_features.t()], dim=1)
        new_h, new_c = meta.lstm(inputs, (h_in, c_in))
        projected = torch.stack([new_h @ meta.WF[:20], new_h @ meta.WI[:20]])
        return (new_h, new_c, projected), (h_in, c_in), lambda g: g

    def got():
        layer1 = kernel_lstm.layer1 if implementation == "fused" else MetaLearnerLSTM.layer1
        convert = (lambda x: to_blocked(x)) if implementation == "fused" else (lambda x: x)
        back = (lambda x: from_blocked(x, n)) if implementation == "fused" else (lambda x: x)
        h_in, c_in = convert(h).requires_grad_(), convert(c).requires_grad_()
        new_h, new_c, projected = layer1(*meta.layer1_weights(loss), grad_features, h_in, c_in)
        return (back(new_h), back(new_c), projected), (h_in, c_in), back

    results = []
    for run in (expected, got):
        meta.zero_grad()
        outputs, state_in, back = run()
        sum((o * w).sum() for o, w in zip(outputs, outside)).backward()
        results.append([o.detach() for o in outputs] + [back(s.grad) for s in state_in]
                       + [p.grad.clone() for p in (*meta.lstm.parameters(), meta.WF, meta.WI)])
    for name, want, have in zip(["h", "cell", "projected", "dh", "dcell", "d weight_ih", "d weight_hh",
                                 "d bias_ih", "d bias_hh", "d WF", "d WI"], *results):
        torch.testing.assert_close(have, want, rtol=1e-5, atol=1e-5, msg=name)


def test_gate_values_are_averaged_per_layer_then_over_episodes(tmp_path):
    from reproml.evaluation.gates import GateRecorder

    learner = Learner(LearnerSpec(2, 16, 1))  # conv 28, bn 2, conv 10, bn 2, ... head 2*1+2
    recorder = GateRecorder(learner, "cpu")
    layer = learner.layer_of_each_param()
    conv1 = (layer == 0).float()  # 1 on conv1's 28 parameters, 0 elsewhere
    for scale in (1.0, 3.0):  # two episodes of two updates: (forget, input)
        recorder.record([(0.5 * conv1 * scale, 0.1 * torch.ones(learner.n_params) * scale),
                         (torch.zeros(learner.n_params), layer.float() * scale)])
    recorder.write_csv(tmp_path / "gates.csv")
    rows = {(int(r["update"]), r["layer"], r["gate"]): r for r in csv.DictReader(open(tmp_path / "gates.csv"))}
    assert len(rows) == 2 * 2 * len(learner.layer_sizes())
    assert float(rows[1, "conv1", "forget"]["mean"]) == pytest.approx(1.0)  # (0.5 + 1.5) / 2
    assert float(rows[1, "conv1", "forget"]["std"]) == pytest.approx(math.sqrt(0.5))  # sample std of 0.5, 1.5
    assert float(rows[1, "bn1", "forget"]["mean"]) == 0.0
    assert float(rows[1, "head", "input"]["mean"]) == pytest.approx(0.2)  # (0.1 + 0.3) / 2
    assert float(rows[2, "head", "input"]["mean"]) == pytest.approx(16.0)  # layer index 8, times (1 + 3) / 2
    assert rows[2, "head", "input"]["episodes"] == "2"


def test_the_allocator_keeps_freed_memory_on_linux():
    import ctypes.util
    import sys

    from reproml.allocator import keep_freed_memory
    on_glibc = sys.platform.startswith("linux") and "libc.so" in (ctypes.util.find_library("c") or "")
    assert keep_freed_memory() is on_glibc
