"""N-way K-shot Omniglot episodes with a character-level train/val/test split."""

from typing import Dict, Optional

import numpy as np
import torch

from ltdi_ray.config.schema import OmniglotTaskConfig
from ltdi_ray.errors import ConfigError, DataError
from ltdi_ray.nets.conv import ConvNet, HeadNet, LinearHead, unit_length
from ltdi_ray.storage.fs import Location
from ltdi_ray.tasks.base import FieldSpec, TaskFamily, task_seed
from ltdi_ray.tasks.omniglot_io import DRAWINGS_PER_CHARACTER, load_characters, split_characters


class OmniglotFamily(TaskFamily):
    """Each class of an episode is one character (rotated by k*90 degrees on the training split,
    the usual augmentation that treats rotations as new classes). Per class, ``query_per_class``
    drawings are held out for scoring and the rest form the pool; the K-shot support is drawn
    from the pool. Labels are 0..N-1 in the order the classes were drawn.
    """

    name = "omniglot"
    loss = "cross_entropy"

    def __init__(self, cfg: OmniglotTaskConfig, endpoint_url: Optional[str] = None):
        self.cfg, self.endpoint_url = cfg, endpoint_url
        self._backbone: Optional[ConvNet] = None
        self.keys, self.images = load_characters(cfg.root, cfg.image_size, endpoint_url)
        self.splits = split_characters(len(self.keys), list(cfg.split_fractions), cfg.split_seed)
        if len(self.splits["test"]) < cfg.ways or len(self.splits["val"]) < cfg.ways:
            raise DataError(f"Omniglot root {cfg.root} has too few characters for {cfg.ways}-way val/test episodes")

    @property
    def pool_classes(self) -> int:
        return self.cfg.ways

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

    def build_net(self, ways: Optional[int] = None) -> torch.nn.Module:
        """The network the inner loop trains: the conv net (``full``) or the linear head on features (``head``),
        for ``ways`` classes (``task.ways`` by default; only heads can have another N)."""
        c, ways = self.cfg, ways or self.cfg.ways
        if c.generate == "full":
            if ways != c.ways:
                raise DataError(f"task.generate=full makes {c.ways}-way networks; got {ways}-way support labels")
            return ConvNet(c.ways, c.channels, c.depth, c.image_size)
        return LinearHead(self.backbone.feature_dim, ways)  # drawn under the caller's seed: theta_0

    def deployable(self, net: torch.nn.Module) -> torch.nn.Module:
        """``net`` (from :meth:`build_net`, any number of ways) as a module on images ``(N, 1, S, S)``."""
        return net if self.cfg.generate == "full" else HeadNet(self.backbone, net.head)

    @property
    def backbone(self) -> ConvNet:
        """``head`` mode's frozen feature extractor (loaded once, shared by every task)."""
        if self._backbone is None:
            c = self.cfg
            if c.backbone is None:
                raise ConfigError("task.generate=head needs task.backbone: a safetensors file, `random`, or leave "
                                  "it unset for a stage (collect, pipeline, backbone) to train one")
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
        if self.cfg.generate == "full":
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
        if self.cfg.generate == "full":
            return x
        lead, backbone = x.shape[:-3], self.backbone.to(x.device)
        flat = x.reshape(-1, *x.shape[-3:])
        feats = [unit_length(backbone.features(chunk)) for chunk in flat.split(4096)]  # bounded activation memory
        feats = torch.cat(feats) if feats else flat.new_zeros(0, backbone.feature_dim)
        return feats.reshape(*lead, backbone.feature_dim)

    def describe(self) -> dict:
        c = self.cfg
        return {
            **super().describe(), "root": c.root, "ways": c.ways, "shots": c.shots, "image_size": c.image_size,
            "generate": c.generate, "backbone": c.backbone,
            "split_seed": c.split_seed, "characters": len(self.keys),
            "split": {name: [self.keys[i] for i in idx] for name, idx in self.splits.items()},
        }
