"""The generator checkpoint: tensors in safetensors, facts and config in JSON, no pickles.

A checkpoint directory (local or s3://) holds

    model.safetensors     the encoder + denoiser state dict
    stats.safetensors     normalisation mean/std (D,) and the raw theta_0 (D,)
    train_state.pt        optional: optimiser state, counters, RNG (tensors and numbers only,
                          loaded with ``weights_only=True``)
    generator.json        format, config, ParamSpec, data facts, metrics; written last, so its
                          presence means the checkpoint is complete
"""

from __future__ import annotations

import io
import json
from typing import Dict, Optional

import torch

from ltdi_ray.errors import DataError
from ltdi_ray.storage.fs import Location

FORMAT, FORMAT_VERSION = "ltdi_ray.generator", 2  # 2: task families own their config nodes
MODEL, STATS, TRAIN_STATE, META = "model.safetensors", "stats.safetensors", "train_state.pt", "generator.json"


def write_checkpoint(loc: Location, model: torch.nn.Module, stats: Dict[str, torch.Tensor], meta: dict,
                     train_state: Optional[dict] = None) -> None:
    """Write every file atomically, ``generator.json`` last."""
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    loc.write_atomic(MODEL, save(state))
    loc.write_atomic(STATS, save({k: v.detach().cpu().contiguous().float() for k, v in stats.items()}))
    if train_state is not None:
        buf = io.BytesIO()
        torch.save(train_state, buf)
        loc.write_atomic(TRAIN_STATE, buf.getvalue())
    loc.write_atomic(META, json.dumps({"format": FORMAT, "format_version": FORMAT_VERSION, **meta}, indent=1).encode())


def read_meta(loc: Location) -> dict:
    """The checkpoint's JSON record; one clear line if it is absent or foreign."""
    try:
        meta = json.loads(loc.read_bytes(META))
    except FileNotFoundError:
        raise DataError(f"no generator checkpoint at {loc}: {META} is missing (training unfinished, or the "
                        "wrong directory: pass the generator_uri printed by `train`)") from None
    except json.JSONDecodeError as err:
        raise DataError(f"{loc.child(META)} is not valid JSON: {err}") from None
    if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise DataError(f"{loc.child(META)} is not a {FORMAT} v{FORMAT_VERSION} checkpoint")
    return meta


def read_tensors(loc: Location, name: str) -> Dict[str, torch.Tensor]:
    from safetensors.torch import load

    try:
        return load(loc.read_bytes(name))
    except FileNotFoundError:
        raise DataError(f"generator checkpoint {loc} is incomplete: {name} is missing") from None
    except Exception as err:  # safetensors raises its own error types for corrupt headers
        raise DataError(f"{loc.child(name)} is not a readable safetensors file: {err}") from None


def read_train_state(loc: Location) -> Optional[dict]:
    """Optimiser state and counters, or None for a generator-only checkpoint."""
    try:
        data = loc.read_bytes(TRAIN_STATE)
    except FileNotFoundError:
        return None
    return torch.load(io.BytesIO(data), weights_only=True)


def copy_checkpoint(src: Location, dst: Location) -> None:
    """Publish a checkpoint elsewhere, ``generator.json`` last."""
    read_meta(src)
    for name in (MODEL, STATS, TRAIN_STATE):
        try:
            data = src.read_bytes(name)
        except FileNotFoundError:
            continue
        dst.write_atomic(name, data)
    dst.write_atomic(META, src.read_bytes(META))
