"""The package's fast path against the straightforward reference (`reproml/reference.py`): the
same meta-gradients on the same episode and the same predictions on the same test episodes.
The fast path runs with PyTorch's operations only and with the compiled CPU kernels
(`reproml/kernels/`: the meta-learner's first layer, each learner block's convolution,
BatchNorm, pooling and ReLU, forward and backward); both are checked.

Each path runs in its own memory layout (the kernels channels-last, PyTorch's operations the
default one), the reference in the default one. The memory format alone changes the convolutions'
summation order, and the meta-gradient is sensitive to that: the learner's near-zero gradient
coordinates (the conv biases before BatchNorm, whose true gradient is 0) are preprocessed with a
factor e^10, so their rounding noise moves a 5w1s meta-gradient at 84x84 by about 1e-2 (relative
norm) between the two formats. In the same format the PyTorch path agrees with the reference to
about 3e-5 there. The kernels round differently (their own exp, other summation orders, BatchNorm
sums in double precision), which moves that meta-gradient by a few percent: as much as a one-ulp
change of the learner's initial parameters moves the reference itself (measured 3e-4 to 5e-2), so
that is what the kernels are held to. Each kernel is checked on its own against float64 to 1e-5 (a
block's conv weight gradient through BatchNorm, which float32 cannot compute that closely, to twice
PyTorch's own float32 error). `reproml selfcheck` holds every path against float64 (tests/test_selfcheck.py).
"""

import pytest
import torch
import torch.nn.functional as F

from reproml import reference
from reproml.bench import random_split
from reproml.data.episodes import EpisodeSampler
from reproml.methods.meta_lstm import build, query_logits
from reproml.kernels import block as kernel_block
from reproml.kernels import build as kernels
from reproml.kernels import lstm as kernel_lstm
from reproml.models.learner import plain_block
from reproml.models.meta_learner import MetaLearnerLSTM
from reproml.settings import TaskSettings


def needs_kernels():
    if not all(kernels.load(name) for name in kernels.KERNELS):
        pytest.skip(f"no compiled kernels here ({kernels.unavailable_reason() or 'they did not build'})")


def assert_same_on_any_number_of_threads(compute):
    """compute() gives the same tensors, bit for bit, on one thread and on three."""
    threads = torch.get_num_threads()
    results = []
    try:
        for count in (1, 3):
            torch.set_num_threads(count)
            results.append(compute())
    finally:
        torch.set_num_threads(threads)
    for one, several in zip(*results):
        assert torch.equal(one, several)


def pytorch_only(monkeypatch):
    monkeypatch.setattr(MetaLearnerLSTM, "uses_kernel", lambda self: False)
    monkeypatch.setattr(kernel_block, "library", lambda: None)


@pytest.fixture(params=["pytorch", "kernels"])
def implementation(request, monkeypatch):
    """Runs the test with PyTorch's operations only, and with the compiled kernels."""
    if request.param == "pytorch":
        pytorch_only(monkeypatch)
    else:
        needs_kernels()
    return request.param


def sampler_for(settings, seed=0):
    return EpisodeSampler(random_split(settings, "cpu", seed), settings.n_way, settings.k_shot, settings.n_query, seed)


def relative_error(got, expected):
    return ((got - expected).norm() / expected.norm()).item()


def meta_gradient(logits_of, meta, learner, settings, episode):
    meta.zero_grad()
    F.cross_entropy(logits_of(meta, learner, settings, episode, meta_training=True), episode[3]).backward()
    return {name: p.grad.clone() for name, p in meta.named_parameters()}


def worst_relative_error(got, expected):
    for name in expected:
        assert expected[name].abs().max() > 0, name  # the comparison means something
    return max(relative_error(got[name], expected[name]) for name in expected)


def rounding_noise(meta, learner, settings, episode, expected, draws=3):
    """How far the reference's meta-gradient moves when the learner's initial parameters move
    by one float32 rounding step at random: the most any float32 implementation can promise."""
    start = meta.cI.detach().clone()
    noise = []
    for seed in range(draws):
        with torch.no_grad():
            meta.cI.copy_(start * (1 + 2 ** -24 * torch.randn(start.shape, generator=torch.Generator().manual_seed(seed))))
        noise.append(worst_relative_error(meta_gradient(reference.query_logits, meta, learner, settings, episode), expected))
    with torch.no_grad():
        meta.cI.copy_(start)
    return max(noise)


@pytest.mark.parametrize("n_way, k_shot, image_size", [(5, 1, 32), (5, 5, 32), (5, 1, 84)])
def test_fast_and_reference_paths_give_the_same_meta_gradient(n_way, k_shot, image_size, implementation):
    settings = TaskSettings(n_way, k_shot, image_size, n_query=4)
    episode = sampler_for(settings).tensors(0, "cpu")
    learner, meta = build(settings, 0, "cpu")
    slow = meta_gradient(reference.query_logits, meta, learner, settings, episode)
    error = worst_relative_error(meta_gradient(query_logits, meta, learner, settings, episode), slow)
    if implementation == "pytorch":  # the same operations in the same order, up to the fast path's rearrangements
        assert error < 2e-4
    else:
        noise = rounding_noise(meta, learner, settings, episode, slow)
        assert error < max(2e-4, 2 * noise), (error, noise)
        assert error < 0.25  # and far from the O(1) error of a wrong equation


def test_fast_and_reference_paths_give_the_same_test_predictions(implementation):
    settings = TaskSettings(5, 1, 32, n_query=6)
    sampler = sampler_for(settings, seed=1)
    learner, meta = build(settings, 0, "cpu")
    with torch.no_grad():  # a meta-learner that has moved away from its initialisation
        for p in meta.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(2)) * 0.01)
    with torch.no_grad():
        for index in range(5):
            episode = sampler.tensors(index, "cpu")
            fast = query_logits(meta, learner, settings, episode, meta_training=False)
            slow = reference.query_logits(meta, learner, settings, episode, meta_training=False)
            torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-4)
            assert torch.equal(fast.argmax(1), slow.argmax(1))


def unrolled_meta_gradient(meta, grads):
    """The meta-learner alone, unrolled over fixed learner gradients (no learner in the loop, so
    no feedback of rounding through it), and the gradient of a loss on its final parameters."""
    meta.zero_grad()
    c, state = meta.cI, meta.initial_state()
    for t, grad in enumerate(grads):
        c, state, _ = meta.step(torch.tensor(2.0 - 0.1 * t), grad, c, state)
    (c * torch.linspace(-1, 1, c.shape[0])).sum().backward()
    return c.detach(), {name: p.grad.clone() for name, p in meta.named_parameters()}


def test_the_lstm_kernel_gives_pytorchs_meta_gradient_over_an_unrolled_episode(monkeypatch):
    needs_kernels()
    n = 32901
    generator = torch.Generator().manual_seed(0)
    meta = MetaLearnerLSTM(n)
    meta.reset_parameters(torch.randn(n, generator=generator), generator)
    with torch.no_grad():  # larger than the initial 0.01, so that layer 1 matters in the result
        for p in (*meta.lstm.parameters(), meta.WF, meta.WI):
            p.mul_(30)
    # gradients spanning both branches of the preprocessing (|g| above and below e^-10)
    grads = [torch.randn(n, generator=generator) * 10.0 ** torch.empty(n).uniform_(-7, 0, generator=generator)
             for _ in range(12)]
    fused_c, fused = unrolled_meta_gradient(meta, grads)
    pytorch_only(monkeypatch)
    pytorch_c, pytorch = unrolled_meta_gradient(meta, grads)
    torch.testing.assert_close(fused_c, pytorch_c, rtol=1e-5, atol=1e-6)
    assert worst_relative_error(fused, pytorch) < 1e-4


def test_the_lstm_kernel_gives_the_same_numbers_on_any_number_of_threads():
    needs_kernels()
    n = 5000
    generator = torch.Generator().manual_seed(1)
    weight, bias, proj = (torch.randn(shape, generator=generator).requires_grad_() for shape in ((80, 22), (80,), (20, 2)))
    features = torch.randn(2, n, generator=generator)
    h, cell = (torch.randn(kernel_lstm.blocks(n), 20, 8, generator=generator).requires_grad_() for _ in range(2))

    def compute():
        outputs = kernel_lstm.layer1(weight, bias, proj, features, h, cell)
        grads = torch.autograd.grad(sum(o.square().sum() for o in outputs), [weight, bias, proj, h, cell])
        return [o.detach() for o in outputs] + list(grads)

    assert_same_on_any_number_of_threads(compute)


def test_the_lstm_kernel_saturates_like_pytorch():
    """Pre-activations far outside exp's float32 range: the gates saturate as PyTorch's do, no NaN."""
    needs_kernels()
    n = 20
    weight = torch.zeros(80, 22)
    bias = torch.tensor([-300.0, 300.0, -1e4, 1e4] * 20)
    proj = torch.ones(20, 2)
    features = torch.zeros(2, n)
    h, cell = kernel_lstm.initial_state(n, "cpu")
    fused = kernel_lstm.layer1(weight, bias, proj, features, h, cell)
    pytorch = MetaLearnerLSTM.layer1(weight, bias, proj, features, torch.zeros(n, 20), torch.zeros(n, 20))
    assert all(torch.isfinite(x).all() for x in fused)
    torch.testing.assert_close(fused[2], pytorch[2])
    torch.testing.assert_close(fused[1].transpose(1, 2).reshape(-1, 20)[:n], pytorch[1])


@pytest.mark.parametrize("batch, in_ch, side, out_ch", [
    (3, 3, 84, 32), (2, 3, 30, 16), (5, 32, 42, 32), (3, 32, 21, 32), (2, 16, 10, 32), (2, 32, 7, 16),
    (1, 32, 5, 48), (2, 16, 8, 16)])  # every row width modulo the kernel's 6-pixel tile
def test_the_convolution_kernels_give_the_output_and_all_gradients(batch, in_ch, side, out_ch):
    """Against float64: the kernels sum in another order than oneDNN (and measure closer to
    float64 than oneDNN here: about 1e-6 against 5e-6 relative at 84x84). With 3 input channels
    (the images) no input gradient is computed."""
    needs_kernels()
    generator = torch.Generator().manual_seed(batch * side)
    x = torch.rand(batch, in_ch, side, side, generator=generator, dtype=torch.float64).requires_grad_()
    weight = torch.randn(out_ch, in_ch, 3, 3, generator=generator, dtype=torch.float64).requires_grad_()
    bias = torch.randn(out_ch, generator=generator, dtype=torch.float64).requires_grad_()
    grad_out = torch.randn(batch, out_ch, side, side, generator=generator, dtype=torch.float64)
    out = F.conv2d(x, weight, bias, padding=1)
    exact = {"output": out.detach(), **dict(zip(["d input", "d weight", "d bias"],
                                              torch.autograd.grad(out, [x, weight, bias], grad_out)))}
    x32, grad_out32 = (kernel_block.channels_last(t.detach().float()) for t in (x, grad_out))
    weight32, bias32 = weight.detach().float(), bias.detach().float()
    got = dict(zip(["d weight", "d bias"], kernel_block.weight_grad(x32, weight32, grad_out32)))
    got["output"] = kernel_block.conv_forward(x32, weight32, bias32)
    if in_ch % 16 == 0:
        got["d input"] = kernel_block.conv_backward(x32, weight32, grad_out32)[0]
    for name, value in got.items():
        assert relative_error(value.double(), exact[name]) < 1e-5, name


def identity_taps(ch, in_ch):
    """A convolution whose output channel o is input channel o % in_ch, exactly: the block's
    kernels then see chosen z."""
    weight = torch.zeros(ch, in_ch, 3, 3)
    weight[range(ch), [o % in_ch for o in range(ch)], 1, 1] = 1
    return weight


def block_results(block, x, weight, bias, gamma, beta, outside):
    """Output, running statistics and gradients of a block in training mode (the input's
    gradient unless it is images: at most 4 channels)."""
    images = x.shape[1] <= 4
    inputs = [t.clone().requires_grad_() for t in (x, weight, gamma, beta)]
    inputs[0].requires_grad_(not images)
    running_mean, running_var = torch.zeros_like(gamma), torch.ones_like(gamma)
    out = block(inputs[0], inputs[1], bias, running_mean, running_var, inputs[2], inputs[3], True, 0.1, 1e-3)
    if block is kernel_block.block:
        assert out.grad_fn.name() == ("FirstBlockBackward" if images else "ConvBlockBackward")
    grads = torch.autograd.grad((out * outside).sum(), [t for t in inputs if t.requires_grad])
    return [t.detach().double() for t in (out, running_mean, running_var, *grads)]


@pytest.mark.parametrize("batch, in_ch, ch, side, ties", [
    (5, 3, 32, 84, False), (2, 3, 16, 9, False), (3, 1, 16, 11, False), (2, 4, 32, 8, False), (3, 3, 16, 10, True),
    (3, 16, 16, 21, False), (2, 32, 32, 7, False), (4, 32, 32, 42, True), (2, 16, 16, 10, True)])
def test_the_block_kernels_give_values_gradients_and_running_statistics(batch, in_ch, ch, side, ties):
    """Convolution, BatchNorm, pooling and ReLU against PyTorch's operations in float64, gamma of
    both signs (a negative one pools the smallest z). With `ties` the convolution passes its
    input through and every window holds four equal values: the gradient must go to the first,
    as PyTorch's pooling sends it. Images (1 to 4 channels) take the first block's way: statistics
    from the patches' moments, z never stored."""
    needs_kernels()
    generator = torch.Generator().manual_seed(side)
    x = torch.randn(batch, in_ch, side, side, generator=generator) * 2 + 0.5
    weight, bias = torch.randn(ch, in_ch, 3, 3, generator=generator) * 0.2, torch.randn(ch, generator=generator)
    if ties:
        x = x[:, :, ::2, ::2].repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
        weight, bias = identity_taps(ch, in_ch), torch.zeros(ch)
    x = x.contiguous(memory_format=torch.channels_last)
    gamma, beta = torch.rand(ch, generator=generator) - 0.3, torch.randn(ch, generator=generator) * 0.1
    outside = torch.randn(batch, ch, side // 2, side // 2, generator=generator)
    fused = block_results(kernel_block.block, x, weight, bias, gamma, beta, outside)
    exact = block_results(plain_block, *(t.double() for t in (x, weight, bias, gamma, beta, outside)))
    pytorch = block_results(plain_block, x, weight, bias, gamma, beta, outside)
    names = ["output", "running mean", "running var"] + ["d x"] * (in_ch > 4) + ["d weight", "d gamma", "d beta"]
    for name, got, want, float32 in zip(names, fused, exact, pytorch, strict=True):
        # d weight sums d z * x over every pixel, and d z sums to zero per channel: the sum cancels
        # and float32 rounding shows (PyTorch's own float32 result is about 4e-4 off at 84x84)
        tolerance = 2 * relative_error(float32, want) if name == "d weight" else 0
        assert relative_error(got, want) < max(1e-5, tolerance), name


@pytest.mark.parametrize("in_ch, side", [(3, 84), (32, 42)])
def test_the_block_kernels_give_the_same_numbers_on_any_number_of_threads(in_ch, side):
    needs_kernels()
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(5, in_ch, side, side, generator=generator).contiguous(memory_format=torch.channels_last)
    weight, bias = torch.randn(32, in_ch, 3, 3, generator=generator), torch.randn(32, generator=generator)
    gamma, beta = torch.rand(32, generator=generator), torch.zeros(32)
    outside = torch.randn(5, 32, side // 2, side // 2, generator=generator)
    assert_same_on_any_number_of_threads(
        lambda: block_results(kernel_block.block, x, weight, bias, gamma, beta, outside))


@pytest.mark.parametrize("in_ch", [16, 3])
def test_the_block_kernels_in_evaluation_mode_use_the_running_statistics(in_ch):
    needs_kernels()
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(6, in_ch, 21, 21, generator=generator).contiguous(memory_format=torch.channels_last)
    weight, bias = torch.randn(16, in_ch, 3, 3, generator=generator) * 0.2, torch.randn(16, generator=generator)
    gamma, beta = torch.rand(16, generator=generator) - 0.3, torch.randn(16, generator=generator)
    running_mean, running_var = torch.randn(16, generator=generator), torch.rand(16, generator=generator) + 0.5
    arguments = (x, weight, bias, running_mean, running_var, gamma, beta)
    before = running_mean.clone(), running_var.clone()
    with torch.no_grad():
        fused = kernel_block.block(*arguments, False, 0.1, 1e-3)
        exact = plain_block(*(t.double() for t in arguments), False, 0.1, 1e-3)
    assert relative_error(fused.double(), exact) < 1e-6
    assert torch.equal(running_mean, before[0]) and torch.equal(running_var, before[1])  # only read


def test_the_moments_cache_computes_a_batch_once_and_never_serves_stale_moments():
    needs_kernels()
    cache = kernel_block.MomentsCache(size=2)
    x = torch.rand(3, 3, 10, 10).contiguous(memory_format=torch.channels_last)
    first = cache(x)
    assert cache(x) is first  # the same images: the same moments, not computed again
    x.mul_(2)  # changed in place: its version counter moved on
    doubled = cache(x)
    assert doubled is not first and torch.allclose(doubled[0], 2 * first[0])
    copy = x.clone()
    assert cache(copy) is not doubled and torch.equal(cache(copy)[1], doubled[1])  # another tensor, computed anew
    cache(torch.rand(3, 3, 10, 10).contiguous(memory_format=torch.channels_last))
    assert len(cache.entries) == 2 and id(x) not in cache.entries  # the oldest makes room


def test_the_patch_moments_are_exact_sums_of_the_images_patches():
    needs_kernels()
    generator = torch.Generator().manual_seed(5)
    x = torch.rand(3, 3, 13, 10, generator=generator)
    sums, gram = kernel_block.patch_moments(x.contiguous(memory_format=torch.channels_last))
    # one row per output position, values in [kh][kw][channel] order
    patches = F.unfold(x.double(), 3, padding=1).view(3, 3, 9, -1).permute(0, 3, 2, 1).reshape(-1, 27)
    torch.testing.assert_close(sums, patches.sum(0), rtol=1e-12, atol=0)
    torch.testing.assert_close(gram, patches.T @ patches, rtol=1e-12, atol=0)


def test_the_first_block_statistics_keep_their_precision_when_the_output_barely_varies():
    """Images far from zero (100 plus noise of 0.01) through 1x1 filters (only the centre taps:
    no padding at the borders to make z vary): z's variance is 1e-10 of its squared mean, a
    small difference of large moments, which double precision still gives to 1e-5 (with the
    moments summed in float32 it would be noise)."""
    needs_kernels()
    generator = torch.Generator().manual_seed(6)
    x = 100 + 0.01 * torch.rand(4, 3, 84, 84, generator=generator)
    weight = torch.zeros(16, 3, 3, 3)
    weight[:, :, 1, 1] = torch.rand(16, 3, generator=generator)
    bias, gamma, beta = torch.zeros(16), torch.ones(16), torch.zeros(16)
    images = x.contiguous(memory_format=torch.channels_last)
    _, mean, var = kernel_block.FirstBlock.apply(images, weight, bias, gamma, beta, 1e-3, kernel_block.patch_moments(images))
    z = F.conv2d(x.double(), weight.double(), padding=1)
    assert relative_error(mean.double(), z.mean((0, 2, 3))) < 1e-7
    assert relative_error(var.double(), z.var((0, 2, 3), unbiased=False)) < 1e-5
