"""Cost of one ``MultiTask.step`` per weighting, as a ratio to Equal measured in the same run.

Time: every method gets its own copy of the model (same initial weights) and optimizer
(SGD, lr 0.01, momentum 0.9, weight decay 1e-4); after ``--warmup`` steps each, the methods
take their timed steps round-robin, one step each per round, so that machine noise falls
on all of them alike. A step is the whole ``MultiTask.step(batch, meta_batch)``: forward,
weighting, aggregation, backward and optimizer step. Batches cycle through a small pool of
random batches; the meta batch is a second random batch of the same shape. Other
processes on the cores skew every figure (two intra-op threads that must wait for a
shared core slow down far more than in proportion), so the 1-minute load average is
printed before and after: trust a run only when it stayed near this benchmark's own load.

Memory: ``tracemalloc`` cannot see torch's allocations and CPU torch keeps no allocator
statistics (the profiler's ``profile_memory`` lists allocations per op but gives no peak),
so the probe reads what the kernel sees, the resident set. Each method runs in a fresh
interpreter (no other method's tensors, pages or allocator state mixed in): it takes
``--warmup`` steps (at least one, so code pages, thread pools, optimizer and weighting
state are resident), records the resident set, resets the kernel's high-water mark
(``echo 5 > /proc/self/clear_refs``, Linux) and takes 3 more steps; the figure is the peak
resident set during them minus the resident set before them: the transient memory of a
step (activations, autograd graphs, per-task gradients, look-ahead parameters, perturbed
evaluations); what a method keeps between steps (momentum buffers, the lagged Auto-Lambda's
copy of θ) is in the baseline. The probes run with glibc's mmap threshold fixed at 64 KiB, so that freed
tensors go back to the kernel at once; glibc's adaptive threshold keeps them in the heap and
makes the figure depend on what ran before (±15 % between identical methods, measured).
Without ``/proc/self/clear_refs`` the memory column reads ``n/a``.

Run from the repository root::

    python benchmarks/step_cost.py                # both models, every method
    python benchmarks/step_cost.py --models cnn --methods Equal,AutoLambda --markdown
"""

from __future__ import annotations

import argparse
import gc
import itertools
import multiprocessing
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from models import MODELS, batch, tasks

import dynamtl as dm

Method = Callable[[], tuple[dm.Weighting, dm.Aggregation]]


def _weighting(factory: Callable[[], dm.Weighting]) -> Method:
    return lambda: (factory(), dm.Sum())


def _aggregation(factory: Callable[[], dm.Aggregation]) -> Method:
    return lambda: (dm.Equal(), factory())


METHODS: dict[str, Method] = {
    "Equal": _weighting(dm.Equal),
    "DWA": _weighting(dm.DWA),
    "Uncertainty": _weighting(dm.Uncertainty),
    "RLW": _weighting(dm.RLW),
    "FAMO": _weighting(dm.FAMO),
    "STCH": _weighting(dm.STCH),
    "GLS": _weighting(dm.GLS),
    "IMTLL": _weighting(dm.IMTLL),
    "DBMTL": _weighting(dm.DBMTL),
    "ExcessMTL": _weighting(dm.ExcessMTL),
    "GradNorm": _weighting(dm.GradNorm),
    "GCS": _weighting(lambda: dm.GCS(main="a")),
    "OLAux": _weighting(lambda: dm.OLAux(main="a")),
    "AutoLambda": _weighting(lambda: dm.AutoLambda(order="lookahead")),
    "AutoLambda-lagged": _weighting(lambda: dm.AutoLambda(order="lagged")),
    "AutoLambda-exact": _weighting(lambda: dm.AutoLambda(hypergradient="exact")),
    "AutoLambda-forward": _weighting(lambda: dm.AutoLambda(difference="forward")),
    "AutoLambda-lagged-forward": _weighting(lambda: dm.AutoLambda(order="lagged", difference="forward")),
    "HydaLearn": _weighting(lambda: dm.HydaLearn(main="a", gain="lookahead")),
    "HydaLearn-first_order": _weighting(lambda: dm.HydaLearn(main="a", gain="first_order")),
    "PCGrad": _aggregation(dm.PCGrad),
    "GradDrop": _aggregation(dm.GradDrop),
    "CAGrad": _aggregation(dm.CAGrad),
    "MGDA": _aggregation(dm.MGDA),
    "IMTLG": _aggregation(dm.IMTLG),
    "NashMTL": _aggregation(dm.NashMTL),
    "AlignedMTL": _aggregation(dm.AlignedMTL),
    "GradVac": _aggregation(dm.GradVac),
    "UPGrad": _aggregation(dm.UPGrad),
    "DualProj": _aggregation(dm.DualProj),
    "ConFIG": _aggregation(dm.ConFIG),
    "FairGrad": _aggregation(dm.FairGrad),
    "AutoLambda+CAGrad": lambda: (dm.AutoLambda(), dm.CAGrad()),
}
LEGEND = (
    "AutoLambda: order='lookahead' (the paper's), finite-difference hypergradient; -lagged: order='lagged'; "
    "-exact: hypergradient='exact'; -forward: difference='forward'; HydaLearn: main='a', gain='lookahead'; -first_order: gain='first_order'; "
    "GCS, OLAux: main='a'; aggregations (PCGrad ... FairGrad) with Equal weighting, defaults"
)
OPTIMIZER = "SGD(lr=0.01, momentum=0.9, weight_decay=1e-4)"
POOL = 4  # distinct training batches (and as many meta batches) cycled through
CLEAR_REFS = Path("/proc/self/clear_refs")
MEMORY_STEPS = 3  # steps over which the memory probe takes the peak
# glibc: serve every allocation >= 64 KiB by mmap and give it back at once, instead of the
# adaptive threshold that keeps freed tensors in the heap (noisy, order-dependent figures)
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}
DESCRIPTIONS = {"mlp": "MLP 128-256-256, 3 heads, batch 256", "cnn": "4-conv CNN on 28x28, 3 heads, batch 64"}

Batch = tuple[torch.Tensor, dict[str, torch.Tensor]]


@dataclass
class Row:
    method: str
    median_ms: float
    ratio: float
    peak_mib: float | None
    peak_ratio: float | None


def setup(kind: str, method: str) -> tuple[dm.MultiTask, list[Batch], list[Batch]]:
    """A model (seed 0, so every method starts from the same weights), its optimizer and
    ``MultiTask``, and the pools of training and meta batches."""
    torch.manual_seed(0)
    model = MODELS[kind]()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    weighting, aggregation = METHODS[method]()
    mtl = dm.MultiTask(model, tasks(), optimizer, weighting=weighting, aggregation=aggregation)
    generator = torch.Generator().manual_seed(1)
    train = [batch(kind, generator) for _ in range(POOL)]
    meta = [batch(kind, generator) for _ in range(POOL)]
    return mtl, train, meta


def time_steps(kind: str, methods: Sequence[str], steps: int, warmup: int) -> dict[str, list[float]]:
    """Seconds of each timed step of every method, the methods interleaved round-robin."""
    runs = {m: setup(kind, m) for m in methods}
    seconds: dict[str, list[float]] = {m: [] for m in methods}
    for i in range(warmup + steps):
        for method, (mtl, train, meta) in runs.items():
            start = time.perf_counter()
            mtl.step(train[i % POOL], meta_batch=meta[i % POOL])
            elapsed = time.perf_counter() - start
            if i >= warmup:
                seconds[method].append(elapsed)
    return seconds


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith(field + ":"))
    return int(line.split()[1])


def peak_step_memory(kind: str, method: str, warmup: int) -> float | None:
    """MiB of resident memory a step adds at its peak, over the state after ``warmup`` steps
    (run this in a fresh process)."""
    if not CLEAR_REFS.exists():
        return None
    mtl, train, meta = setup(kind, method)
    batches = ((train[i % POOL], meta[i % POOL]) for i in itertools.count())
    for _ in range(warmup):
        mtl.step(*next(batches))
    gc.collect()
    before = _status_kib("VmRSS")
    CLEAR_REFS.write_text("5")  # resets VmHWM to the current resident set
    for _ in range(MEMORY_STEPS):
        mtl.step(*next(batches))
    return (_status_kib("VmHWM") - before) / 1024


def measure(kind: str, methods: Sequence[str], reference: str, steps: int, warmup: int) -> list[Row]:
    """Median step time and peak step memory of every method, and both as ratios to ``reference``."""
    seconds = time_steps(kind, methods, steps, warmup)
    medians = {m: statistics.median(s) for m, s in seconds.items()}
    os.environ.update(MALLOC_ENV)  # read by the probes' fresh interpreters, not by this one
    # one fresh interpreter per method (maxtasksperchild=1, chunksize=1); probes measure
    # their own memory, not time, so they may share the cores
    spawn = multiprocessing.get_context("spawn")
    with spawn.Pool(os.cpu_count() or 1, maxtasksperchild=1) as pool:
        found = pool.starmap(peak_step_memory, [(kind, m, max(warmup, 1)) for m in methods], chunksize=1)
    peaks = dict(zip(methods, found))
    base = peaks[reference]
    return [
        Row(
            m,
            1000 * medians[m],
            medians[m] / medians[reference],
            peaks[m],
            None if peaks[m] is None or not base else peaks[m] / base,
        )
        for m in methods
    ]


def table(rows: list[Row], markdown: bool, reference: str) -> str:
    header = ("method", "median ms", f"time x {reference}", "peak MiB", f"memory x {reference}")
    cells = [
        (r.method, f"{r.median_ms:.1f}", f"{r.ratio:.2f}", _optional(r.peak_mib, ".1f"), _optional(r.peak_ratio, ".2f"))
        for r in rows
    ]
    if markdown:
        lines = [header, ("---", *["---:"] * (len(header) - 1)), *cells]
        return "\n".join("| " + " | ".join(line) + " |" for line in lines)
    widths = [max(len(line[c]) for line in [header, *cells]) for c in range(len(header))]
    return "\n".join(
        "  ".join(v.ljust(w) if c == 0 else v.rjust(w) for c, (v, w) in enumerate(zip(line, widths)))
        for line in [header, *cells]
    )


def _optional(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _names(text: str, known: Sequence[str], what: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise SystemExit(f"unknown or no {what} {unknown}: choose from {list(known)}")
    return names


def _load() -> str:
    """The 1-minute load average: other processes on the cores skew every figure."""
    return (
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (this benchmark adds up to "
        f"{torch.get_num_threads()}; more means other processes shared the cores)"
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {list(MODELS)}")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, of {list(METHODS)}")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per method (default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per method first (default 3)")
    parser.add_argument("--markdown", action="store_true", help="print Markdown tables (for the README)")
    args = parser.parse_args(argv)
    models = _names(args.models, list(MODELS), "models")
    methods = _names(args.methods, list(METHODS), "methods")
    if args.steps < 1 or args.warmup < 0:
        raise SystemExit("--steps must be >= 1 and --warmup >= 0")
    reference = "Equal" if "Equal" in methods else methods[0]
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; optimizer {OPTIMIZER}; "
        f"meta batch: a second random batch; median of {args.steps} steps after {args.warmup} warm-up steps, "
        "methods interleaved round-robin; peak MiB: resident memory a step adds, fresh process per method"
    )
    print(LEGEND)
    print(f"load average (1 min) at start: {_load()}")
    for kind in models:
        rows = measure(kind, methods, reference, args.steps, args.warmup)
        print(f"\n{'### ' if args.markdown else ''}{DESCRIPTIONS.get(kind, kind)}\n")
        print(table(rows, args.markdown, reference))
    print(f"\nload average (1 min) at end: {_load()}")


if __name__ == "__main__":
    main()
