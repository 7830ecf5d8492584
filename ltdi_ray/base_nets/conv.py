"""Small conv net for Omniglot (the ``full`` generation mode) and a linear head (``head`` mode)."""

import torch
from torch import nn


class ConvNet(nn.Module):
    """``depth`` blocks of conv3x3-ReLU-maxpool2, then a linear classifier.

    Input ``(N, 1, S, S)`` images in [0, 1] -> logits ``(N, ways)``. No batch norm: running
    statistics would make the function depend on more than the flat weight vector.
    """

    def __init__(self, ways: int, channels: int = 32, depth: int = 4, image_size: int = 28):
        super().__init__()
        blocks, in_ch, size = [], 1, image_size
        for _ in range(depth):
            blocks.append(nn.Conv2d(in_ch, channels, 3, padding=1))
            in_ch, size = channels, size // 2
        self.convs = nn.ModuleList(blocks)
        self.feature_dim = channels * max(size, 1) ** 2  # F
        self.head = nn.Linear(self.feature_dim, ways)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 1, S, S)`` -> ``(N, F)`` embeddings (the input of the head)."""
        for conv in self.convs:
            x = torch.max_pool2d(torch.relu(conv(x)), 2, ceil_mode=False) if x.shape[-1] > 1 else torch.relu(conv(x))
        return x.flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def unit_length(feats: torch.Tensor) -> torch.Tensor:
    """Feature rows ``(..., F)`` scaled to length 1 (all-zero rows stay zero)."""
    return feats / feats.norm(dim=-1, keepdim=True).clamp_min(1e-6)


class LinearHead(nn.Module):
    """``head`` mode's base network as the inner loop sees it: features ``(N, F)`` -> logits ``(N, ways)``.

    Its parameters (``head.weight (ways, F)``, ``head.bias (ways,)``) are theta; the frozen
    backbone's features are computed once per episode, not at every inner step. It starts at
    zero: every class row starts equal, so nothing but the support ties a row to its label and
    generation is equivariant to the label order.
    """

    def __init__(self, features: int, ways: int):
        super().__init__()
        self.head = nn.Linear(features, ways)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.head(feats)


class HeadNet(nn.Module):
    """``head`` mode's deployable network: the frozen backbone, its features scaled to unit length, and a
    generated head, on images ``(N, 1, S, S)``.

    Only ``head.*`` is trainable (``requires_grad``), so the ParamSpec equals :class:`LinearHead`'s.
    """

    def __init__(self, backbone: ConvNet, head: nn.Linear):
        super().__init__()
        self.backbone = backbone.requires_grad_(False)
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(unit_length(self.backbone.features(x)))
