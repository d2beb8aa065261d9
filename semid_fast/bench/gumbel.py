"""Benchmark cases of the ``gumbel`` family: every backend and the plain-PyTorch way side by side.

Sizes. Two shapes, 65,536 x 256 (many short rows: a semantic-ID codebook level
of a big batch) and 4,096 x 32,768 (few long rows: a vocabulary), fp32, for the soft forward,
the hard forward and forward + backward of ``gumbel_softmax``; ``gumbel_topk`` (k=50) on
4,096 x 32,768; ``gumbel_quantize`` (3 levels of K=256, D=64) forward + backward on 16,384
rows. ``quick`` shrinks the row counts to seconds in total. On CPU the reference is timed
only up to 2^24 elements (see ``_affordable``).

Peers (same process, same inputs, same threads): ``torch.nn.functional.gumbel_softmax``
(exponential noise, about a dozen passes, keeps the soft output for backward), the same
noise + ``torch.topk`` for Gumbel-top-k, and a DIGER-style step written with it for the
quantize row. The softmax rows take the torch peer as their baseline, so the speed-up column
reads against what every anchor calls today; the other rows compare with the reference.

Inputs are random from a fixed seed: logits ~ N(0, 1) * 2; embeddings and codewords ~ N(0, 1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import semid_fast

from .harness import Case

FAMILY = "gumbel"
SEED = 20240611
PEER = "torch F.gumbel_softmax"


def _inputs(device, shape, seed=SEED):
    g = torch.Generator(device=device).manual_seed(seed + shape[-1])
    return torch.randn(shape, generator=g, device=device) * 2


def cases(device: str, quick: bool = False) -> list[Case]:
    ours = ("reference", "cpu") if device == "cpu" else ("reference", "cuda", "triton")
    if quick:
        shapes = [(4_096, 256), (64, 32_768)]
        topk_shape, quantize_rows = (64, 32_768), 2_048
    else:
        shapes = [(65_536, 256), (4_096, 32_768)]
        topk_shape, quantize_rows = (4_096, 32_768), 16_384
    out: list[Case] = []
    for shape in shapes:
        for mode in ("soft fwd", "hard fwd", "fwd+bwd"):
            out += _softmax_cases(device, _affordable(ours, device, shape), shape, mode)
    out += _topk_cases(device, _affordable(ours, device, topk_shape), topk_shape, 50)
    out += _quantize_cases(device, ours, quantize_rows, 3, 256, 64)
    return out


def _affordable(ours, device, shape):
    """Backends to time at `shape`: on CPU the reference (Philox written in torch ops, minutes
    per call at 4,096 x 32,768) is left out above 2^24 elements; the torch peer is the
    baseline there."""
    if device == "cpu" and shape[0] * shape[1] > 1 << 24:
        return tuple(b for b in ours if b != "reference")
    return ours


def _shape_name(shape) -> str:
    return f"{shape[0]:,}x{shape[1]:,} fp32".replace(",", "_")


def _softmax_cases(device, ours, shape, mode) -> list[Case]:
    rows, vocab = shape
    passes = 5 if mode == "fwd+bwd" else 2  # read x, write y (+ read x and dy, write dx)
    common = dict(family=FAMILY, op=f"gumbel_softmax {mode}", shape=_shape_name(shape),
                  device=device, baseline=PEER, bytes=float(rows * vocab * 4 * passes))
    hard = mode == "hard fwd"

    def setup_of(call):
        def setup():
            x = _inputs(device, shape)
            if mode != "fwd+bwd":
                return lambda: call(x)
            leaf = x.clone().requires_grad_()
            grad = torch.randn_like(x)

            def step():
                leaf.grad = None
                call(leaf).backward(grad)
            return step
        return setup

    out = [Case(impl=b, backend=b, **common, setup=setup_of(
        lambda x, b=b: semid_fast.gumbel_softmax(x, 0.5, hard=hard, seed=1, backend=b)))
        for b in ours]
    out.append(Case(impl=PEER, **common,
                    setup=setup_of(lambda x: F.gumbel_softmax(x, 0.5, hard=hard))))
    return out


def _topk_cases(device, ours, shape, k) -> list[Case]:
    rows, vocab = shape
    peer = "torch exponential_ + topk"
    common = dict(family=FAMILY, op=f"gumbel_topk k={k}", shape=_shape_name(shape),
                  device=device, bytes=float(rows * vocab * 4),
                  baseline="reference" if "reference" in ours else peer)
    backends = tuple(b for b in ours if b != "cuda")

    def setup_of(backend):
        def setup():
            x = _inputs(device, shape)
            return lambda: semid_fast.gumbel_topk(x, k, seed=1, backend=backend)
        return setup

    def torch_setup():
        x = _inputs(device, shape)
        return lambda: torch.topk(x - torch.empty_like(x).exponential_().log(), k)

    out = [Case(impl=b, backend=b, setup=setup_of(b), **common) for b in backends]
    out.append(Case(impl=peer, setup=torch_setup, **common))
    return out


def _quantize_cases(device, ours, n, levels, k, d) -> list[Case]:
    shape = f"N={n} L={levels} K={k} D={d} fwd+bwd"
    common = dict(family=FAMILY, op="gumbel_quantize", shape=shape, device=device,
                  flops=float(2 * 2 * n * k * d * levels * 2))

    def make():
        g = torch.Generator(device=device).manual_seed(SEED)
        x = torch.randn(n, d, generator=g, device=device).requires_grad_()
        book = torch.randn(levels, k, d, generator=g, device=device).requires_grad_()
        return x, book

    def setup_of(backend):
        def setup():
            x, book = make()

            def step():
                x.grad = book.grad = None
                _, quantized, soft = semid_fast.gumbel_quantize(x, book, tau=0.5, seed=1,
                                                                backend=backend)
                (quantized.square().sum() + soft.square().sum()).backward()
            return step
        return setup

    def torch_setup():
        x, book = make()

        def step():  # the plain-PyTorch DIGER step, level by level
            x.grad = book.grad = None
            residual, quantized, loss = x, 0, 0
            for level in range(levels):
                c = book[level]
                logits = 2 * residual @ c.T - residual.square().sum(-1, keepdim=True) - \
                    c.square().sum(-1)
                soft = F.gumbel_softmax(logits, 0.5)
                hard = F.one_hot(soft.argmax(-1), k).to(soft.dtype)
                q = (hard - soft.detach() + soft) @ c
                quantized, residual = quantized + q, residual - q
                loss = loss + soft.square().sum()
            (quantized.square().sum() + loss).backward()
        return step

    out = [Case(impl=b, backend=b, setup=setup_of(b), **common) for b in ours]
    out.append(Case(impl="torch F.gumbel_softmax step", setup=torch_setup, **common))
    return out
