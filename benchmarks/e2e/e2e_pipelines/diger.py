"""DIGER end to end: the RQ-VAE of TIGER trained with Gumbel quantization and noise decays.

DIGER (Fu et al., "Differentiable Semantic ID for Generative Recommendation", 2026) replaces
the straight-through nearest-codeword step of an RQ-VAE by a Gumbel-softmax over codeword
distances with the indicator straight-through estimator (the chosen codeword forward, the
soft assignment's gradient backward), and decays the Gumbel noise during training so that
early exploration of the codebook turns into exploitation. Its point is codebook collapse:
a plain straight-through RQ-VAE ends up using few codes per level.

This pipeline trains the RQ-VAE of the tiger pipeline (:mod:`.models`) on
``yelp/title_cat_minilm384.npy`` from the same initial weights and the same batches:

* ``ste``: :func:`semid_fast.rq_quantize` (plain straight-through), the collapse baseline;
* one run per noise schedule of :mod:`semid_fast.schedules`, each level quantized by
  :func:`semid_fast.gumbel_quantize` (``hard=True``): exponentially decayed temperature,
  cosine-decayed noise scale, and DIGER's two released runs at its constants (tau 2.0,
  Sinkhorn assignment with epsilon 0.003 and 50 iterations at every level):
  frequency-based noise (:class:`~semid_fast.schedules.FrequencyNoise`, ratio 1.5, momentum
  0.99: noise only for samples whose level-0 argmin code is over-used) and a learnable noise
  scale sigma per level (:func:`~semid_fast.schedules.sigma_noise_scale`,
  :func:`~semid_fast.schedules.learnable_sigma_loss` with lambda 1.7);

and reports the code usage and perplexity of every level over training. The step time of the
Gumbel model is compared, on the exponential-temperature run, with the same model using the
pure-PyTorch reference of the Gumbel ops (``backend="reference"``, the same noise) and with
``torch.nn.functional.gumbel_softmax`` written as users do today (its own noise), side by
side on the same batches. Agreement: at step 0, semid_fast's gumbel_quantize (native backend)
and the reference backend give the same codes and the same loss.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import statistics
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

import semid_fast as sf
from semid_fast import schedules
from semid_fast.reference import quantize as ref_quantize

from .common import DataSource, Report, code_usage, fmt_time, median_time, standardised_items
from .models import RQVAE

SYSTEM = "diger"
TITLE = "DIGER: Gumbel-quantized RQ-VAE, noise schedules vs straight-through (code usage)"

SCHEDULES = ("exp_tau", "cosine_noise", "frequency_noise", "learnable_sigma")
# The exp_tau model three ways: semid_fast's gumbel_quantize (the exp_tau run itself), its
# pure-PyTorch reference backend, and F.gumbel_softmax.
TIMED = {"exp_tau": "semid_fast gumbel_quantize", "reference": "reference backend",
         "torch_gumbel_softmax": "F.gumbel_softmax"}


@dataclass
class Settings:
    n_items: int = 20033          # the yelp catalog
    dim: int = 384
    hidden: tuple = (512, 256, 128)
    latent: int = 32
    levels: int = 3
    k: int = 256
    beta: float = 0.25
    steps: int = 150
    batch: int = 256
    lr: float = 1e-3
    tau_start: float = 1.0        # exponential temperature decay: tau_start -> tau_end
    tau_end: float = 0.1
    diger_tau: float = 2.0        # DIGER's fixed temperature (frequency and sigma runs)
    sk_epsilon: float = 0.003     # DIGER's Sinkhorn at every level (frequency and sigma runs)
    sk_iters: int = 50
    sigma_start: float = 1.0      # learnable sigma's initial value (DIGER's initial_std)
    eval_every: int = 25          # steps between code-usage measurements over the catalog
    reps: int = 20                # timed calls of each quantizer in the micro-benchmark
    seed: int = 0

    @classmethod
    def sized(cls, quick: bool, seed: int = 0) -> "Settings":
        if quick:
            return cls(n_items=2000, hidden=(128,), steps=12, batch=64, k=32, eval_every=4,
                       reps=3, seed=seed)
        return cls(seed=seed)


def gumbel_levels(z: torch.Tensor, codebooks: torch.Tensor, *, tau, noise_scales,
                  logit_scale: float, seed: int, offset: int, backend: str,
                  sk_epsilon: float = 0.0, sk_iters: int = 50):
    """Residual Gumbel quantization of z (N, D) by codebooks (L, K, D), one
    :func:`semid_fast.gumbel_quantize` call per level (each level may have its own noise
    scale, and with ``sk_epsilon`` > 0 DIGER's Sinkhorn assignment); level l draws its noise
    at ``offset + l``. Returns (codes (N, L), quantized)."""
    residual, quantized, codes = z, torch.zeros_like(z), []
    for level in range(codebooks.shape[0]):
        code, level_q, _ = sf.gumbel_quantize(residual, codebooks[level], tau=tau, hard=True,
                                              noise_scale=noise_scales[level],
                                              logit_scale=logit_scale, seed=seed,
                                              offset=offset + level, sk_epsilon=sk_epsilon,
                                              sk_iters=sk_iters, backend=backend)
        quantized = quantized + level_q
        residual = residual - level_q
        codes.append(code)
    return torch.stack(codes, 1), quantized


def torch_gumbel_levels(z: torch.Tensor, codebooks: torch.Tensor, tau: float,
                        logit_scale: float):
    """The same step as users write it today: squared distances, then
    ``F.gumbel_softmax(hard=True)`` and a one-hot matmul, per level (torch's own noise)."""
    residual, quantized, codes = z, torch.zeros_like(z), []
    for book in codebooks:
        logits = -logit_scale * (residual.pow(2).sum(1, keepdim=True) - 2 * residual @ book.T
                                 + book.pow(2).sum(1))
        y = F.gumbel_softmax(logits, tau=tau, hard=True)
        level_q = y @ book
        quantized = quantized + level_q
        residual = residual - level_q
        codes.append(y.argmax(1))
    return torch.stack(codes, 1), quantized


def vq_loss(model: RQVAE, x: torch.Tensor, z: torch.Tensor, quantized: torch.Tensor,
            beta: float) -> torch.Tensor:
    """Reconstruction + codebook + beta * commitment, the RQ-VAE loss around a quantizer."""
    return (F.mse_loss(model.decoder(quantized), x) + F.mse_loss(quantized, z.detach())
            + beta * F.mse_loss(z, quantized.detach()))


class Run:
    """One model and its optimiser, trained with one quantizer/schedule."""

    def __init__(self, name: str, model: RQVAE, s: Settings, logit_scale: float, device: str):
        self.name, self.model, self.s, self.logit_scale = name, model, s, logit_scale
        self.sigma = None
        if name == "learnable_sigma":  # DIGER learns one sigma per level
            self.sigma = torch.nn.Parameter(torch.full((s.levels,), s.sigma_start,
                                                       device=device))
        params = list(model.parameters()) + ([self.sigma] if self.sigma is not None else [])
        self.optimizer = torch.optim.Adam(params, lr=s.lr)
        self.frequency = None
        if name == "frequency_noise":  # DIGER's constants: ratio 1.5, momentum 0.99
            self.frequency = schedules.FrequencyNoise(s.k, device=device)
        self.tau = schedules.ExponentialDecay(
            s.tau_start, math.log(s.tau_start / s.tau_end) / max(1, s.steps - 1), s.tau_end)
        self.noise = schedules.CosineDecay(1.0, 0.0, max(1, s.steps - 1))
        self.losses, self.times, self.usage = [], [], []  # losses: the task loss

    def loss(self, step: int, rows: torch.Tensor, x: torch.Tensor):
        """(objective, task loss, codes) of one training step on items ``rows``; the
        objective differs from the task loss only for the learnable sigma (its weighting)."""
        s, model = self.s, self.model
        batch = x[rows]
        z = model.encoder(batch)
        if self.name == "ste":
            codes, quantized, rq_loss = sf.rq_quantize(z, model.codebooks, beta=s.beta)
            loss = F.mse_loss(model.decoder(quantized), batch) + rq_loss
            return loss, loss, codes
        if self.name == "torch_gumbel_softmax":
            codes, quantized = torch_gumbel_levels(z, model.codebooks, self.tau(step),
                                                   self.logit_scale)
            loss = vq_loss(model, batch, z, quantized, s.beta)
            return loss, loss, codes
        tau, scales, sk_epsilon = 1.0, [1.0] * s.levels, 0.0
        backend = "reference" if self.name == "reference" else "auto"
        if self.name in ("exp_tau", "reference"):
            tau = self.tau(step)
        elif self.name == "cosine_noise":
            scales = [self.noise(step)] * s.levels
        elif self.name == "frequency_noise":
            # DIGER's rule: decided once per sample from its level-0 argmin code, the usage
            # counting level 0's deterministic (Sinkhorn) codes; one scale for every level.
            tau, sk_epsilon = s.diger_tau, s.sk_epsilon
            level0 = sf.rq_encode(z.detach(), model.codebooks.detach()[:1],
                                  sk_epsilon=s.sk_epsilon, sk_iters=s.sk_iters)[:, 0]
            scales = [self.frequency(z.detach(), model.codebooks, usage_codes=level0)] * s.levels
        elif self.name == "learnable_sigma":
            tau, sk_epsilon = s.diger_tau, s.sk_epsilon
            scales = [schedules.sigma_noise_scale(sigma).reshape(1) for sigma in self.sigma]
        codes, quantized = gumbel_levels(z, model.codebooks, tau=tau, noise_scales=scales,
                                         logit_scale=self.logit_scale, seed=s.seed,
                                         offset=step * s.levels, backend=backend,
                                         sk_epsilon=sk_epsilon, sk_iters=s.sk_iters)
        loss = vq_loss(model, batch, z, quantized, s.beta)
        if self.sigma is not None:  # DIGER weights the loss by its levels' mean sigma
            return schedules.learnable_sigma_loss(loss, self.sigma.mean()), loss, codes
        return loss, loss, codes

    def step(self, step: int, rows, x, device: str) -> None:
        started = time.perf_counter()
        objective, loss, codes = self.loss(step, rows, x)
        self.optimizer.zero_grad(set_to_none=True)
        objective.backward()
        self.optimizer.step()
        if device == "cuda":
            torch.cuda.synchronize()
        self.times.append(time.perf_counter() - started)
        self.losses.append(float(loss.detach()))

    @torch.no_grad()
    def catalog_codes(self, x: torch.Tensor) -> torch.Tensor:
        """Noise-free codes of every item: the nearest codeword per level."""
        return sf.rq_encode(self.model.encoder(x), self.model.codebooks.detach())


def run(settings: Settings, data: DataSource, device: str = "cpu", echo: bool = True) -> Report:
    s = settings
    report = Report(SYSTEM, TITLE, data, dataclasses.asdict(s), echo=echo)
    x = standardised_items(report, data, s, device)
    resolved = sf._backends.choose("auto", x.device, "gumbel", "gumbel_quantize")
    torch.manual_seed(s.seed)
    model = RQVAE(s.dim, s.hidden, s.latent, s.levels, s.k).to(device)
    g = torch.Generator().manual_seed(s.seed)
    model.init_codebooks(x[torch.randperm(s.n_items, generator=g)[:max(s.k, 4096)]], s.seed)
    # Logits -logit_scale * ||r - c||^2 with the distances' spread at initialisation as the
    # unit: raw squared distances of the small latent differ by ~1e-2, so with logit_scale 1
    # every soft assignment would be near uniform (its gradient pulls all codewords together).
    with torch.no_grad():
        spread = ref_quantize.squared_distances(model.encoder(x[:4096]), model.codebooks[0])
        logit_scale = float(1.0 / spread.std(1).mean().clamp_min(1e-12))
    report.say(f"logit scale: {logit_scale:.3g} (1 / spread of the level-0 squared distances "
               "at initialisation)")
    names = ("ste", *SCHEDULES, "reference", "torch_gumbel_softmax")
    runs = {name: Run(name, copy.deepcopy(model), s, logit_scale, device) for name in names}
    eval_steps = []

    # Step 0 agreement: the native gumbel_quantize against the reference backend, same seed.
    rows0 = torch.randint(0, s.n_items, (s.batch,), generator=torch.Generator().manual_seed(
        s.seed + 1)).to(device)
    with torch.no_grad():
        _, loss_ours, codes_ours = runs["exp_tau"].loss(0, rows0, x)
        _, loss_ref, codes_ref = runs["reference"].loss(0, rows0, x)
    report.check(f"step-0 codes of gumbel_quantize ({resolved}) equal the reference backend's",
                 torch.equal(codes_ours.cpu(), codes_ref.cpu()),
                 f"{s.batch} rows x {s.levels} levels")
    l0, l0_ref = float(loss_ours), float(loss_ref)
    report.check("step-0 loss equal to the reference backend's (relative difference <= 1e-5)",
                 abs(l0 - l0_ref) <= 1e-5 * abs(l0_ref), f"{l0:.7f} vs {l0_ref:.7f}")

    for step in range(s.steps):
        rows = torch.randint(0, s.n_items, (s.batch,), generator=g).to(device)
        for r in runs.values():
            r.step(step, rows, x, device)
        if step % s.eval_every == 0 or step == s.steps - 1:
            eval_steps.append(step)
            for r in runs.values():
                used, perplexity = code_usage(r.catalog_codes(x).cpu(), s.k)
                r.usage.append({"used": used, "perplexity": perplexity})
            report.say(f"step {step:4d}: perplexity per level " + "; ".join(
                f"{name} {'/'.join(f'{p:.0f}' for p in runs[name].usage[-1]['perplexity'])}"
                for name in ("ste", *SCHEDULES)))
    finite = all(math.isfinite(v) for r in runs.values() for v in r.losses)
    report.check("every run's loss stays finite", finite)

    # The quantizer alone, forward + backward on one batch of encoder outputs, the three
    # implementations alternating call by call.
    z = runs["exp_tau"].model.encoder(x[:s.batch]).detach()
    books = runs["exp_tau"].model.codebooks.detach().clone().requires_grad_()
    ones = [1.0] * s.levels

    def quantizer(name):
        zz = z.clone().requires_grad_()
        if name == "torch_gumbel_softmax":
            _, q = torch_gumbel_levels(zz, books, 0.5, logit_scale)
        else:
            _, q = gumbel_levels(zz, books, tau=0.5, noise_scales=ones, logit_scale=logit_scale,
                                 seed=s.seed, offset=0,
                                 backend="reference" if name == "reference" else "auto")
        q.sum().backward()

    samples = {name: [] for name in TIMED}
    for _ in range(s.reps):
        for name in TIMED:
            samples[name].append(median_time(lambda: quantizer(name), 1, device))
    quantizer_s = {name: statistics.median(t) for name, t in samples.items()}
    step_s = {name: statistics.median(runs[name].times) for name in names}

    final = {}
    for name, r in runs.items():
        codes = r.catalog_codes(x).cpu()
        distinct = torch.unique(codes, dim=0).shape[0]
        final[name] = {**r.usage[-1], "colliding_items": s.n_items - distinct,
                       "tail_loss": statistics.mean(r.losses[-max(1, s.steps // 10):])}
    report.metrics.update(
        eval_steps=eval_steps, loss_curves={n: r.losses for n, r in runs.items()},
        usage_over_training={n: r.usage for n, r in runs.items()}, final=final,
        median_step_s=step_s, quantizer_fwd_bwd_s=quantizer_s, step0_loss=[l0, l0_ref],
        sigma_final=runs["learnable_sigma"].sigma.detach().cpu().tolist(),
        logit_scale=logit_scale)

    report.say(f"\n{s.steps} steps, batch {s.batch}, latent {s.latent}, {s.levels} levels x "
               f"{s.k} codes; catalog codes after training (used / perplexity per level):")
    # colliding items: items minus distinct full IDs (what a collision suffix must fix)
    report.table(["run", *(f"level {lv}" for lv in range(s.levels)), "colliding items",
                  "loss (last 10%)", "median step"],
                 [[name, *(f"{final[name]['used'][lv]} / {final[name]['perplexity'][lv]:.1f}"
                           for lv in range(s.levels)),
                   final[name]["colliding_items"], f"{final[name]['tail_loss']:.4f}",
                   fmt_time(step_s[name])]
                  for name in ("ste", *SCHEDULES)])
    report.say(f"learnable sigma per level: {s.sigma_start} -> "
               + ", ".join(f"{v:.3f}" for v in report.metrics["sigma_final"]))
    report.say(f"\nstep time of the exp_tau model (gumbel_quantize backend: {resolved}):")
    base_q, base_s = quantizer_s["reference"], step_s["reference"]
    report.table(["implementation", "quantizer fwd+bwd", "vs reference", "training step",
                  "vs reference"],
                 [[label, fmt_time(quantizer_s[name]), f"{base_q / quantizer_s[name]:.2f}x",
                   fmt_time(step_s[name]), f"{base_s / step_s[name]:.2f}x"]
                  for name, label in TIMED.items()])

    def chart(fig):
        left, right = fig.subplots(1, 2)
        for name in ("ste", *SCHEDULES):
            mean_pp = [statistics.mean(u["perplexity"]) for u in runs[name].usage]
            left.plot(eval_steps, mean_pp, marker=".", label=name,
                      color="black" if name == "ste" else None)
        left.set_xlabel("step")
        left.set_ylabel(f"mean code perplexity per level (max {s.k})")
        left.legend(fontsize=8)
        shown = ("ste", *SCHEDULES)
        width = 0.8 / len(shown)
        for i, name in enumerate(shown):
            right.bar([lv + (i - len(shown) / 2 + 0.5) * width for lv in range(s.levels)],
                      final[name]["perplexity"], width, label=name)
        right.set_xticks(list(range(s.levels)), [f"level {lv}" for lv in range(s.levels)])
        right.set_ylabel("final code perplexity")
        right.legend(fontsize=8)

    report.chart = chart
    return report
