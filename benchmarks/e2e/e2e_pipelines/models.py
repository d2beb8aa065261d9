"""The models the pipelines share: an MLP stack and TIGER's RQ-VAE (the tiger and diger runs
train it; varlen builds its encoder from the same MLP)."""

from __future__ import annotations

import torch

import semid_fast as sf


def mlp(widths: list[int]) -> torch.nn.Sequential:
    """Linear layers of the given widths with ReLU between them (none after the last)."""
    layers = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(torch.nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers)


class RQVAE(torch.nn.Module):
    """MLP encoder -> ``levels`` x ``k`` residual quantization -> MLP decoder (TIGER)."""

    def __init__(self, dim: int, hidden: tuple, latent: int, levels: int, k: int):
        super().__init__()
        widths = [dim, *hidden, latent]
        self.encoder = mlp(widths)
        self.decoder = mlp(widths[::-1])
        self.codebooks = torch.nn.Parameter(torch.zeros(levels, k, latent))

    @torch.no_grad()
    def init_codebooks(self, x: torch.Tensor, seed: int) -> None:
        """k-means on the encoded x, level by level on the residuals, as LC-Rec's RQ-VAE
        initialises its quantizers on the first batch (k-means++, up to 100 iterations,
        tolerance 1e-4): :func:`semid_fast.rq_init`."""
        levels, k, _ = self.codebooks.shape
        self.codebooks.copy_(sf.rq_init(self.encoder(x), levels, k, init="kmeans++", iters=100,
                                        tol=1e-4, seed=seed))

    def forward(self, x: torch.Tensor, backend: str, beta: float):
        """(total loss, reconstruction loss, RQ loss, codes (N, levels))."""
        codes, quantized, rq_loss = sf.rq_quantize(self.encoder(x), self.codebooks, beta=beta,
                                                   backend=backend)
        reconstruction = torch.nn.functional.mse_loss(self.decoder(quantized), x)
        return reconstruction + rq_loss, reconstruction, rq_loss, codes
