"""Schedules: formulas against independent computations, bounds, state round trips."""

import io

import numpy as np
import pytest
import torch

import semid_fast
from semid_fast.reference import gumbel as ref
from semid_fast.schedules import (CosineDecay, ExponentialDecay, FrequencyNoise,
                                  learnable_sigma_loss, sigma_noise_scale)

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


class DigerFrequencyOracle:
    """DIGER's frequency-based selection, written from its algorithm (github.com/junchen-fu/DIGER,
    vq.py: ResidualVectorQuantizer.forward calls VectorQuantizer.get_sequence_level_decision on
    level 0, then level 0's VectorQuantizer.forward folds its deterministic codes into
    code_usage_ema), numpy float64: d = |x|^2 + |c|^2 - 2 x.c (or -cos), codes = argmin d,
    hot = ema[codes] > ratio / K with the ema before the batch, then
    ema = m * ema + (1 - m) * bincount(codes) / max(N, 1)."""

    def __init__(self, k, ratio=1.5, momentum=0.99):
        self.k, self.ratio, self.momentum = k, ratio, momentum
        self.ema = np.full(k, 1.0 / k)

    def step(self, x, book, distance="l2", counted=None):
        x, book = np.asarray(x, np.float64), np.asarray(book, np.float64)
        if distance == "l2":
            d = (x**2).sum(1, keepdims=True) + (book**2).sum(1)[None] - 2 * x @ book.T
        else:
            d = -(x / np.linalg.norm(x, axis=1, keepdims=True)) @ (
                book / np.linalg.norm(book, axis=1, keepdims=True)).T
        codes = d.argmin(1)
        hot = self.ema[codes] > self.ratio / self.k
        counts = np.bincount(codes if counted is None else counted, minlength=self.k)
        self.ema = self.momentum * self.ema + (1 - self.momentum) * counts / max(counts.sum(), 1)
        return hot, codes


def _clustered(gen, n, book, spread=0.3):
    """Rows near a skewed choice of codewords, so that some codes get over-used."""
    k = book.shape[0]
    pick = (torch.rand(n, generator=gen) ** 3 * k).long()
    return book[pick] + spread * torch.randn(n, book.shape[1], generator=gen, dtype=book.dtype)


@pytest.mark.parametrize("distance", ["l2", "cosine"])
@pytest.mark.parametrize("stack", [False, True])
def test_frequency_noise_call_follows_diger_with_its_defaults(distance, stack):
    gen = torch.Generator().manual_seed(3)
    k, d = 12, 6
    books = torch.randn(3, k, d, generator=gen, dtype=torch.float64)
    noise = FrequencyNoise(k)  # DIGER's defaults: ratio 1.5, momentum 0.99
    oracle, ratio_one, momentum_nine = (DigerFrequencyOracle(k), DigerFrequencyOracle(k, ratio=1.0),
                                        DigerFrequencyOracle(k, momentum=0.9))
    differs = [False, False]
    hot_seen = 0
    for step, n in enumerate([1, 7, 300, 64, 513, 2, 256] * 6):
        x = _clustered(gen, n, books[0])
        scales = noise(x, books if stack else books[0], distance=distance, scale=0.75)
        hot, _ = oracle.step(x.numpy(), books[0].numpy(), distance)
        assert scales.shape == (n,) and scales.dtype == torch.float32
        np.testing.assert_array_equal(scales.numpy(), np.where(hot, 0.75, 0.0),
                                      err_msg=f"step {step}")
        np.testing.assert_allclose(noise.usage.numpy(), oracle.ema, rtol=1e-5, atol=1e-7)
        for i, other in enumerate((ratio_one, momentum_nine)):
            other_hot, _ = other.step(x.numpy(), books[0].numpy(), distance)
            differs[i] |= not np.array_equal(hot, other_hot)
        hot_seen += int(hot.sum())
    assert hot_seen > 0 and all(differs)  # the run tells ratio 1.5 from 1.0, 0.99 from 0.9


def test_frequency_noise_default_ratio_and_momentum_by_behaviour():
    # One code takes every sample: DIGER's rule (ratio 1.5, momentum 0.99, uniform start)
    # first calls it over-used after the n-th batch, n the least with
    # 1 - (1 - 1/K) * 0.99^n > 1.5 / K.
    k = 8
    n_first = next(n for n in range(1, 100) if 1 - (1 - 1 / k) * 0.99**n > 1.5 / k)
    noise = FrequencyNoise(k)
    zero = torch.zeros(5, dtype=torch.long)
    for batch in range(1, n_first + 1):
        noise.update(zero)
        assert noise.over_used(zero[:1]).item() == (batch == n_first)
    assert n_first > 2  # ratio 1.0 or momentum 0.9 would cross after the first batch


def test_frequency_noise_call_decides_on_argmin_not_sampled_codes_and_counts_argmin():
    gen = torch.Generator().manual_seed(8)
    k, d = 10, 4
    book = torch.randn(k, d, generator=gen)
    noise, oracle = FrequencyNoise(k, momentum=0.5), DigerFrequencyOracle(k, momentum=0.5)
    sampled_usage = DigerFrequencyOracle(k, momentum=0.5).ema
    sampled_differ = 0
    for step in range(6):
        x = _clustered(gen, 200, book.double()).float()
        scales = noise(x, book)
        hot, argmin = oracle.step(x.numpy(), book.numpy())
        np.testing.assert_array_equal(scales.numpy() > 0, hot)
        codes, _, _ = sf_quantize(x, book, scales, step)
        sampled = codes.numpy()
        sampled_differ += int((sampled != argmin).sum())
        # a row without noise keeps its argmin code, as DIGER's cold rows do
        np.testing.assert_array_equal(sampled[~hot], argmin[~hot])
        sampled_usage = 0.5 * sampled_usage + 0.5 * np.bincount(sampled, minlength=k) / len(sampled)
    np.testing.assert_allclose(noise.usage.numpy(), oracle.ema, rtol=1e-6)
    assert sampled_differ > 0 and not np.allclose(noise.usage.numpy(), sampled_usage, rtol=1e-3)


def sf_quantize(x, book, scales, seed):
    return semid_fast.gumbel_quantize(x, book, tau=2.0, noise_scale=scales, seed=seed)


def test_frequency_noise_call_eval_mode_and_usage_codes():
    gen = torch.Generator().manual_seed(1)
    book = torch.randn(6, 3, generator=gen)
    x = _clustered(gen, 40, book.double()).float()
    noise = FrequencyNoise(6, momentum=0.0, threshold=1.0)
    noise.eval()
    assert torch.equal(noise(x, book), torch.zeros(40))
    assert torch.equal(noise.usage, torch.full((6,), 1 / 6))  # eval: nothing counted
    noise.train()
    counted = torch.tensor([2, 2, 2, 5])
    noise(x, book, usage_codes=counted)  # e.g. DIGER's Sinkhorn codes when sk_epsilon > 0
    np.testing.assert_allclose(noise.usage.numpy(), [0, 0, 0.75, 0, 0, 0.25])
    hot = noise(x, book)
    argmin = ref.quantize_logits(x, book).argmax(-1)
    assert torch.equal(hot > 0, (argmin == 2) | (argmin == 5))


def test_frequency_noise_on_a_short_real_diger_run(shared_data):
    # DIGER's frequency run (run_FrqUD.sh: ratio 1.5, momentum 0.99, tau 2, batches of 256) on
    # Beauty's item embeddings: a 3-level codebook trained through gumbel_quantize with the
    # per-row noise scales of FrequencyNoise, the oracle fed the same batches and codebooks.
    emb = np.load(shared_data / "amazon14_beauty" / "cf_emb64.npy")[1:-1].astype(np.float32)
    gen = torch.Generator().manual_seed(0)
    x_all = torch.from_numpy(emb)
    rows = x_all[torch.randperm(len(emb), generator=gen)[:3 * 256]].reshape(3, 256, -1)
    books = torch.nn.Parameter(rows * torch.tensor([1.0, 0.3, 0.1])[:, None, None])
    opt = torch.optim.Adam([books], lr=1e-3)
    noise, oracle = FrequencyNoise(256), DigerFrequencyOracle(256)
    hot_rows = 0
    for step in range(25):
        x = x_all[torch.randint(0, len(emb), (256,), generator=gen)]
        hot, argmin = oracle.step(x.numpy(), books.detach()[0].numpy())
        scales = noise(x, books)
        np.testing.assert_array_equal(scales.numpy() > 0, hot, err_msg=f"step {step}")
        codes, quantized, soft = semid_fast.gumbel_quantize(x, books, tau=2.0, noise_scale=scales,
                                                            seed=step)
        np.testing.assert_array_equal(codes[~torch.from_numpy(hot), 0].numpy(), argmin[~hot])
        hot_rows += int(hot.sum())
        opt.zero_grad()
        torch.nn.functional.mse_loss(quantized, x).backward()
        opt.step()
    np.testing.assert_allclose(noise.usage.numpy(), oracle.ema, rtol=1e-5, atol=1e-7)
    assert 0 < hot_rows < 25 * 256


def test_frequency_noise_call_bad_arguments():
    noise = FrequencyNoise(4)
    x, book = torch.randn(3, 2), torch.randn(4, 2)
    with pytest.raises(ValueError, match="codebook"):
        noise(x, torch.randn(5, 2))
    with pytest.raises(ValueError, match="codebook"):
        noise(x, torch.randn(4, 3))
    with pytest.raises(ValueError, match="codebook"):
        noise(x, torch.randn(4))
    with pytest.raises(TypeError, match="codebook"):
        noise(x, torch.ones(4, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="x must have shape"):
        noise(torch.randn(3), book)
    with pytest.raises(TypeError, match="x must have dtype"):
        noise(torch.ones(3, 2, dtype=torch.long), book)
    with pytest.raises(ValueError, match="distance"):
        noise(x, book, distance="dot")
    with pytest.raises(ValueError, match="codes must lie"):
        noise(x, book, usage_codes=torch.tensor([4]))
    with pytest.raises(ValueError, match="scale"):
        noise(x, book, scale=-1.0)


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


def _diger_sdud_loss(loss, sigma, lam):
    """DIGER's AutoSigmaSimple.compute_uncertainty_loss (github.com/junchen-fu/DIGER, vq.py),
    fixed lambda: e = max(|sigma| + lam, 1e-6); loss / (2 e^2) + log(e)."""
    e = np.maximum(np.abs(sigma) + lam, 1e-6)
    return loss / (2 * e**2) + np.log(e)


def test_learnable_sigma_loss_default_is_digers_lambda():
    gen = torch.Generator().manual_seed(4)
    loss = torch.rand(6, generator=gen, dtype=torch.float64) * 5
    sigma = torch.randn(6, generator=gen, dtype=torch.float64)
    np.testing.assert_allclose(learnable_sigma_loss(loss, sigma).numpy(),
                               _diger_sdud_loss(loss.numpy(), sigma.numpy(), 1.7), rtol=1e-12)
    np.testing.assert_allclose(learnable_sigma_loss(loss, sigma, 1e-9).numpy(),
                               _diger_sdud_loss(loss.numpy(), sigma.numpy(), 1e-9), rtol=1e-12)
    # by behaviour: trained on a task loss of 4, sigma settles at DIGER's equilibrium
    # sqrt(4) - lambda (run_SDUD.sh: "sigma = sqrt(L) - lambda")
    sig = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.SGD([sig], lr=0.2)
    for _ in range(3000):
        opt.zero_grad()
        learnable_sigma_loss(torch.tensor(4.0, dtype=torch.float64), sig).backward()
        opt.step()
    assert sig.item() == pytest.approx(2.0 - 1.7, abs=1e-6)


def _diger_noise(sigma, g):
    """The noise DIGER's AutoSigmaSimple.forward adds (github.com/junchen-fu/DIGER, vq.py):
    s = clamp(|sigma|, 1e-5, 100); zeros when s < 1e-4 (a host-side test), else g * s."""
    s = sigma.abs().clamp(min=1e-5, max=100.0)
    return torch.zeros_like(g) if s.item() < 1e-4 else g * s


SIGMAS = [-250.0, -100.0, -99.5, -3.0, -2e-4, -5e-5, 0.0, 3e-6, 1e-5, 5e-5, 9.9e-5, 1.2e-4, 0.5,
          1.0, 42.0, 100.0, 180.0]


def test_sigma_noise_scale_matches_digers_clamp_values_and_gradients():
    for value in SIGMAS:
        for dtype in (torch.float32, torch.float64):
            sigma = torch.tensor(value, dtype=dtype, requires_grad=True)
            mine = sigma_noise_scale(sigma)
            sigma_o = torch.tensor(value, dtype=dtype, requires_grad=True)
            theirs = _diger_noise(sigma_o, torch.ones((), dtype=dtype))
            assert mine.dtype == dtype and mine.item() == theirs.item(), value
            mine.backward()
            if theirs.requires_grad:
                theirs.backward()
            assert sigma.grad.item() == (sigma_o.grad.item() if sigma_o.grad is not None else 0.0)
    # elementwise on a tensor of sigmas, one pass
    many = torch.tensor(SIGMAS, dtype=torch.float64)
    one = torch.ones((), dtype=torch.float64)
    assert torch.equal(sigma_noise_scale(many), torch.stack([_diger_noise(v, one) for v in many]))
    with pytest.raises(TypeError, match="sigma"):
        sigma_noise_scale(1.0)
    with pytest.raises(TypeError, match="sigma"):
        sigma_noise_scale(torch.tensor(1))


@pytest.mark.parametrize("value", [-2.5, -1e-3, 5e-5, 0.0, 0.7, 130.0])
def test_sigma_noise_scale_in_gumbel_quantize_is_digers_learnable_sigma_step(value):
    # DIGER's learnable-sigma step on one level: softmax((-d + noise) / tau) with the noise of
    # AutoSigmaSimple.forward, the indicator straight-through, quantized = y @ codebook;
    # our noise stream g in place of torch's RNG.
    gen = torch.Generator().manual_seed(6)
    n, k, d, tau = 40, 16, 5, 2.0
    x = torch.randn(n, d, generator=gen, dtype=torch.float64)
    book = torch.randn(k, d, generator=gen, dtype=torch.float64)
    weight = torch.randn(n, d, generator=gen, dtype=torch.float64)
    out = []
    for mine in (True, False):
        xr, br = x.clone().requires_grad_(), book.clone().requires_grad_()
        sigma = torch.tensor(value, dtype=torch.float64, requires_grad=True)
        if mine:
            _, quantized, soft = semid_fast.gumbel_quantize(
                xr, br, tau=tau, noise_scale=sigma_noise_scale(sigma), seed=9, backend="reference")
        else:
            dist = (xr**2).sum(1, keepdim=True) + (br**2).sum(1)[None] - 2 * xr @ br.T
            logits = -dist
            g = ref.gumbel_noise(9, 0, n, k).double()
            soft = ((logits + _diger_noise(sigma, g)) / tau).softmax(-1)
            hard = torch.nn.functional.one_hot(soft.argmax(-1), k).double()
            quantized = (hard - soft.detach() + soft) @ br
        ((quantized * weight).sum() + soft.pow(2).sum()).backward()
        out.append((quantized, soft, xr.grad, br.grad,
                    sigma.grad if sigma.grad is not None else torch.zeros((), dtype=torch.float64)))
    for a, b in zip(*out):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    noisy = abs(value) >= 1e-4 and abs(value) <= 100
    assert (out[0][4] != 0).item() == noisy  # sigma learns only where DIGER's does


def test_learnable_sigma_loss_bad_arguments():
    with pytest.raises(ValueError, match="lam"):
        learnable_sigma_loss(torch.tensor(1.0), torch.tensor(1.0), 0.0)
    with pytest.raises(TypeError, match="sigma"):
        learnable_sigma_loss(torch.tensor(1.0), 1.0)
    with pytest.raises(TypeError, match="loss"):
        learnable_sigma_loss(torch.tensor(1), torch.tensor(1.0))


def test_exported():
    assert semid_fast.schedules.ExponentialDecay is ExponentialDecay
