"""N-way K-shot Omniglot episodes with a character-level train/val/test split.

Two ways to generate: ``task.generate=full`` makes theta the whole conv net; ``head`` makes it the
linear classifier on a frozen backbone (trained once per run root by :meth:`OmniglotFamily.prepare`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from omegaconf import MISSING

from ltdi_ray.base_nets.conv import ConvNet, HeadNet, LinearHead, unit_length
from ltdi_ray.config.checks import absolute, check
from ltdi_ray.errors import ConfigError, DataError
from ltdi_ray.storage.fs import Location
from ltdi_ray.tasks.base import ClassificationFamily, FieldSpec, task_seed
from ltdi_ray.tasks.omniglot_backbone import PretrainConfig
from ltdi_ray.tasks.omniglot_io import DRAWINGS_PER_CHARACTER, SPLIT_BY, load_characters, split_characters


@dataclass
class OmniglotConfig:
    """``task=omniglot``: N-way K-shot episodes from the standard folder layout or its zip archives."""

    family: str = "omniglot"
    root: str = MISSING  # directory, zip file or directory of zips; local path or s3:// URI
    ways: int = 5
    shots: int = 1
    query_per_class: int = 5  # drawings per class held out for scoring; the rest form the pool
    image_size: int = 28
    split_seed: int = 0
    split_by: str = "character"  # character: test characters unseen | alphabet: test alphabets unseen (harder)
    split_fractions: List[float] = field(default_factory=lambda: [0.62, 0.132, 0.248])  # 242 chars -> 150/32/60
    rotate_train: bool = True  # rotations by k*90 degrees as new classes, training split only
    channels: int = 32  # conv net width
    depth: int = 4  # conv blocks: 28 -> 14 -> 7 -> 3 -> 1
    generate: str = "full"  # full: the whole conv net is theta; head: only the classifier on a frozen backbone
    # head mode's frozen feature extractor: safetensors ConvNet weights (local or s3://); `random` = a fixed seeded
    # init (untrained features); unset = trained on the training characters into <storage.uri>/backbone (task.pretrain)
    backbone: Optional[str] = None
    backbone_seed: int = 0  # the seed of the extractor's initialisation
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)

    def __post_init__(self) -> None:
        self.root = absolute(self.root)
        check(self.ways >= 2, "task.ways", f"must be >= 2, got {self.ways}")
        check(self.shots >= 1, "task.shots", f"must be >= 1, got {self.shots}")
        check(self.query_per_class >= 1, "task.query_per_class", f"must be >= 1, got {self.query_per_class}")
        check(self.shots <= DRAWINGS_PER_CHARACTER - self.query_per_class, "task.shots",
              f"Omniglot has {DRAWINGS_PER_CHARACTER} drawings per character: shots ({self.shots}) + "
              f"query_per_class ({self.query_per_class}) must be <= {DRAWINGS_PER_CHARACTER}")
        check(8 <= self.image_size <= 105, "task.image_size", f"must be in [8, 105], got {self.image_size}")
        check(self.split_by in SPLIT_BY, "task.split_by", f"must be one of {', '.join(SPLIT_BY)}, got {self.split_by!r}")
        fr = list(self.split_fractions)
        check(len(fr) == 3 and min(fr) > 0 and abs(sum(fr) - 1) < 1e-6, "task.split_fractions",
              f"must be three positive fractions summing to 1, got {fr}")
        check(self.channels >= 1 and self.depth >= 1, "task.channels", "channels and depth must be >= 1")
        check(self.generate in ("full", "head"), "task.generate", f"must be full or head, got {self.generate!r}")
        check(self.backbone is None or self.generate == "head", "task.backbone", "only applies to task.generate=head")
        if self.backbone not in (None, "random"):
            self.backbone = absolute(self.backbone)


class OmniglotFamily(ClassificationFamily):
    """Each class of an episode is one character (rotated by k*90 degrees on the training split,
    the usual augmentation that treats rotations as new classes). Per class, ``query_per_class``
    drawings are held out for scoring and the rest form the pool; the K-shot support is drawn
    from the pool. Labels are 0..N-1 in the order the classes were drawn.
    """

    name = "omniglot"
    Config = OmniglotConfig

    def __init__(self, cfg: OmniglotConfig, endpoint_url: Optional[str] = None):
        super().__init__(cfg, endpoint_url)
        self._backbone: Optional[ConvNet] = None
        self.keys, self.images = load_characters(cfg.root, cfg.image_size, endpoint_url)
        self.splits = split_characters(self.keys, list(cfg.split_fractions), cfg.split_seed, cfg.split_by)
        if len(self.splits["test"]) < cfg.ways or len(self.splits["val"]) < cfg.ways:
            raise DataError(f"Omniglot root {cfg.root} has too few characters for {cfg.ways}-way val/test episodes")

    @property
    def heads(self) -> bool:
        return self.cfg.generate == "head"

    @property
    def pool_per_class(self) -> int:
        return DRAWINGS_PER_CHARACTER - self.cfg.query_per_class

    def fields(self) -> FieldSpec:
        c, s = self.cfg, self.cfg.image_size
        return {
            "classes": ((c.ways,), "int32"),
            "rotations": ((c.ways,), "int32"),
            "pool_x": ((c.ways * self.pool_per_class, s, s), "uint8"),
            "pool_y": ((c.ways * self.pool_per_class,), "int32"),
            "support_idx": ((c.ways * c.shots,), "int32"),
            "query_x": ((c.ways * c.query_per_class, s, s), "uint8"),
            "query_y": ((c.ways * c.query_per_class,), "int32"),
        }

    def sample(self, split: str, index: int, base_seed: int = 0) -> Dict[str, np.ndarray]:
        c, ppc = self.cfg, self.pool_per_class
        rng = np.random.default_rng(task_seed(self.name, split, index, base_seed))
        classes = rng.choice(self.splits[split], size=c.ways, replace=False)
        rotate = split == "train" and c.rotate_train
        rotations = rng.integers(0, 4, size=c.ways) if rotate else np.zeros(c.ways, dtype=np.int64)
        pool, query, support = [], [], []
        for label, (char, k) in enumerate(zip(classes, rotations)):
            order = rng.permutation(DRAWINGS_PER_CHARACTER)
            drawings = np.rot90(self.images[char], k=int(k), axes=(1, 2))
            query.append(drawings[order[: c.query_per_class]])
            pool.append(drawings[order[c.query_per_class:]])
            support.append(label * ppc + rng.choice(ppc, size=c.shots, replace=False))
        labels = np.arange(c.ways, dtype=np.int32)
        return {
            "classes": classes.astype(np.int32),
            "rotations": rotations.astype(np.int32),
            "pool_x": np.ascontiguousarray(np.concatenate(pool)),
            "pool_y": np.repeat(labels, ppc),
            "support_idx": np.concatenate(support).astype(np.int32),
            "query_x": np.ascontiguousarray(np.concatenate(query)),
            "query_y": np.repeat(labels, c.query_per_class),
        }

    # -- networks ------------------------------------------------------------------------

    def build_net(self, ways: Optional[int] = None) -> torch.nn.Module:
        """The network the inner loop trains: the conv net (``full``) or the linear head on features (``head``),
        for ``ways`` classes (``task.ways`` by default; only heads can have another N)."""
        c, ways = self.cfg, ways or self.cfg.ways
        if not self.heads:
            if ways != c.ways:
                raise DataError(f"task.generate=full makes {c.ways}-way networks; got {ways}-way support labels")
            return ConvNet(c.ways, c.channels, c.depth, c.image_size)
        return LinearHead(self.backbone.feature_dim, ways)  # drawn under the caller's seed: theta_0

    def deployable(self, net: torch.nn.Module) -> torch.nn.Module:
        """``net`` (from :meth:`build_net`, any number of ways) as a module on images ``(N, 1, S, S)``."""
        return HeadNet(self.backbone, net.head) if self.heads else net

    @property
    def backbone(self) -> ConvNet:
        """``head`` mode's frozen feature extractor (loaded once, shared by every task)."""
        if self._backbone is None:
            c = self.cfg
            if c.backbone is None:
                raise ConfigError("task.generate=head needs task.backbone: a safetensors file, `random`, or leave "
                                  "it unset for a stage (collect, pipeline, prepare) to train one")
            with torch.random.fork_rng(devices=[]):  # the same backbone whatever the caller's seed
                torch.manual_seed(c.backbone_seed)
                backbone = ConvNet(c.ways, c.channels, c.depth, c.image_size)
            if c.backbone != "random":
                self._load_backbone(backbone)
            backbone.head = torch.nn.Identity()
            self._backbone = backbone.requires_grad_(False).eval()
        return self._backbone

    def _load_backbone(self, backbone: ConvNet) -> None:
        from safetensors.torch import load

        loc = Location.parse(self.cfg.backbone, self.endpoint_url)
        parent, name = loc.uri.rsplit("/", 1)
        try:
            state = load(Location(parent, loc.endpoint_url).read_bytes(name))
        except FileNotFoundError:
            raise DataError(f"backbone weights {loc} not found (task.backbone)") from None
        except Exception as err:  # safetensors raises its own error types for corrupt files
            raise DataError(f"backbone weights {loc} are unreadable: {err}") from None
        convs = {k: v for k, v in state.items() if k.startswith("convs.")}
        try:
            backbone.load_state_dict(convs, strict=False)
            missing = [k for k in backbone.state_dict() if k.startswith("convs.") and k not in convs]
            if missing:
                raise RuntimeError(f"missing {missing[:2]}")
        except RuntimeError as err:
            raise DataError(f"backbone weights {loc} do not fit the conv net (task.channels/depth): {err}") from None

    def decode(self, x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(x)).float().div_(255.0)

    def to_torch(self, x: np.ndarray) -> torch.Tensor:
        """Stored drawings ``(..., S, S)`` uint8 -> network inputs. Heads: the backbone sees each distinct
        drawing once and its features are gathered back; episodes reuse the few thousand drawings of a
        split (10,000 training episodes hold 750,000 pool drawings of at most 12,000 distinct images),
        and the backbone is what the train stage spent its first minutes on."""
        if not self.heads:
            return super().to_torch(x)
        flat = np.ascontiguousarray(x).reshape(-1, x.shape[-2] * x.shape[-1])
        distinct, inverse = np.unique(flat.view(np.dtype((np.void, flat.shape[1])))[:, 0], return_inverse=True)
        feats = self.net_input(self.decode(distinct.view(np.uint8).reshape(-1, *x.shape[-2:])))
        return feats[torch.from_numpy(inverse.reshape(-1))].reshape(*x.shape[:-2], feats.shape[-1])

    @torch.no_grad()
    def net_input(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``(..., S, S)`` in [0, 1] -> ``(..., 1, S, S)`` (``full``) or unit-length backbone features
        ``(..., F)`` (``head``: L2-normalised, so that learning rates do not depend on the backbone's scale;
        ProtoNet gains 0.3 to 0.5 points from it)."""
        x = x.unsqueeze(-3)
        if not self.heads:
            return x
        lead, backbone = x.shape[:-3], self.backbone.to(x.device)
        flat = x.reshape(-1, *x.shape[-3:])
        feats = [unit_length(backbone.features(chunk)) for chunk in flat.split(4096)]  # bounded activation memory
        feats = torch.cat(feats) if feats else flat.new_zeros(0, backbone.feature_dim)
        return feats.reshape(*lead, backbone.feature_dim)

    # -- the generator -------------------------------------------------------------------

    def build_encoder(self, model_cfg, cond_dim: int, dim: int) -> torch.nn.Module:
        """Heads: one condition per class, from its prototype (a token per class row of the head); full
        networks: a conv embedding of the support images, prototypes concatenated in label order."""
        from ltdi_ray.generator.encoders import ImagePrototypeEncoder
        from ltdi_ray.generator.heads import PrototypeEncoder

        if self.heads:
            return PrototypeEncoder(dim // self.cfg.ways - 1, cond_dim, model_cfg.encoder_width, self.cfg.ways)
        return ImagePrototypeEncoder(self.cfg.ways, cond_dim, model_cfg.encoder_width)

    def build_denoiser(self, dim: int, steps: int, preset) -> torch.nn.Module:
        """Heads: a transformer over class rows (equivariant to the label order, any N); else the MLP."""
        from ltdi_ray.generator.heads import ClassTokenDenoiser

        return ClassTokenDenoiser(dim // self.cfg.ways, steps, preset) if self.heads else \
            super().build_denoiser(dim, steps, preset)

    def normalizer(self, mean: torch.Tensor, std: torch.Tensor):
        """Head rows are exchangeable (labels come in random order): they share their statistics."""
        from ltdi_ray.generator.heads import tie_rows

        if self.heads:
            mean, std = tie_rows(mean.float(), std.float(), self.cfg.ways)
        return super().normalizer(mean, std)

    @classmethod
    def has_support_start(cls, task_cfg) -> bool:
        return task_cfg.generate == "head"

    def support_start(self, sx: torch.Tensor, sy: torch.Tensor) -> torch.Tensor:
        """Heads: the ProtoNet head of each support (features ``sx (B, S, F)``, labels ``sy (B, S)``)."""
        from ltdi_ray.generator.heads import prototype_head

        if not self.heads:
            return super().support_start(sx, sy)
        return prototype_head(sx, sy, self.cfg.ways)

    def with_ways(self, ways: Optional[int]) -> "OmniglotFamily":
        """Heads for ``ways`` classes share this family's characters and backbone; full nets refuse."""
        if ways is None or ways == self.cfg.ways:
            return self
        if not self.heads:
            raise DataError(f"task.generate=full makes {self.cfg.ways}-way networks; got {ways}-way support labels")
        other = OmniglotFamily(replace(self.cfg, ways=ways), self.endpoint_url)
        other._backbone = self._backbone
        return other

    def weights_for_ways(self, mean: torch.Tensor, std: torch.Tensor, theta0: torch.Tensor,
                         ways: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Head rows share their statistics, so another N repeats them, and theta_0's rows."""
        from ltdi_ray.generator.heads import head_flat, head_rows, tie_rows

        if not self.heads:
            return super().weights_for_ways(mean, std, theta0, ways)
        mean, std = tie_rows(mean, std, self.cfg.ways, ways)
        rows = head_rows(theta0.unsqueeze(0), self.cfg.ways)[:, torch.arange(ways) % self.cfg.ways]
        return mean, std, head_flat(rows)[0]

    # -- config ---------------------------------------------------------------------------

    @classmethod
    def defaults(cls, cfg) -> Dict[str, Any]:
        """Heads start at each episode's ProtoNet head and, from there, bridge without noise (1-shot
        0.881 -> 0.906), with the chain loss at 0.3 (docs/results/omniglot.md)."""
        if cfg.task.generate != "head":
            return {}
        theta0 = cfg.trajectory.theta0 or "prototype"
        noise = {"diffusion.bridge_noise": 0.0, "diffusion.bridge_start_noise": 0.0} if theta0 == "prototype" else {}
        return {"trajectory.theta0": "prototype", "train.chain_loss": 0.3, **noise}

    @classmethod
    def prepare(cls, cfg):
        """Heads without ``task.backbone``: train the extractor once into ``<storage.uri>/backbone``."""
        from ltdi_ray.tasks.omniglot_backbone import ensure_backbone

        return ensure_backbone(cfg)

    def describe(self) -> dict:
        c = self.cfg
        return {
            **super().describe(), "root": c.root, "ways": c.ways, "shots": c.shots, "image_size": c.image_size,
            "generate": c.generate, "backbone": c.backbone,
            "split_seed": c.split_seed, "split_by": c.split_by, "characters": len(self.keys),
            "split": {name: [self.keys[i] for i in idx] for name, idx in self.splits.items()},
        }
