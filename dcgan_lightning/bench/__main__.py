"""`python -m dcgan_lightning.bench [--quick] [--only SECTION ...]`: every section, one table.

A section is any module of this package with `run(quick) -> list[dict]`; each runs in turn (with
the module's `THREADS` torch threads if it sets them, unless `--threads` is given), and the table
(markdown, ready for the README) names the machine the figures came from and how busy it was:
figures from a machine shared with other work are noisy.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import platform
import sys
import time
import traceback

import torch

import dcgan_lightning.bench as bench


def sections() -> list[str]:
    """Every module of this package with a `run` (not `gpu_check`, a command of its own)."""
    names = (m.name for m in pkgutil.iter_modules(bench.__path__) if not m.name.startswith("_"))
    return sorted(
        n for n in names if hasattr(importlib.import_module(f"{bench.__name__}.{n}"), "run")
    )


def machine() -> str:
    """CPU model, cores, torch version and GPU, for the table's caption."""
    cpu = platform.processor() or platform.machine()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    threads = f"{torch.get_num_threads()} torch threads"
    return f"{cpu}, {os.cpu_count()} cores ({threads}), {gpu}, torch {torch.__version__}"


def table(rows: list[dict]) -> str:
    lines = ["| section | case | value | unit | note |", "|---|---|---:|---|---|"]
    for r in rows:
        value = f"{r['value']:,.2f}" if abs(r["value"]) < 100 else f"{r['value']:,.0f}"
        lines.append(f"| {r['section']} | {r['case']} | {value} | {r['unit']} | {r['note']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dcgan_lightning.bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repeats: a smoke run")
    parser.add_argument("--only", nargs="+", choices=sections(), help="run only these sections")
    parser.add_argument(
        "--threads", type=int, help="torch threads (1: steadier figures on a busy machine)"
    )
    args = parser.parse_args(argv)
    before = torch.get_num_threads()
    threads = args.threads or before

    rows, failed, load = [], [], os.getloadavg()[0]
    for name in args.only or sections():
        start = time.perf_counter()
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        try:
            module = importlib.import_module(f"{bench.__name__}.{name}")
            torch.set_num_threads(args.threads or getattr(module, "THREADS", threads))
            rows += module.run(quick=args.quick)
        except Exception:
            traceback.print_exc()
            failed.append(name)
        finally:
            torch.set_num_threads(before)
        print(f"[bench] {name}: {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    load = f"load average {load:.1f} at the start, {os.getloadavg()[0]:.1f} at the end"
    print(f"\nMachine: {machine()}; {load}\n")
    print(table(rows))
    if failed:
        print(f"\nFailed sections: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
