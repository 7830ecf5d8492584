"""Classification heads: a per-class prototype encoder and a class-token transformer denoiser.

A linear head's weights are rows per class (``weight (N, F)``, ``bias (N,)``, flattened in that
order by the ParamSpec). Treating each class's row as a token, conditioned on that class's own
prototype, with attention across tokens and no positional embedding, makes the denoiser
equivariant to the label order and lets it run for any number of classes N.
"""

from __future__ import annotations

import torch
from torch import nn

from ltdi_ray.models.denoiser import DenoiserPreset, timestep_embedding


def head_rows(theta: torch.Tensor, ways: int) -> torch.Tensor:
    """Flat head weights ``(B, N * (F + 1))`` (weight then bias) -> class rows ``(B, N, F + 1)``."""
    bsz, dim = theta.shape
    feat = dim // ways - 1
    weight, bias = theta[:, : ways * feat].view(bsz, ways, feat), theta[:, ways * feat:].view(bsz, ways, 1)
    return torch.cat([weight, bias], dim=-1)


def head_flat(rows: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`head_rows`: ``(B, N, F + 1)`` -> ``(B, N * (F + 1))``."""
    return torch.cat([rows[..., :-1].flatten(1), rows[..., -1]], dim=1)


class PrototypeEncoder(nn.Module):
    """Support features ``(B, S, F)`` with labels ``(B, S)`` in [0, N) -> per-class conditions ``(B, N, cond_dim)``.

    Class i's condition comes from the mean feature of its support examples (its prototype), in
    label order. Features come from the caller's frozen extractor.
    """

    def __init__(self, feat_dim: int, cond_dim: int, width: int = 128):
        super().__init__()
        self.proj = nn.Sequential(nn.Linear(feat_dim, width), nn.SiLU(), nn.Linear(width, cond_dim))

    def forward(self, feats: torch.Tensor, labels: torch.Tensor, ways: int) -> torch.Tensor:
        onehot = torch.nn.functional.one_hot(labels.long(), ways).to(feats.dtype)  # (B, S, N)
        protos = onehot.transpose(1, 2) @ feats / onehot.sum(1).clamp_min(1).unsqueeze(-1)
        return self.proj(protos)


class ClassTokenDenoiser(nn.Module):
    """``(x_t (B, N * (F + 1)), t (B,), c (B, N, cond_dim)) -> (B, N * (F + 1))`` over class tokens."""

    def __init__(self, row_dim: int, steps: int, preset: DenoiserPreset, heads: int = 4):
        super().__init__()
        w = preset.width
        self.steps, self.t_dim = steps, w
        self.inp = nn.Linear(row_dim, w)
        self.cond = nn.Sequential(nn.Linear(w + preset.cond_dim, w), nn.SiLU(), nn.Linear(w, w))
        layer = nn.TransformerEncoderLayer(w, heads, 2 * w, dropout=0.0, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, preset.depth, enable_nested_tensor=False)
        self.out = nn.Sequential(nn.LayerNorm(w), nn.Linear(w, row_dim))

    def forward(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        ways = c.shape[1]
        temb = timestep_embedding(t, self.steps, self.t_dim).unsqueeze(1).expand(-1, ways, -1)
        h = self.inp(head_rows(x, ways)) + self.cond(torch.cat([temb, c], dim=-1))
        return head_flat(self.out(self.blocks(h)))
