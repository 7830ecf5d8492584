"""The plot stage: pictures of a trained run, to look at before trusting its numbers.

Writes under ``<storage.uri>/plots/``:

    training_curves.png   per-epoch training loss and validation metric (the generator's record)
    weight_space.png      a 2-D PCA of normalised weight space: the true trajectories of a few unseen
                          test tasks (recomputed with the collection optimiser), their local targets
                          (the segment ends the generator is trained on) and the generator's chains
    predictions.png       regression: each task's true function, its support, the trajectory's end
                          point theta_M and the generated weights

No Ray: it reads the published generator and recomputes the test trajectories in-process.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import time
from typing import Dict, List

import numpy as np
import torch

from ltdi_ray.config.schema import Config
from ltdi_ray.generator.api import WeightGenerator, load_generator
from ltdi_ray.storage.fs import Location
from ltdi_ray.tasks.episodes import support_of

log = logging.getLogger("ltdi_ray")


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def draws_functions(family) -> bool:
    """Whether the family's tasks are functions of one real input with one real output (drawable as curves)."""
    fields = family.fields()
    return all(fields[k][0][1:] == (1,) and np.dtype(fields[k][1]).kind == "f" for k in ("pool_x", "pool_y"))


def training_curves(history: List[dict], metric: str, log_scale: bool) -> bytes:
    """Training loss and validation metric (mean and median) against the epoch."""
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] + 1 for h in history]
    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax_loss.plot(epochs, [h["loss"] for h in history], marker="o")
    ax_loss.set(xlabel="epoch", ylabel="training loss", yscale="log", title="generator training loss")
    ax_val.plot(epochs, [h["val_metric"] for h in history], marker="o", label="mean")
    ax_val.plot(epochs, [h["val_metric_median"] for h in history], marker=".", ls="--", label="median")
    ax_val.set(xlabel="epoch", ylabel=f"validation {metric}", title="generated weights on validation tasks")
    if log_scale:
        ax_val.set_yscale("log")
    ax_val.legend()
    return _png(fig)


def weight_space(truth: torch.Tensor, targets: List[int], chain: List[torch.Tensor], steps: List[int]) -> bytes:
    """PCA of normalised weights: true trajectories ``(n, C, D)``, the target checkpoints
    ``targets`` and chains ``[(n, D)]`` (one entry per visited diffusion step)."""
    import matplotlib.pyplot as plt

    path = torch.stack(chain, 1)  # (n, S, D)
    points = torch.cat([truth.flatten(0, 1), path.flatten(0, 1)])
    centre = points.mean(0)
    _, _, v = torch.linalg.svd(points - centre, full_matrices=False)
    project = lambda z: ((z - centre) @ v[:2].T).numpy()  # noqa: E731
    fig, ax = plt.subplots(figsize=(7.5, 6))
    for i in range(truth.shape[0]):
        color = f"C{i % 10}"
        traj, made = project(truth[i]), project(path[i])
        ax.plot(traj[:, 0], traj[:, 1], color=color, lw=1, alpha=0.6, label="trajectory" if i == 0 else None)
        ax.scatter(traj[targets, 0], traj[targets, 1], color=color, s=45, marker="o", edgecolor="k",
                   label="local targets" if i == 0 else None, zorder=3)
        ax.plot(made[:, 0], made[:, 1], color=color, ls="--", marker="x", ms=7,
                label="generated chain" if i == 0 else None)
    origin = project(truth[:1, 0])[0]
    ax.annotate("theta_0", origin, textcoords="offset points", xytext=(6, 6))
    ax.set(xlabel="PC 1", ylabel="PC 2",
           title=f"normalised weight space: {truth.shape[0]} unseen test tasks (chain steps {steps})")
    ax.legend(loc="best")
    return _png(fig)


def predictions(gen: WeightGenerator, rows: Dict[str, np.ndarray], theta_m: torch.Tensor, made: torch.Tensor,
                sx: torch.Tensor, sy: torch.Tensor) -> bytes:
    """One panel per task: true function (its pool), support, theta_M and generated predictions."""
    import matplotlib.pyplot as plt

    n = theta_m.shape[0]
    cols = min(n, 3)
    fig, axes = plt.subplots((n + cols - 1) // cols, cols, figsize=(4 * cols, 3 * ((n + cols - 1) // cols)),
                             squeeze=False)
    px, py = rows["pool_x"][..., 0], rows["pool_y"][..., 0]
    dense = torch.linspace(float(px.min()), float(px.max()), 200).unsqueeze(-1)
    with torch.no_grad():
        for i, ax in enumerate(axes.flat):
            if i >= n:
                ax.axis("off")
                continue
            order = np.argsort(px[i])
            ax.plot(px[i][order], py[i][order], color="k", lw=2, alpha=0.3, label="true")
            ax.plot(dense[:, 0], gen.predict(theta_m[i], dense)[:, 0], color="C0", label="theta_M (trajectory)")
            ax.plot(dense[:, 0], gen.predict(made[i], dense)[:, 0], color="C3", ls="--", label="generated")
            ax.scatter(sx[i, :, 0], sy[i, :, 0], color="k", zorder=3, label="support")
            ax.set_title(f"test task {i}")
    axes.flat[0].legend(fontsize=7)
    return _png(fig)


def run_plot(cfg: Config) -> dict:
    """Draw the pictures of the run at ``storage.uri`` (its published generator); returns
    ``{"stage", "uri", "plots", "seconds"}``."""
    import matplotlib

    matplotlib.use("Agg")
    from ltdi_ray.pipelines.collect import make_batcher

    tic = time.time()
    root = Location.parse(cfg.storage.uri, cfg.storage.endpoint_url)
    gen = load_generator(str(root.child("generator")), cfg.storage.endpoint_url)
    run_cfg = dataclasses.replace(gen.cfg, collect=dataclasses.replace(gen.cfg.collect, split="test"))
    rows = make_batcher(run_cfg, shared=gen.theta0.shared)(list(range(cfg.plot.tasks)))  # the first test tasks, true trajectories
    truth = torch.from_numpy(rows["checkpoints"])
    sx, sy = support_of(rows, gen.family, raw=True)
    chain = gen.generate_chain(sx, sy, seed=0)
    metric = gen.family.metric_name
    history = gen.meta.get("history") or [{"epoch": gen.meta["epoch"], **gen.meta["metrics"]}]
    images = {"training_curves.png": training_curves(history, metric, log_scale=not gen.family.higher_is_better),
              "weight_space.png": weight_space(gen.norm.normalize(truth), gen.meta["target_indices"],
                                               [gen.norm.normalize(z) for _, z in chain], [t for t, _ in chain])}
    if draws_functions(gen.family):
        images["predictions.png"] = predictions(gen, rows, truth[:, -1], chain[-1][1], sx, sy)
    out = root.child("plots")
    for name, data in images.items():
        out.write_atomic(name, data)
    log.info("plot: wrote %s under %s", ", ".join(images), out)
    return {"stage": "plot", "uri": str(out), "plots": [str(out.child(n)) for n in images],
            "seconds": round(time.time() - tic, 2)}
