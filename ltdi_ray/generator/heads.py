"""Classification heads: a per-class prototype encoder and a class-token transformer denoiser.

A linear head's weights are rows per class (``weight (N, F)``, ``bias (N,)``, flattened in that
order by the ParamSpec). Treating each class's row as a token, conditioned on that class's own
prototype, with attention across tokens and no positional embedding, makes the denoiser
equivariant to the label order and lets it run for any number of classes N.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ltdi_ray.generator.denoisers import DenoiserPreset, timestep_embedding


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
    label order. Features come from the caller's frozen extractor. N is ``ways`` (the trained
    N unless the caller names another).
    """

    def __init__(self, feat_dim: int, cond_dim: int, width: int = 128, ways: int = 5):
        super().__init__()
        self.ways = ways
        self.proj = nn.Sequential(nn.Linear(feat_dim, width), nn.SiLU(), nn.Linear(width, cond_dim))

    def forward(self, feats: torch.Tensor, labels: torch.Tensor, ways: Optional[int] = None) -> torch.Tensor:
        return self.proj(prototypes(feats, labels, ways or self.ways))


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


def prototypes(feats: torch.Tensor, labels: torch.Tensor, ways: int) -> torch.Tensor:
    """Per-class mean features ``(B, N, F)`` of support features ``(B, S, F)`` with labels ``(B, S)``."""
    onehot = torch.nn.functional.one_hot(labels.long(), ways).to(feats.dtype)  # (B, S, N)
    return onehot.transpose(1, 2) @ feats / onehot.sum(1).clamp_min(1).unsqueeze(-1)


def prototype_head(feats: torch.Tensor, labels: torch.Tensor, ways: int) -> torch.Tensor:
    """The nearest-class-mean classifier as linear head weights ``(B, N * (F + 1))``.

    Support features ``(B, S, F)``, labels ``(B, S)``: with prototypes p_i, the logits
    ``2 p_i . x - |p_i|^2`` rank classes exactly as ``-|x - p_i|^2`` does (ProtoNet's rule).
    """
    protos = prototypes(feats, labels, ways)
    return head_flat(torch.cat([2 * protos, -protos.square().sum(-1, keepdim=True)], dim=-1))


def tie_rows(mean: torch.Tensor, std: torch.Tensor, ways: int, to_ways: int = 0):
    """Per-coordinate statistics ``(N * (F + 1),)`` of exchangeable class rows -> the same statistics for
    every row (the rows' mean, and the root mean variance), for ``to_ways`` rows (default N)."""
    tile = lambda rows: head_flat(rows.expand(-1, to_ways or ways, -1))[0]  # noqa: E731
    return (tile(head_rows(mean.unsqueeze(0), ways).mean(1, keepdim=True)),
            tile(head_rows(std.unsqueeze(0), ways).square().mean(1, keepdim=True).sqrt()))
