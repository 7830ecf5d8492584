"""Supervised pre-training of the frozen feature extractor for ``head`` mode (plain torch).

The conv net learns to classify every training character (and, with rotation augmentation, each
of its four rotations as its own class) from all its drawings; its conv layers then serve as the
fixed backbone whose features the generated heads and the baselines share. Validation and test
characters are never seen.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ltdi_ray.nets.conv import ConvNet


@dataclass(frozen=True)
class PretrainSettings:
    channels: int
    depth: int
    image_size: int
    rotate: bool
    epochs: int
    lr: float
    batch_size: int
    seed: int


def character_classes(images: np.ndarray, rotate: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(C, R, S, S)`` uint8 drawings of C characters -> images ``(N, 1, S, S)`` in [0, 1] and labels ``(N,)``.

    With ``rotate`` every character contributes four classes (0, 90, 180, 270 degrees).
    """
    turns = range(4) if rotate else range(1)
    classes = [np.rot90(images, k=k, axes=(2, 3)) for k in turns]  # each (C, R, S, S)
    stacked = np.ascontiguousarray(np.concatenate(classes))  # (C * turns, R, S, S)
    n_cls, per = stacked.shape[:2]
    x = torch.from_numpy(stacked.reshape(n_cls * per, 1, *stacked.shape[2:])).float().div_(255.0)
    return x, torch.arange(n_cls).repeat_interleave(per)


def pretrain_backbone(images: np.ndarray, s: PretrainSettings, device: str = "cpu") -> Tuple[ConvNet, List[float]]:
    """Train a ConvNet classifier on the training characters' drawings ``(C, R, S, S)``.

    Returns the trained net (its ``convs.*`` are the backbone) and the mean loss of each epoch.
    Deterministic given ``s.seed`` on one device.
    """
    x, y = character_classes(images, s.rotate)
    gen = torch.Generator().manual_seed(s.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(s.seed)
        net = ConvNet(int(y.max()) + 1, s.channels, s.depth, s.image_size).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=s.lr)
    history = []
    for _ in range(s.epochs):
        order, total = torch.randperm(len(x), generator=gen), 0.0
        for idx in order.split(s.batch_size):
            loss = F.cross_entropy(net(x[idx].to(device)), y[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        history.append(total / len(x))
    return net.cpu().eval(), history
