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
        self.head = nn.Linear(channels * max(size, 1) ** 2, ways)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 1, S, S)`` -> ``(N, F)`` embeddings (the input of the head)."""
        for conv in self.convs:
            x = torch.max_pool2d(torch.relu(conv(x)), 2, ceil_mode=False) if x.shape[-1] > 1 else torch.relu(conv(x))
        return x.flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class HeadNet(nn.Module):
    """``head`` mode: a frozen ConvNet feature extractor plus the linear classifier that is generated.

    Only the head's parameters are trainable, so they alone make up the ParamSpec and theta;
    the backbone's weights are fixed (``requires_grad=False``) and shared by every task.
    """

    def __init__(self, backbone: ConvNet, ways: int):
        super().__init__()
        features = backbone.head.in_features
        backbone.head = nn.Identity()
        self.backbone = backbone.requires_grad_(False)
        self.head = nn.Linear(features, ways)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone.features(x))
