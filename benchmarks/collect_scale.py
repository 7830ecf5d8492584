"""Collection under load: 10,000 and 20,000 sinusoid tasks through the Ray Data pipeline, with memory.

Each size runs in a fresh process with its own local Ray and storage directory. Prints one JSON line
per size, ``{"tasks", "seconds", "tasks_per_s", "driver_peak_rss_mb", "worker_peak_rss_mb" (the
largest Ray worker process), "workers_peak_total_rss_mb" (all Ray worker processes at once, sampled
every 0.2 s), "object_store_spilled_mb"}``, then ``{"growth_per_10k_tasks_mb": {...}}``: how much
each peak grows per 10,000 more tasks (flat memory means ~0). Peaks are the kernel's high-water
marks (VmHWM) of each process, read from /proc (Linux). Figures: docs/results/performance.md
("Collection under load") and docs/reliability.md.

    python benchmarks/collect_scale.py [--sizes 10000 20000] [--overrides k=v ...]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time
from typing import Dict


def _ray_workers() -> Dict[int, int]:
    """VmHWM (kB) of every live Ray worker process (``ray::...`` in its command line)."""
    out = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if not f.read().startswith(b"ray::"):
                    continue
            with open(f"/proc/{pid}/status") as f:
                hwm = re.search(r"VmHWM:\s+(\d+)", f.read())
            with open(f"/proc/{pid}/statm") as f:
                rss_pages = int(f.read().split()[1])
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        out[int(pid)] = (int(hwm.group(1)) if hwm else 0, rss_pages * os.sysconf("SC_PAGE_SIZE") // 1024)
    return out


def one(tasks: int, overrides) -> dict:
    """Collect ``tasks`` tasks in this process; peaks of the driver and the Ray workers."""
    import ray

    import ltdi_ray
    from ltdi_ray.pipelines.runtime import ensure_ray

    peak_each, peak_total, done = {}, [0], threading.Event()

    def sample():
        while not done.is_set():
            seen = _ray_workers()
            for pid, (hwm, _) in seen.items():
                peak_each[pid] = max(peak_each.get(pid, 0), hwm)
            peak_total[0] = max(peak_total[0], sum(rss for _, rss in seen.values()))
            time.sleep(0.2)

    with tempfile.TemporaryDirectory() as root:
        cfg = ltdi_ray.compose(f"collect.num_tasks={tasks}", f"storage.uri={root}", *overrides)
        ensure_ray(cfg.ray)  # before the sampler: the stage attaches to it (its start is not measured)
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        summary = ltdi_ray.run("collect", cfg)
        done.set()
        sampler.join()
        stats = ray._private.internal_api.memory_summary(stats_only=True)
    spilled = re.search(r"Spilled (\d+) MiB", stats)
    return {"tasks": tasks, "seconds": summary["seconds"], "tasks_per_s": round(tasks / summary["seconds"], 1),
            "driver_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "worker_peak_rss_mb": round(max(peak_each.values(), default=0) / 1024, 1),
            "workers_peak_total_rss_mb": round(peak_total[0] / 1024, 1),
            "object_store_spilled_mb": int(spilled.group(1)) if spilled else 0}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[10000, 20000])
    p.add_argument("--overrides", nargs="*", default=[])
    p.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: measure one size in this process
    args = p.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.overrides)), flush=True)
        return
    rows = []
    for size in args.sizes:
        res = subprocess.run([sys.executable, __file__, "--one", str(size), "--overrides", *args.overrides],
                             capture_output=True, text=True, check=True)
        rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    if len(rows) > 1:
        span = (rows[-1]["tasks"] - rows[0]["tasks"]) / 10000
        keys = ("driver_peak_rss_mb", "worker_peak_rss_mb", "workers_peak_total_rss_mb", "object_store_spilled_mb")
        print(json.dumps({"growth_per_10k_tasks_mb": {k: round((rows[-1][k] - rows[0][k]) / span, 1) for k in keys}}))


if __name__ == "__main__":
    main()
