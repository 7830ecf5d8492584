"""ParamSpec: the ordered names and shapes that map a flat weight vector to a module's parameters."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import torch

from ltdi_ray.errors import DataError


@dataclass(frozen=True)
class ParamSpec:
    """Ordered parameter names and shapes; ``dim`` is D, the length of the flat vector theta."""

    names: Tuple[str, ...]
    shapes: Tuple[Tuple[int, ...], ...]

    @classmethod
    def from_module(cls, module: torch.nn.Module) -> "ParamSpec":
        """The spec of the module's trainable parameters in registration order (frozen ones,
        such as a fixed feature extractor, stay inside the module and out of theta)."""
        items = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        return cls(tuple(n for n, _ in items), tuple(tuple(p.shape) for _, p in items))

    @property
    def sizes(self) -> List[int]:
        return [math.prod(s) for s in self.shapes]

    @property
    def dim(self) -> int:
        return sum(self.sizes)

    def flatten(self, params: Dict[str, torch.Tensor]) -> torch.Tensor:
        """dict of tensors ``(*batch, *shape)`` -> ``(*batch, D)``, batch dims taken from the first entry."""
        missing = [n for n in self.names if n not in params]
        if missing:
            raise DataError(f"parameters missing from the dict: {missing}")
        first = params[self.names[0]]
        batch = first.shape[: first.dim() - len(self.shapes[0])]
        return torch.cat([params[n].reshape(*batch, -1) for n in self.names], dim=-1)

    def unflatten(self, flat: torch.Tensor) -> Dict[str, torch.Tensor]:
        """``(*batch, D)`` -> dict of views ``(*batch, *shape)``."""
        if flat.shape[-1] != self.dim:
            raise DataError(f"flat weight vector has {flat.shape[-1]} entries, the ParamSpec needs {self.dim}")
        chunks = torch.split(flat, self.sizes, dim=-1)
        batch = flat.shape[:-1]
        return {n: c.reshape(*batch, *s) for n, c, s in zip(self.names, chunks, self.shapes)}

    def to_json(self) -> Dict[str, list]:
        return {"names": list(self.names), "shapes": [list(s) for s in self.shapes], "dim": self.dim}

    @classmethod
    def from_json(cls, data: Dict[str, Sequence]) -> "ParamSpec":
        spec = cls(tuple(data["names"]), tuple(tuple(int(x) for x in s) for s in data["shapes"]))
        if "dim" in data and int(data["dim"]) != spec.dim:
            raise DataError(f"ParamSpec says dim={data['dim']} but its shapes add up to {spec.dim}")
        return spec
