"""Schedules: formulas against independent computations, bounds, state round trips."""

import io

import numpy as np
import pytest
import torch

import semid_fast
from semid_fast.schedules import CosineDecay, ExponentialDecay, FrequencyNoise, learnable_sigma_loss

STEPS = [0, 1, 2, 7, 50, 99, 100, 101, 1000, 10**6]


@pytest.mark.parametrize("start,rate,minimum", [(1.0, 1e-3, 0.1), (5.0, 0.05, 0.0), (2.0, 0.0, 0.5)])
def test_exponential_formula(start, rate, minimum):
    decay = ExponentialDecay(start, rate, minimum)
    expected = np.maximum(minimum, start * np.exp(-rate * np.array(STEPS, dtype=np.float64)))
    got = np.array([decay(s) for s in STEPS])
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    assert all(isinstance(decay(s), float) for s in STEPS)
    tensor = decay(torch.tensor(STEPS, dtype=torch.float64))
    np.testing.assert_allclose(tensor.numpy(), expected, rtol=1e-6)
    assert np.all(np.diff(got) <= 0)  # never increases
    assert np.all((got >= minimum) & (got <= start))


@pytest.mark.parametrize("start,end,steps", [(1.0, 0.1, 100), (0.2, 2.0, 7), (3.0, 3.0, 1)])
def test_cosine_formula(start, end, steps):
    decay = CosineDecay(start, end, steps)
    s = np.array(STEPS, dtype=np.float64)
    # independent form: cos^2 of a quarter turn, cos((pi/2) t)^2 == (1 + cos(pi t)) / 2
    t = np.minimum(s, steps) / steps
    expected = end + (start - end) * np.cos(np.pi / 2 * t) ** 2
    got = np.array([decay(int(v)) for v in STEPS])
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(decay(torch.tensor(STEPS)).numpy(), expected, rtol=1e-6, atol=1e-6)
    assert decay(0) == pytest.approx(start) and decay(steps) == pytest.approx(end)
    assert decay(steps * 3 + 5) == pytest.approx(end)
    lo, hi = min(start, end), max(start, end)
    assert np.all((got >= lo - 1e-12) & (got <= hi + 1e-12))
    dense = np.array([decay(i) for i in range(steps + 3)])
    assert np.all(np.diff(dense) * np.sign(end - start) >= -1e-12)  # monotone towards end


def test_schedule_bad_arguments():
    with pytest.raises(ValueError, match="start"):
        ExponentialDecay(0.0, 0.1)
    with pytest.raises(ValueError, match="rate"):
        ExponentialDecay(1.0, -0.1)
    with pytest.raises(ValueError, match="minimum"):
        ExponentialDecay(1.0, 0.1, 2.0)
    with pytest.raises(ValueError, match="start"):
        ExponentialDecay(float("nan"), 0.1)
    with pytest.raises(TypeError, match="start"):
        ExponentialDecay("1", 0.1)
    with pytest.raises(ValueError, match="steps"):
        CosineDecay(1.0, 0.0, 0)
    with pytest.raises(TypeError, match="steps"):
        CosineDecay(1.0, 0.0, 2.5)
    with pytest.raises(ValueError, match="step"):
        ExponentialDecay(1.0, 0.1)(-1)
    with pytest.raises(TypeError, match="step"):
        CosineDecay(1.0, 0.0, 10)(1.5)


def _usage_after(batches, k, momentum):
    """Independent EMA of code shares, numpy float64."""
    usage = np.full(k, 1.0 / k)
    for codes in batches:
        share = np.bincount(codes, minlength=k) / len(codes)
        usage = momentum * usage + (1 - momentum) * share
    return usage


def test_frequency_noise_rule_on_constructed_usage():
    k = 8
    noise = FrequencyNoise(k, momentum=0.5, threshold=1.4, scale=0.7)
    # Before any update usage is uniform: nothing is over-used (1/K is not > 1.4/K).
    codes = torch.arange(k)
    assert torch.equal(noise.noise_scale(codes), torch.zeros(k))
    # Code 3 takes half the batch, code 5 a quarter, codes 0 and 1 an eighth each.
    batch = torch.tensor([3, 3, 3, 3, 5, 5, 0, 1])
    noise.update(batch)
    expected_usage = _usage_after([batch.numpy()], k, 0.5)
    np.testing.assert_allclose(noise.usage.numpy(), expected_usage, rtol=1e-6)
    over = expected_usage > 1.4 / k
    assert over.tolist() == [False, False, False, True, False, True, False, False]
    scales = noise.noise_scale(codes)
    assert scales.dtype == torch.float32 and scales.shape == (k,)
    np.testing.assert_allclose(scales.numpy(), np.where(over, 0.7, 0.0))
    # per-sample: a batch of rows with repeated codes; explicit scale and tensor scale
    rows = torch.tensor([3, 0, 5, 5, 7])
    np.testing.assert_allclose(noise.noise_scale(rows, scale=2.0).numpy(), [2, 0, 2, 2, 0])
    np.testing.assert_allclose(noise.noise_scale(rows, scale=torch.tensor(0.25)).numpy(),
                               [0.25, 0, 0.25, 0.25, 0])


def test_frequency_noise_ema_matches_independent_computation():
    gen = torch.Generator().manual_seed(0)
    k, momentum = 16, 0.9
    noise = FrequencyNoise(k, momentum=momentum, threshold=1.2)
    batches = []
    for size in (1, 5, 64, 33, 200):
        skewed = torch.randint(0, k, (size,), generator=gen) // torch.randint(1, 4, (size,), generator=gen)
        batches.append(skewed.numpy())
        noise.update(skewed.to(torch.int32))
    usage = _usage_after(batches, k, momentum)
    np.testing.assert_allclose(noise.usage.numpy(), usage, rtol=1e-5)
    assert noise.usage.sum().item() == pytest.approx(1.0, abs=1e-5)
    codes = torch.arange(k)
    np.testing.assert_array_equal(noise.over_used(codes).numpy(), usage > 1.2 / k)


def test_frequency_noise_state_dict_round_trip():
    noise = FrequencyNoise(6, momentum=0.8, threshold=1.1)
    noise.update(torch.tensor([0, 0, 0, 2]))
    buffer = io.BytesIO()
    torch.save(noise.state_dict(), buffer)
    buffer.seek(0)
    restored = FrequencyNoise(6, momentum=0.8, threshold=1.1)
    assert not torch.equal(restored.usage, noise.usage)
    restored.load_state_dict(torch.load(buffer))
    assert torch.equal(restored.usage, noise.usage)
    codes = torch.tensor([0, 1, 2, 3, 4, 5])
    assert torch.equal(restored.noise_scale(codes), noise.noise_scale(codes))
    noise.update(torch.tensor([1, 1]))
    restored.update(torch.tensor([1, 1]))
    assert torch.equal(restored.usage, noise.usage)


def test_frequency_noise_bad_arguments():
    with pytest.raises(ValueError, match="num_codes"):
        FrequencyNoise(0)
    with pytest.raises(ValueError, match="momentum"):
        FrequencyNoise(4, momentum=1.0)
    with pytest.raises(ValueError, match="threshold"):
        FrequencyNoise(4, threshold=0.0)
    with pytest.raises(ValueError, match="scale"):
        FrequencyNoise(4, scale=-1.0)
    noise = FrequencyNoise(4)
    with pytest.raises(ValueError, match="codes must lie"):
        noise.update(torch.tensor([0, 4]))
    with pytest.raises(ValueError, match="codes must lie"):
        noise.noise_scale(torch.tensor([-1]))
    with pytest.raises(TypeError, match="codes"):
        noise.update(torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="codes"):
        noise.update(torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="scale"):
        noise.noise_scale(torch.tensor([0]), scale=-0.5)


def test_learnable_sigma_loss_formula_and_gradcheck():
    gen = torch.Generator().manual_seed(1)
    loss = torch.rand(5, generator=gen, dtype=torch.float64) * 3
    sigma = torch.randn(5, generator=gen, dtype=torch.float64)
    lam = 0.05
    got = learnable_sigma_loss(loss, sigma, lam)
    s = np.abs(sigma.numpy()) + lam
    np.testing.assert_allclose(got.numpy(), loss.numpy() * 0.5 / s**2 + np.log(s), rtol=1e-12)
    # away from sigma = 0 (|sigma| has a kink there)
    sigma = (sigma.abs() + 0.1) * torch.sign(sigma)
    assert torch.autograd.gradcheck(lambda l, sg: learnable_sigma_loss(l, sg, lam),
                                    (loss.clone().requires_grad_(), sigma.clone().requires_grad_()))
    # the minimiser over sigma > 0 is |sigma| + lam = sqrt(loss)
    sig = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.SGD([sig], lr=0.05)
    target = torch.tensor(2.25, dtype=torch.float64)
    for _ in range(2000):
        opt.zero_grad()
        learnable_sigma_loss(target, sig, lam).backward()
        opt.step()
    assert sig.item() + lam == pytest.approx(1.5, rel=1e-4)


def test_learnable_sigma_loss_bad_arguments():
    with pytest.raises(ValueError, match="lam"):
        learnable_sigma_loss(torch.tensor(1.0), torch.tensor(1.0), 0.0)
    with pytest.raises(TypeError, match="sigma"):
        learnable_sigma_loss(torch.tensor(1.0), 1.0)
    with pytest.raises(TypeError, match="loss"):
        learnable_sigma_loss(torch.tensor(1), torch.tensor(1.0))


def test_exported():
    assert semid_fast.schedules.ExponentialDecay is ExponentialDecay
