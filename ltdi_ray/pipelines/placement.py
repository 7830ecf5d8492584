"""Whether a stage's Ray workers can ever be placed, asked before they are started.

Train V2 retries a worker group that the cluster cannot place every 60 s, forever, when the cluster has
no autoscaler config (a local ``ray.init`` or ``ray start`` cluster; docs/ray-notes.md 2.4), and a Ray
Data actor pool waits for its actors without end. So the stages ask first: on a cluster that can never
grow the answer is one line at once; on one that may grow (an autoscaler may add nodes), the request is
made as a placement group, which the autoscaler sees, and waited for at most ``ray.placement_timeout_s``.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from typing import Dict, List

from ltdi_ray.errors import ConfigError

log = logging.getLogger("ltdi_ray")

Bundle = Dict[str, float]


def packs(bundles: List[Bundle], nodes: List[Bundle]) -> bool:
    """Whether ``bundles`` fit on ``nodes`` (each node's total resources), largest bundle first, each on
    the first node with room. First fit can miss a packing that exists; the bundles a stage asks for are
    all alike, where it cannot."""
    free = [dict(node) for node in nodes]
    for bundle in sorted(bundles, key=lambda b: sorted(b.items()), reverse=True):
        node = next((n for n in free if all(n.get(k, 0.0) >= v for k, v in bundle.items())), None)
        if node is None:
            return False
        for k, v in bundle.items():
            node[k] -= v
    return True


def how_many(bundle: Bundle, nodes: List[Bundle]) -> int:
    """How many copies of ``bundle`` the nodes hold at once."""
    asked = {k: v for k, v in bundle.items() if v > 0}
    if not asked:
        raise ValueError("a bundle must ask for some resource")
    return sum(min(math.floor(node.get(k, 0.0) / v + 1e-9) for k, v in asked.items()) for node in nodes)


def describe(bundle: Bundle) -> str:
    """``{CPU: 2, GPU: 1}``: the resources a person reads (memory in GiB; Ray's node ids left out)."""
    def value(k: str, v: float) -> str:
        return f"{v / 2**30:.1f} GiB" if k in ("memory", "object_store_memory") else f"{v:g}"

    return "{" + ", ".join(f"{k}: {value(k, v)}" for k, v in sorted(bundle.items())
                           if not k.startswith("node:") and k != "object_store_memory") + "}"


def node_resources() -> List[Bundle]:
    """The total resources of each live node of the connected cluster."""
    import ray

    return [dict(node["Resources"]) for node in ray.nodes() if node["Alive"]]


def cluster_can_grow() -> bool:
    """False for a cluster made by ``ray.init`` (no autoscaler runs there, ever); True otherwise, where
    an autoscaler may add nodes. Ray records which in its GCS when the head node starts."""
    from ray.experimental.internal_kv import _internal_kv_get

    raw = _internal_kv_get(b"CLUSTER_METADATA", namespace=b"cluster")
    try:
        return not json.loads(raw).get("ray_init_cluster", False)
    except (TypeError, ValueError):  # no record: assume the cluster may grow, and wait a bounded time
        return True


def ensure_placeable(bundles: List[Bundle], what: str, hint: str, timeout_s: float) -> None:
    """Return once ``bundles`` (what ``what`` asks for) could be placed on the cluster; raise a one-line
    :class:`ConfigError` ending in ``hint`` when they never can, or not within ``timeout_s``."""
    nodes = node_resources()
    if packs(bundles, nodes):
        return
    asked = f"{what} asks for {len(bundles)} x {describe(bundles[0])}" if all(b == bundles[0] for b in bundles) \
        else f"{what} asks for " + " + ".join(describe(b) for b in bundles)
    kinds = Counter(describe(n) for n in nodes)
    has = f"the cluster has {len(nodes)} node(s): " + ", ".join(k if c == 1 else f"{c} x {k}" for k, c in kinds.items())
    if not cluster_can_grow():
        raise ConfigError(f"{asked}, which this cluster can never place ({has}, and no autoscaler); {hint}")
    _wait_for_growth(bundles, f"{asked}; {has}", hint, timeout_s)


def _wait_for_growth(bundles: List[Bundle], asked_has: str, hint: str, timeout_s: float) -> None:
    """Hold a placement group of ``bundles`` (the autoscaler's signal to add nodes) until it is placed or
    ``timeout_s`` passes; the group is removed either way, so the stage's own workers take its place."""
    from ray.util.placement_group import placement_group, remove_placement_group

    log.warning("%s: waiting up to %.0f s for the autoscaler to add nodes (ray.placement_timeout_s)",
                asked_has, timeout_s)
    group = placement_group(bundles, strategy="PACK")
    try:
        placed = group.wait(timeout_seconds=timeout_s)
    finally:
        remove_placement_group(group)
    if not placed:
        raise ConfigError(f"{asked_has}; not placed within ray.placement_timeout_s={timeout_s:g} s; {hint}")
