"""What a finished sweep leaves behind: the sorted trial table, the best config as a YAML file
that ``train`` takes (``config_file=``), and two plots."""

from __future__ import annotations

import io
import json
import math
from typing import Any, Dict, List

from omegaconf import OmegaConf

from ltdi_ray.config.compose import dotted, set_dotted
from ltdi_ray.storage.fs import Location

TABLE, BEST, CURVES, BY_K = "trials.json", "best_config.yaml", "learning_curves.png", "metric_vs_k.png"


def _nested(flat: Dict[str, Any]) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for key, value in flat.items():
        set_dotted(out, key, value)
    return out


def trial_rows(results, metric: str, mode: str) -> List[dict]:
    """One row per trial, best first: params, per-epoch history, last metric, error."""
    rows = []
    for r in results:
        df = r.metrics_dataframe
        history = [float(v) for v in df[metric].dropna()] if df is not None and metric in df else []
        rows.append({"trial": r.path.rstrip("/").split("/")[-1] if r.path else None,
                     "params": dotted(r.config.get("params", {})), "epochs": len(history),
                     metric: history[-1] if history else None, "history": history,
                     "error": None if r.error is None else str(r.error).splitlines()[0][:300]})
    sign = 1 if mode == "min" else -1
    return sorted(rows, key=lambda row: math.inf if row[metric] is None else sign * row[metric])


def format_table(rows: List[dict], metric: str) -> str:
    keys = sorted({k for row in rows for k in row["params"]})
    lines = ["| " + " | ".join(["rank", *keys, "epochs", metric]) + " |", "|" + "---|" * (len(keys) + 3)]
    for i, row in enumerate(rows, 1):
        value = "error" if row[metric] is None else f"{row[metric]:.4f}"
        cells = [str(i), *(_short(row["params"].get(k)) for k in keys), str(row["epochs"]), value]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _short(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def plots(rows: List[dict], metric: str, mode: str) -> Dict[str, bytes]:
    """Learning curves of every trial and, when k is swept, the best metric per k for each
    (schedule, variant) pair."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = {}
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for row in rows:
        if row["history"]:
            ax.plot(range(1, len(row["history"]) + 1), row["history"], alpha=0.6, lw=1)
    ax.set(xlabel="epoch", ylabel=metric, title="validation metric of every trial (ASHA stops the weak ones)")
    if mode == "min":
        ax.set_yscale("log")
    out[CURVES] = _png(fig)
    plt.close(fig)
    if any("diffusion.segments" in row["params"] for row in rows):
        groups: Dict[tuple, Dict[int, float]] = {}
        pick = min if mode == "min" else max
        for row in rows:
            p = row["params"]
            if row[metric] is None or "diffusion.segments" not in p:
                continue
            group = (p.get("diffusion.schedule", "-"), p.get("diffusion.variant", "-"))
            k = int(p["diffusion.segments"])
            best = groups.setdefault(group, {})
            best[k] = pick(best.get(k, row[metric]), row[metric])
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for (schedule, variant), by_k in sorted(groups.items()):
            ks = sorted(by_k)
            ax.plot(ks, [by_k[k] for k in ks], marker="o", label=f"{variant}, {schedule}")
        ax.set(xlabel="segments k", ylabel=f"{metric} (best trial per k)", title="metric vs k")
        if mode == "min":
            ax.set_yscale("log")
        ax.legend(fontsize=8)
        out[BY_K] = _png(fig)
        plt.close(fig)
    return out


def write_report(results, loc: Location, metric: str, mode: str) -> dict:
    """Write the table, the best config and the plots under ``loc``; print the table."""
    rows = trial_rows(results, metric, mode)
    loc.write_atomic(TABLE, json.dumps({"metric": metric, "mode": mode, "trials": rows}, indent=1).encode())
    table = format_table(rows, metric)
    print(table, flush=True)
    scored = [row for row in rows if row[metric] is not None]
    best = scored[0] if scored else None
    if best is not None:
        loc.write_atomic(BEST, OmegaConf.to_yaml(OmegaConf.create(_nested(best["params"]))).encode())
    images = plots(rows, metric, mode)
    for name, data in images.items():
        loc.write_atomic(name, data)
    return {"trials": len(rows), "best": best, "best_config": str(loc.child(BEST)) if best else None,
            "table": str(loc.child(TABLE)), "plots": [str(loc.child(n)) for n in images],
            "first_error": next((row["error"] for row in rows if row["error"]), None)}
