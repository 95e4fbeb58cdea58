"""What every benchmark shares: the machine line, clocks, interleaved repeats, median ratios, and
writing the script's own section of BENCHMARKS.md (with the command that regenerates it).

Habit (STYLE.md, 6): ratios measured side by side in one run, interleaved so that background load
hits every variant alike, medians over repeats, and the figures go to BENCHMARKS.md with the
command and the machine.
"""
from __future__ import annotations

import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCHMARKS = os.path.join(ROOT, "BENCHMARKS.md")


# ----------------------------------------------------------------------------- the machine


def machine(threads: bool = False, load: bool = False) -> str:
    """One line naming the machine: GPU and torch, or the CPU's cores; optionally torch's thread count
    and the 1-minute load average (this machine is shared: a figure without its load says little)."""
    import torch

    if torch.cuda.is_available():
        line = f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    else:
        line = f"{os.cpu_count()}-core CPU ({platform.machine()}), no GPU, torch {torch.__version__}"
    if threads:
        n = torch.get_num_threads()
        line += f", {n} torch thread{'s' if n != 1 else ''}"
    if load:
        line += f", load average {os.getloadavg()[0]:.1f}"
    return line


def command(name: str, argv: Sequence[str] | None = None) -> str:
    """The command that regenerates a benchmark's figures: ``python -m bench run NAME ARGS`` (ARGS:
    this run's own, by default)."""
    return " ".join(["OMP_NUM_THREADS=1 .venv/bin/python -m bench run", name, *(sys.argv[1:] if argv is None else argv)])


# ----------------------------------------------------------------------------- clocks and repeats


def timed(fn: Callable[[], object], clock: str = "cpu") -> float:
    """Seconds one call of ``fn`` takes: ``cpu`` = this process's CPU time (steadier than wall on a
    shared machine, for one-thread runs), ``wall`` = elapsed time."""
    now = time.process_time if clock == "cpu" else time.perf_counter
    start = now()
    fn()
    return now() - start


def wall_and_cpu(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one call of ``fn``."""
    start, cpu_start = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - start, time.process_time() - cpu_start


def interleaved(runs: dict[str, Callable[[], object]], repeats: int, measure: Callable = timed,
                warmup: bool = True) -> dict[str, list]:
    """Every run once per repeat, the order rotated each repeat (repeat r starts at run r), so
    background load and cache state hit every variant alike; ``measure(fn)`` gives one sample
    (default: CPU seconds). One warm-up call of each run first, not measured."""
    names = list(runs)
    if warmup:
        for name in names:
            runs[name]()
    samples: dict[str, list] = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            samples[name].append(measure(runs[name]))
    return samples


def medians(samples: dict[str, list[float]]) -> dict[str, float]:
    return {name: statistics.median(values) for name, values in samples.items()}


def paired_ratio(samples: dict[str, list[float]], name: str, base: str) -> float:
    """Median over repeats of ``name / base`` measured in the same repeat (paired: the load of that
    moment cancels)."""
    return statistics.median(a / b for a, b in zip(samples[name], samples[base]))


# ----------------------------------------------------------------------------- BENCHMARKS.md


def update_section(title: str, body: str, path: str = BENCHMARKS, regenerate: str | None = None) -> None:
    """Replace the ``## title`` section (up to the next ``## ``) with ``body``, or append it.
    ``regenerate`` (see ``command``) is written as the section's first line unless the body already
    names ``-m bench run NAME``."""
    named = re.search(r"-m bench run \S+", regenerate or "")
    if named and named.group(0) not in body:
        body = f"Regenerate: `{regenerate}`\n\n{body.strip()}"
    text = open(path, encoding="utf-8").read() if os.path.exists(path) else "# Benchmarks\n"
    block = f"## {title}\n\n{body.strip()}\n\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)
