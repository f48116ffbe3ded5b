"""Hydra multirun: failed jobs that don't stop a sweep, DDP inside a sweep job, a summary table."""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

log = logging.getLogger(__name__)
RESULT_FILE = "metrics.json"
OBJECTIVE, OBJECTIVE_METRIC = "objective", "objective metric"  # summary columns


def in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def write_result(output_dir: Path, metrics: dict[str, float], status: str, error: str = "") -> None:
    """The job's final metrics, read by `SweepSummary` once the sweep ends."""
    output_dir.mkdir(parents=True, exist_ok=True)
    result = {"status": status, "metrics": metrics, "error": error}
    (output_dir / RESULT_FILE).write_text(json.dumps(result, indent=2))


def objective_metric(metrics: dict[str, float], name: str, fallback: str = "val/swd") -> str | None:
    """The metric a sweeper minimises for a job: `name`, else `fallback` (no Inception weights:
    no val/fid), else None."""
    return next((key for key in (name, fallback) if key in metrics), None)


def optimized_value(metrics: dict[str, float], name: str, fallback: str = "val/swd") -> float:
    """The value a sweeper minimises, see `objective_metric`; +inf when neither was logged (the
    worst trial; Optuna accepts inf but its Hydra sweeper crashes on NaN). Logs which it is."""
    key = objective_metric(metrics, name, fallback)
    if key is None:
        log.warning("Neither %s nor %s was logged: this job scores +inf", name, fallback)
        return math.inf
    if key != name:
        log.info("The sweeper minimises %s (%s was not logged)", key, name)
    return metrics[key]


# Set by Lightning's subprocess launcher in the launching process. A later job of the same sweep
# process would read them as "ranks are started externally" and wait for ranks that never come.
_LAUNCHER_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")
_RANKS_FROM_OUTSIDE = "LOCAL_RANK" in os.environ  # torchrun or similar started this process


def rerun_this_job_for_ddp_ranks() -> None:
    """Make Lightning's subprocess DDP launcher start this sweep job's ranks, not a new sweep.

    The launcher re-runs `sys.argv` plus `hydra.run.dir=<HydraConfig run.dir>`. Inside a multirun,
    `sys.argv` holds `-m` and the whole sweep: replace it with this job's own overrides as a single
    run, and point `run.dir` at the job's directory.
    """
    if not in_multirun():
        return
    if not _RANKS_FROM_OUTSIDE:  # forget the previous job's launch and its (finished) ranks
        for name in _LAUNCHER_ENV:
            os.environ.pop(name, None)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    hydra = HydraConfig.get()
    sys.argv = [sys.argv[0], *hydra.overrides.task, "hydra.mode=RUN"]
    with read_write(hydra), open_dict(hydra):
        hydra.run.dir = hydra.runtime.output_dir


def _rows(sweep_dir: Path, metric: str) -> list[dict[str, Any]]:
    """One row per job: its overrides that differ between jobs, status, the value minimised and
    which metric that was (OBJECTIVE, OBJECTIVE_METRIC), its final metrics. Best first."""
    jobs = []
    for result_file in sorted(sweep_dir.glob(f"*/{RESULT_FILE}")):
        overrides_file = result_file.parent / ".hydra" / "overrides.yaml"
        overrides = list(OmegaConf.load(overrides_file)) if overrides_file.exists() else []
        jobs.append((result_file.parent.name, overrides, json.loads(result_file.read_text())))
    shared = set.intersection(*(set(o) for _, o, _ in jobs)) if len(jobs) > 1 else set()
    rows = []
    for job, overrides, result in jobs:
        metrics = result["metrics"]
        finals = {k: v for k, v in sorted(metrics.items()) if not k.endswith(("_step", "_epoch"))}
        key = objective_metric(metrics, metric)
        row = {"job": job, "status": result["status"], OBJECTIVE: metrics.get(key, math.inf)}
        row[OBJECTIVE_METRIC] = key
        row["overrides"] = " ".join(o for o in overrides if o not in shared)
        rows.append(row | finals)
    return sorted(rows, key=lambda r: r[OBJECTIVE])


def _name_objective(rows: list[dict[str, Any]], metric: str) -> str:
    """Name the objective column, in place, after the metric(s) really minimised, e.g.
    `objective (val/swd)` when no job had Inception weights; a mixed sweep keeps a per-row column
    saying which. Returns the metrics' names."""
    used = {r[OBJECTIVE_METRIC] for r in rows if r[OBJECTIVE_METRIC]}
    names = " or ".join(sorted(used, key=lambda m: (m != metric, m))) or f"{metric}: not logged"
    renamed = {OBJECTIVE: f"{OBJECTIVE} ({names})"}
    for i, row in enumerate(rows):
        rows[i] = {
            renamed.get(k, k): v for k, v in row.items() if len(used) > 1 or k != OBJECTIVE_METRIC
        }
    return names


class SweepSummary(Callback):
    """After a multirun: `summary.csv` and `summary.md` in the sweep dir, best job first."""

    def __init__(self, metric: str) -> None:
        self.metric = metric

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        rows = _rows(sweep_dir, self.metric)
        if not rows:
            return
        names = _name_objective(rows, self.metric)
        columns = list(dict.fromkeys(k for row in rows for k in row))
        with open(sweep_dir / "summary.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
        lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        for row in rows:
            cells = [f"{v:.4g}" if isinstance(v, float) else str(v) for v in map(row.get, columns)]
            lines.append("| " + " | ".join(c if c != "None" else "" for c in cells) + " |")
        (sweep_dir / "summary.md").write_text("\n".join(lines) + "\n")
        missing = f" ({self.metric} was not logged)" if self.metric not in names else ""
        log.info(
            "Sweep minimised %s%s. Summary (best first): %s\n%s",
            names, missing, sweep_dir / "summary.md", "\n".join(lines),
        )  # fmt: skip
