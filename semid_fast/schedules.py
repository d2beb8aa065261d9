"""Temperature and noise schedules for differentiable semantic-ID training.

DIGER (Fu et al., "Differentiable Semantic ID for Generative Recommendation", arXiv
2601.19711, 2026) assigns codes by a Gumbel-softmax over codeword distances with an
indicator straight-through estimator, and lowers the Gumbel noise during training so that
early exploration of the codebook gives way to exploitation ("uncertainty decay"). This
module holds the decays as small objects:

- :class:`ExponentialDecay` and :class:`CosineDecay`: a value that depends on the training
  step only (``value = f(step)``), for a temperature or a global noise scale;
- :class:`FrequencyNoise`: a per-sample noise scale from an exponential moving average of
  code usage (the frequency-based decay);
- :func:`learnable_sigma_loss` and :func:`sigma_noise_scale`: the uncertainty-weighted loss
  of the learnable-sigma decay, and the clamp that turns the learned sigma into a noise scale.

The defaults are those of DIGER's released code (github.com/junchen-fu/DIGER, ``vq.py`` and
its ``run_FrqUD.sh`` / ``run_SDUD.sh``): usage ratio 1.5 and momentum 0.99, lambda 1.7.

A schedule called with a Python ``int`` step returns a Python ``float``; called with a tensor
step it returns a tensor on the step's device (so it can live inside a compiled step).
:meth:`FrequencyNoise.noise_scale` returns a (rows,) tensor, the form that
``gumbel_softmax(..., noise_scale=...)`` takes.
"""

from __future__ import annotations

import math

import torch

from . import _checks
from .reference.gumbel import quantize_logits

__all__ = ["ExponentialDecay", "CosineDecay", "FrequencyNoise", "learnable_sigma_loss",
           "sigma_noise_scale"]


def _real(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return float(value)


def _step(step):
    """An int >= 0 or an integer/float tensor of steps (values are not scanned: no sync)."""
    if isinstance(step, torch.Tensor):
        return step
    if isinstance(step, bool) or not isinstance(step, int):
        raise TypeError(f"step must be an int or a tensor, got {type(step).__name__}")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    return step


class ExponentialDecay:
    """``value(step) = max(minimum, start * exp(-rate * step))``.

    The temperature annealing of Jang et al. (Gumbel-softmax, ICLR 2017), used by DIGER for
    its step-based decay of the temperature and of the Gumbel noise.

    Args:
        start: value at step 0 (> 0).
        rate: decay per step (>= 0; 0 keeps ``start``).
        minimum: floor (0 <= minimum <= start).
    """

    def __init__(self, start: float, rate: float, minimum: float = 0.0):
        self.start = _real(start, "start")
        self.rate = _real(rate, "rate")
        self.minimum = _real(minimum, "minimum")
        if self.start <= 0:
            raise ValueError(f"start must be > 0, got {start}")
        if self.rate < 0:
            raise ValueError(f"rate must be >= 0, got {rate}")
        if not 0 <= self.minimum <= self.start:
            raise ValueError(f"minimum must lie in [0, start={start}], got {minimum}")

    def __call__(self, step):
        """The value at ``step`` (int -> float; tensor -> float32/64 tensor on its device)."""
        step = _step(step)
        if isinstance(step, torch.Tensor):
            decayed = self.start * torch.exp(-self.rate * step.to(torch.get_default_dtype()))
            return decayed.clamp_min(self.minimum)
        return max(self.minimum, self.start * math.exp(-self.rate * step))

    def __repr__(self) -> str:
        return f"ExponentialDecay(start={self.start}, rate={self.rate}, minimum={self.minimum})"


class CosineDecay:
    """From ``start`` to ``end`` over ``steps`` steps on a half cosine, then ``end``.

    ``value(step) = end + (start - end) * (1 + cos(pi * min(step, steps) / steps)) / 2``
    (the cosine annealing of Loshchilov and Hutter, SGDR, ICLR 2017, without restarts).
    ``end`` may exceed ``start`` (a warm-up); the value stays between the two.

    Args:
        start: value at step 0.
        end: value from step ``steps`` on.
        steps: length of the decay (>= 1).
    """

    def __init__(self, start: float, end: float, steps: int):
        self.start = _real(start, "start")
        self.end = _real(end, "end")
        self.steps = _checks.positive_int(steps, "steps")

    def __call__(self, step):
        """The value at ``step`` (int -> float; tensor -> tensor on its device)."""
        step = _step(step)
        if isinstance(step, torch.Tensor):
            progress = step.to(torch.get_default_dtype()).clamp(0, self.steps) / self.steps
            return self.end + (self.start - self.end) * (1 + torch.cos(math.pi * progress)) / 2
        progress = min(step, self.steps) / self.steps
        return self.end + (self.start - self.end) * (1 + math.cos(math.pi * progress)) / 2

    def __repr__(self) -> str:
        return f"CosineDecay(start={self.start}, end={self.end}, steps={self.steps})"


class FrequencyNoise(torch.nn.Module):
    """Frequency-based noise decay: Gumbel noise only where a code is over-used.

    DIGER's frequency-based uncertainty decay keeps exploring the codes that attract too many
    items and lets the others settle. The rule, as DIGER's ``vq.py`` implements it
    (``use_adaptive_selection``):

    - ``usage`` (K,) is an exponential moving average of each code's share of the samples:
      after a batch whose code histogram is ``h`` (N samples),
      ``usage <- momentum * usage + (1 - momentum) * h / N``; it starts uniform (1 / K)
      (``VectorQuantizer``'s ``code_usage_ema`` and its update in ``VectorQuantizer.forward``);
    - a sample whose code ``c`` has ``usage[c] > threshold / K`` is over-used ("hot") and gets
      noise scale ``scale``; every other sample gets 0, i.e. its argmin code and the noiseless
      softmax (``VectorQuantizer.get_sequence_level_decision``, ``hot_threshold_ratio``).

    Two ways to drive it:

    - calling the module, ``noise(x, codebook)``, is DIGER's order: the codes are the current
      argmin codes of the first level (not the sampled ones), the decision reads the usage
      before this batch, then the usage folds in those argmin codes (in training mode only).
      DIGER decides once per sample on level 0 and applies the same decision to every level
      (``ResidualVectorQuantizer.forward``), which one per-row ``noise_scale`` for a
      ``gumbel_quantize`` stack gives;
    - :meth:`noise_scale` and :meth:`update` take any codes, e.g. the previous step's sampled
      codes, when the caller chooses which codes decide and which are counted.

    ``usage`` is a buffer, so ``state_dict()`` checkpoints it; the module follows
    ``.to(device)``.

    Args:
        num_codes: codebook size K (>= 1).
        momentum: EMA decay in [0, 1) (0 = usage of the last batch only); DIGER's
            ``usage_momentum`` is 0.99.
        threshold: multiple of the uniform share 1/K above which a code is over-used (> 0);
            DIGER's ``hot_threshold_ratio`` is 1.5.
        scale: noise scale of an over-used sample (>= 0), e.g. multiplied by a decay (DIGER's
            frequency run uses plain Gumbel noise, 1.0).
        process_group: data-parallel training: a ``torch.distributed`` group (e.g.
            ``torch.distributed.group.WORLD``) whose ranks fold their batches' code
            histograms together, one int64 all-reduce per update, so every rank keeps the
            usage that one process with the whole batch would (bit for bit); the global row
            count is read on the host (a sync on GPU). None (default): this process only.
    """

    usage: torch.Tensor

    def __init__(self, num_codes: int, *, momentum: float = 0.99, threshold: float = 1.5,
                 scale: float = 1.0, device=None, process_group=None):
        super().__init__()
        self.process_group = process_group
        self.num_codes = _checks.positive_int(num_codes, "num_codes")
        self.momentum = _real(momentum, "momentum")
        self.threshold = _real(threshold, "threshold")
        self.scale = _real(scale, "scale")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must lie in [0, 1), got {momentum}")
        if self.threshold <= 0:
            raise ValueError(f"threshold must be > 0, got {threshold}")
        if self.scale < 0:
            raise ValueError(f"scale must be >= 0, got {scale}")
        self.register_buffer(
            "usage", torch.full((num_codes,), 1.0 / num_codes, dtype=torch.float32, device=device))

    def forward(self, x: torch.Tensor, codebook: torch.Tensor, *, distance: str = "l2",
                scale: float | torch.Tensor | None = None,
                usage_codes: torch.Tensor | None = None) -> torch.Tensor:
        """DIGER's frequency rule for one training batch: per-sample noise scales (N,) float32.

        Args:
            x: (N, D) float embeddings (the input of the first level).
            codebook: (K, D) first-level codewords, or the (L, K, D) stack (level 0 is used).
            distance: "l2" or "cosine", as in :func:`semid_fast.gumbel_quantize`; the argmin
                codes are the argmax of the same logits.
            scale: as in :meth:`noise_scale`.
            usage_codes: (N,) codes to fold into the usage instead of the argmin codes. DIGER
                folds level 0's deterministic codes, which are the Sinkhorn codes when its
                ``sk_epsilon`` > 0 (its released configs): pass those here.

        Returns:
            The noise scale of each row, from the usage before this batch. The usage is
            updated afterwards when the module is in training mode (``.train()``, the
            default), never in ``.eval()``.
        """
        _checks.tensor(x, "x", 2, _checks.FLOAT_DTYPES + (torch.float64,), "(N, D)")
        if not isinstance(codebook, torch.Tensor) or codebook.dim() not in (2, 3):
            got = (tuple(codebook.shape) if isinstance(codebook, torch.Tensor)
                   else type(codebook).__name__)
            raise ValueError(f"codebook must be a (K, D) or (L, K, D) tensor, got {got}")
        book = codebook[0] if codebook.dim() == 3 else codebook
        if book.shape != (self.num_codes, x.shape[1]):
            raise ValueError(f"codebook {tuple(codebook.shape)} must hold K={self.num_codes} "
                             f"codewords of x's width D={x.shape[1]}")
        if not book.is_floating_point():
            raise TypeError(f"codebook must be a floating-point tensor, got {book.dtype}")
        if distance not in ("l2", "cosine"):
            raise ValueError(f"distance must be 'l2' or 'cosine', got {distance!r}")
        if x.device != self.usage.device or book.device != self.usage.device:
            raise ValueError(f"x on {x.device} and codebook on {book.device} must be on the "
                             f"usage buffer's device {self.usage.device} (move the "
                             f"FrequencyNoise with .to())")
        if usage_codes is not None:
            usage_codes = self._check_codes(usage_codes)
        with torch.no_grad():
            dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
            codes = quantize_logits(x.detach().to(dtype), book.detach().to(dtype),
                                    distance).argmax(-1)
        scales = self._scales(codes, scale)
        if self.training:
            self._fold(codes if usage_codes is None else usage_codes)
        return scales

    def _check_codes(self, codes) -> torch.Tensor:
        _checks.tensor(codes, "codes", 1, _checks.INT_DTYPES, "(N,)")
        if codes.device != self.usage.device:
            raise ValueError(f"codes are on {codes.device} but the usage buffer is on "
                             f"{self.usage.device} (move the FrequencyNoise with .to())")
        _checks.codes_in_range(codes, self.num_codes, "codes")
        return codes

    def over_used(self, codes: torch.Tensor) -> torch.Tensor:
        """(N,) bool: True where ``usage[codes] > threshold / K``."""
        return self._hot(self._check_codes(codes))

    def _hot(self, codes: torch.Tensor) -> torch.Tensor:
        return self.usage[codes.long()] > self.threshold / self.num_codes

    def noise_scale(self, codes: torch.Tensor, scale: float | torch.Tensor | None = None):
        """Per-sample noise scales (N,) float32 on the codes' device.

        Args:
            codes: (N,) integer codes in [0, K), e.g. the previous assignment of each sample.
            scale: noise scale of the over-used samples (default ``self.scale``): a float or
                a 0-dim tensor (e.g. a step decay evaluated on the device).
        """
        return self._scales(self._check_codes(codes), scale)

    def _scales(self, codes: torch.Tensor, scale) -> torch.Tensor:
        value = self.scale if scale is None else scale
        if not isinstance(value, torch.Tensor):
            value = _real(value, "scale")
            if value < 0:
                raise ValueError(f"scale must be >= 0, got {value}")
        return self._hot(codes).to(torch.float32) * value

    @torch.no_grad()
    def update(self, codes: torch.Tensor) -> None:
        """Folds one batch of codes (N,) into the usage EMA (no host sync: index_add_)."""
        self._fold(self._check_codes(codes))

    @torch.no_grad()
    def _fold(self, codes: torch.Tensor) -> None:
        if self.process_group is not None:
            self._fold_synced(codes)
            return
        if codes.numel() == 0:
            return
        counts = torch.zeros_like(self.usage).index_add_(
            0, codes.long(), torch.ones(codes.shape, dtype=self.usage.dtype, device=codes.device))
        self.usage.mul_(self.momentum).add_(counts, alpha=(1 - self.momentum) / codes.numel())

    def _fold_synced(self, codes: torch.Tensor) -> None:
        from .distributed import _all_reduce  # torch.distributed only when asked for

        # Integer counts and row count in one all-reduce: exact, hence the same float32
        # counts and the same alpha as one process folding the whole batch.
        packed = torch.bincount(codes.long(), minlength=self.num_codes + 1)
        packed[-1] = codes.numel()
        packed = _all_reduce("FrequencyNoise.update", self.process_group, packed)
        total = int(packed[-1])
        if total == 0:
            return
        self.usage.mul_(self.momentum).add_(packed[:-1].to(self.usage.dtype),
                                            alpha=(1 - self.momentum) / total)

    def extra_repr(self) -> str:
        return (f"num_codes={self.num_codes}, momentum={self.momentum}, "
                f"threshold={self.threshold}, scale={self.scale}")


def learnable_sigma_loss(loss: torch.Tensor, sigma: torch.Tensor, lam: float = 1.7):
    """Uncertainty-weighted loss of DIGER's learnable-sigma decay.

    ``loss / (2 * s^2) + log(s)`` with ``s = max(|sigma| + lam, 1e-6)`` (the homoscedastic
    uncertainty weighting of Kendall, Gal and Cipolla, CVPR 2018): a learnable ``sigma``
    scales the Gumbel noise, the first term rewards a larger sigma less as the task loss
    drops and the log term stops sigma from growing without bound; the minimum over sigma is
    at ``|sigma| = sqrt(loss) - lam``, so the noise decays as the loss falls towards
    ``lam^2``. This is DIGER's ``AutoSigmaSimple.compute_uncertainty_loss`` (its SDUD run,
    ``use_simple_uncertainty_loss``) with its fixed lambda, ``sigma_lambda`` = 1.7 in the
    released ``run_SDUD.sh``; DIGER passes the mean of its levels' sigmas and turns each
    sigma into a noise scale with :func:`sigma_noise_scale`.

    Args:
        loss: task loss, a float tensor (any shape; usually 0-dim).
        sigma: learnable noise scale, a float tensor broadcastable with ``loss``.
        lam: positive offset (default DIGER's 1.7).

    Returns:
        Tensor of the broadcast shape of ``loss`` and ``sigma``, differentiable in both.
    """
    for name, value in (("loss", loss), ("sigma", sigma)):
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{name} must be a floating-point tensor, got {type(value).__name__}")
        if not value.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {value.dtype}")
    lam = _real(lam, "lam")
    if lam <= 0:
        raise ValueError(f"lam must be > 0, got {lam}")
    spread = (sigma.abs() + lam).clamp_min(1e-6)
    return loss / (2 * spread ** 2) + torch.log(spread)


def sigma_noise_scale(sigma: torch.Tensor) -> torch.Tensor:
    """The Gumbel noise scale DIGER draws from a learnable sigma: ``|sigma|`` clamped to
    [1e-5, 100], and 0 (noise off) where that is below 1e-4.

    DIGER's ``AutoSigmaSimple.forward`` (``s = sigma.abs().clamp(1e-5, 100)``, then zero noise
    when ``s < 1e-4``); pass the result as ``noise_scale=`` of
    :func:`semid_fast.gumbel_softmax` / :func:`semid_fast.gumbel_quantize`. Differentiable
    where DIGER's is: the gradient is ``sign(sigma)`` for 1e-4 <= |sigma| <= 100 and 0 where
    the clamp holds the value or the noise is off. Elementwise, without a host sync (DIGER's
    sigma is one scalar per level and it tests it with ``.item()``). Its ``2 ** sigma``
    variant (``AutoSigmaGumbel``) is ``sigma_noise_scale(2 ** sigma)``.

    Args:
        sigma: floating-point tensor of any shape (e.g. a 0-dim ``nn.Parameter``).

    Returns:
        A tensor of sigma's shape and dtype, >= 0.
    """
    if not isinstance(sigma, torch.Tensor) or not sigma.is_floating_point():
        got = sigma.dtype if isinstance(sigma, torch.Tensor) else type(sigma).__name__
        raise TypeError(f"sigma must be a floating-point tensor, got {got}")
    scale = sigma.abs().clamp(min=1e-5, max=100.0)
    return torch.where(scale < 1e-4, torch.zeros_like(scale), scale)
