"""Task encoders: a support set -> the condition vector c."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ltdi_ray.generator.heads import prototypes


class SetEncoder(nn.Module):
    """Regression supports: an MLP over (x, y) pairs, mean-pooled, then an MLP.

    ``x (B, K, in_dim)``, ``y (B, K, out_dim)`` -> ``(B, cond_dim)``; invariant to the order of
    the K pairs. ``fourier = F > 0`` adds random Fourier features of x (Tancik et al. 2020):
    ``sin(x B), cos(x B)`` with ``B (in_dim, F) ~ N(0, fourier_scale^2)`` fixed at construction (a
    buffer, so it travels with the checkpoint), and their products with every y coordinate, so
    that the pooled features hold the moments ``Phi^T y / K`` of a least-squares fit of y on them; a
    plain MLP on raw x has to learn both the oscillation and the product.

    ``ridge = lambda > 0`` (needs F > 0) also solves that least-squares fit in closed form, a ridge
    regression of y on the 2F waves (kernel ridge regression with the random-feature kernel, in its
    dual: a K x K solve), and adds its coefficients ``(2F * out_dim,)`` to the pooled features. Mean
    pooling alone gives the moments ``Phi^T y / K`` but not the inverse of the support's Gram matrix
    that turns them into the fit, so without it more support points sharpen the condition little.
    """

    def __init__(self, in_dim: int, out_dim: int, cond_dim: int, width: int = 128, fourier: int = 0,
                 fourier_scale: float = 1.0, ridge: float = 0.0):
        super().__init__()
        if ridge > 0 and fourier == 0:
            raise ValueError("SetEncoder: ridge > 0 needs fourier > 0 (the fit is over the Fourier features)")
        gen = torch.Generator().manual_seed(0)
        self.register_buffer("freqs", torch.randn(in_dim, fourier, generator=gen) * fourier_scale)
        self.ridge = ridge
        feats = in_dim + out_dim + 2 * fourier * (1 + out_dim)
        self.point = nn.Sequential(nn.Linear(feats, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(),
                                   nn.Linear(width, width))
        self.fit = nn.Linear(2 * fourier * out_dim, width) if ridge > 0 else None
        self.pool = nn.Sequential(nn.SiLU(), nn.Linear(width, width), nn.SiLU(), nn.Linear(width, cond_dim))

    def waves(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, K, in_dim) -> (B, K, 2F)``: ``sin(x B), cos(x B)``."""
        phase = x @ self.freqs
        return torch.cat([phase.sin(), phase.cos()], dim=-1)

    def features(self, x: torch.Tensor, y: torch.Tensor, wave: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``(B, K, in_dim), (B, K, out_dim) -> (B, K, feats)`` (F = 0: just ``[x, y]``); ``wave``:
        ``self.waves(x)`` when the caller has it."""
        wave = self.waves(x) if wave is None else wave  # (B, K, 2F)
        cross = (y.unsqueeze(-1) * wave.unsqueeze(-2)).flatten(-2)  # (B, K, out_dim * 2F)
        return torch.cat([x, y, wave, cross], dim=-1)

    def ridge_fit(self, x: torch.Tensor, y: torch.Tensor, wave: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``(B, K, in_dim), (B, K, out_dim) -> (B, 2F * out_dim)``: the coefficients
        ``w = Phi^T (Phi Phi^T + lambda I)^-1 y`` of y on the waves ``Phi (B, K, 2F)``, scaled by
        ``1 / sqrt(F)`` so that the kernel ``Phi Phi^T`` has a unit diagonal whatever F is (each
        sin / cos pair adds 1); ``wave`` as in :meth:`features`."""
        wave = (self.waves(x) if wave is None else wave) / self.freqs.shape[1] ** 0.5
        gram = wave @ wave.transpose(1, 2) + self.ridge * torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
        return (wave.transpose(1, 2) @ torch.linalg.solve(gram, y)).flatten(1)

    @property
    def has_fit(self) -> bool:
        """Whether :meth:`fit_predict` applies (a ridge fit is part of the condition)."""
        return self.fit is not None

    def fit_predict(self, x: torch.Tensor, y: torch.Tensor, qx: torch.Tensor) -> torch.Tensor:
        """The ridge fit of the support ``(x, y)`` as a predictor at ``qx (B, Q, in_dim)`` -> ``(B, Q, out_dim)``:
        what the condition holds before any generator network sees it."""
        w = self.ridge_fit(x, y).view(x.shape[0], -1, y.shape[-1])  # (B, 2F, out_dim)
        return self.waves(qx) / self.freqs.shape[1] ** 0.5 @ w

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        wave = self.waves(x)  # once for both the pooled features and the fit
        pooled = self.point(self.features(x, y, wave)).mean(dim=1)
        if self.fit is not None:
            pooled = pooled + self.fit(self.ridge_fit(x, y, wave))
        return self.pool(pooled)


class ImagePrototypeEncoder(nn.Module):
    """Classification supports for whole-network generation: images ``(B, S, 1, H, W)``, labels ``(B, S)``
    -> ``(B, cond_dim)``.

    A small conv embedding of every image, the per-class means (prototypes) in label order,
    concatenated, then an MLP: the condition says which class is which row of the generated head.
    """

    def __init__(self, ways: int, cond_dim: int, width: int = 128, channels: int = 32):
        super().__init__()
        self.ways = ways
        conv = lambda i: [nn.Conv2d(i, channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]  # noqa: E731
        self.embed = nn.Sequential(*conv(1), *conv(channels), *conv(channels), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                   nn.Linear(channels, width))
        self.proj = nn.Sequential(nn.SiLU(), nn.Linear(ways * width, width), nn.SiLU(), nn.Linear(width, cond_dim))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        emb = self.embed(x.flatten(0, 1)).view(*x.shape[:2], -1)
        return self.proj(prototypes(emb, y, self.ways).flatten(1))
