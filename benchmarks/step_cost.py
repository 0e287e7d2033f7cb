"""Cost of one ``MultiTask.step`` per weighting, as a ratio to Equal measured in the same run.

Time: every method gets its own copy of the model (same initial weights) and optimizer
(SGD, lr 0.01, momentum 0.9, weight decay 1e-4); after ``--warmup`` steps each, the methods
take their timed steps round-robin, one step each per round, so that machine noise falls
on all of them alike. A step is the whole ``MultiTask.step(batch, meta_batch)``: forward,
weighting, aggregation, backward and optimizer step. Batches cycle through a small pool of
random batches; the meta batch is a second random batch of the same shape. torch runs
``--threads`` intra-op threads (default 1). Other processes on the cores skew every
figure (two intra-op threads that must wait for a shared core slow down far more than in
proportion), so the 1-minute load average is printed before and after, and the process
CPU time of a step is reported beside its wall time: at one thread it is what the step
itself computed, and moves far less with the machine's load than wall time does.
``--repeats N`` repeats the whole timed run (fresh models) and prints the median ratio
and the range over the repeats.

Methods: every weighting and aggregation of the registry (``dynamtl list``) at its default
options, under its class name, so a newly registered method is timed without editing this
file; the variants in ``VARIANTS`` add other settings and compositions.

Passes: the same round-robin also times the model's passes on a training batch, a forward
pass with a graph (F), one without a graph at other parameters through
``torch.func.functional_call`` (F₀, as the look-ahead evaluations run), and a backward
pass (B = forward-and-backward minus F), in CPU time. For the methods whose passes are known
(``PASSES``) "passes x Equal" is (f·F + f₀·F₀ + b·B) / (F + B): the ratio the step would have
if it were nothing but its passes; the rest of its "CPU x Equal" is overhead.

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

``--profile METHOD`` prints the operators of that method's step by their own CPU time
(``torch.profiler``), to see what a step is made of beyond its passes.

Run from the repository root::

    python benchmarks/step_cost.py                # both models, every method, 1 thread
    python benchmarks/step_cost.py --models cnn --methods Equal,AutoLambda --markdown
    python benchmarks/step_cost.py --models cnn --methods Equal,AutoLambda --profile AutoLambda
"""

from __future__ import annotations

import argparse
import functools
import gc
import multiprocessing
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from models import MODELS, TASKS, batch, tasks

import dynamtl as dm
from dynamtl.registry import AGGREGATIONS, WEIGHTINGS, MethodContext
from dynamtl.registry import Method as Entry

Method = Callable[[], tuple[dm.Weighting, dm.Aggregation]]


def _weighting(factory: Callable[[], dm.Weighting]) -> Method:
    return lambda: (factory(), dm.Sum())


def _aggregation(factory: Callable[[], dm.Aggregation]) -> Method:
    return lambda: (dm.Equal(), factory())


# options a registered method cannot do without (its entry has no default for them)
REQUIRED_OPTIONS: dict[str, dict[str, object]] = {"static": {"weights": dict.fromkeys(TASKS, 1.0)}}


def _registered(entry: Entry) -> Method:
    """A registry entry at its default options, the other half Equal or Sum. A method that
    weighs auxiliary tasks gets task "a" as its primary task; the others train all tasks."""
    auxiliary = entry.auxiliary_only
    context = MethodContext(TASKS, ("a",) if auxiliary else TASKS, auxiliary, seed=0)
    options = entry.parse_options(REQUIRED_OPTIONS.get(entry.name, {}))
    build = functools.partial(entry.build, context, options)
    return _aggregation(build) if entry.kind == "aggregation" else _weighting(build)  # type: ignore[arg-type]


def _name(entry: Entry) -> str:
    return entry.factory.__name__


# settings and compositions beyond the registered methods at their defaults; a name that is
# also a registered class's name replaces that entry (HydaLearn: main task "a" only)
VARIANTS: dict[str, Method] = {
    "AutoLambda-lagged": _weighting(lambda: dm.AutoLambda(order="lagged")),
    "AutoLambda-exact": _weighting(lambda: dm.AutoLambda(hypergradient="exact")),
    "AutoLambda-forward": _weighting(lambda: dm.AutoLambda(difference="forward")),
    "AutoLambda-lagged-forward": _weighting(lambda: dm.AutoLambda(order="lagged", difference="forward")),
    "HydaLearn": _weighting(lambda: dm.HydaLearn(main="a", gain="lookahead")),
    "HydaLearn-first_order": _weighting(lambda: dm.HydaLearn(main="a", gain="first_order")),
    "MGDA-UB": _aggregation(lambda: dm.MGDA(upper_bound=True)),
    "UPGrad-representation": _aggregation(lambda: dm.OnRepresentation(dm.UPGrad())),
    "GradVac-layer": _aggregation(lambda: dm.GradVac(granularity="layer")),
    "CRMOGM-UPGrad": _aggregation(lambda: dm.CRMOGM(dm.UPGrad())),
    "IMTL": lambda: (dm.IMTLL(), dm.IMTLG()),
    "AutoLambda+CAGrad": lambda: (dm.AutoLambda(), dm.CAGrad()),
}
# every registered weighting and aggregation (not stl, a run mode, nor Sum, which is Equal's
# step), in the registry's order, then the variants
REGISTERED: dict[str, Entry] = {
    _name(e): e for e in [*WEIGHTINGS.values(), *AGGREGATIONS.values()] if not e.single_task and e.name != "sum"
}
METHODS: dict[str, Method] = {**{n: _registered(e) for n, e in REGISTERED.items()}, **VARIANTS}
REPRESENTATION = "trunk"  # the shared representation of both models, for the aggregations that need it
LEGEND = (
    "registered methods by class name, at their defaults, aggregations with Equal weighting and weightings with "
    "Sum; GCS, OLAux, HydaLearn: main task 'a'; AutoLambda: order='lookahead' (the paper's), finite-difference "
    "hypergradient; -lagged: order='lagged'; -exact: hypergradient='exact'; -forward: difference='forward'; "
    "HydaLearn: gain='lookahead'; -first_order: gain='first_order'; MGDA-UB: upper_bound=True; "
    "UPGrad-representation: OnRepresentation(UPGrad()); GradVac-layer: granularity='layer'; "
    "CRMOGM: CRMOGM(MGDA()); CRMOGM-UPGrad: CRMOGM(UPGrad()); IMTL: IMTL-L weighting with IMTL-G; "
    "SDMGrad and MoDo read 2 more training batches of the pool per step"
)


def _count(passes: str) -> int | None:
    """The number of extra passes a registry entry states (its first word), for T tasks."""
    return {"0": 0, "T−1": len(TASKS) - 1, "T": len(TASKS)}.get(passes.split(" ")[0])


def _passes(entry: Entry) -> tuple[int, int, int] | None:
    """(forward with graph, forward without, backward) per step from the entry's facts, when
    it states only extra backward passes."""
    backward = _count(entry.extra_backward)
    return None if entry.extra_forward != "0" or backward is None else (1, 0, 1 + backward)


# (forward passes with a graph, forward passes without one, backward passes) per step, T = 3
# tasks; a per-task backward pass is counted as one backward pass. From the registry's facts,
# and by hand for the meta-learning and look-ahead settings
PASSES: dict[str, tuple[int, int, int]] = {
    **{n: p for n, e in REGISTERED.items() if (p := _passes(e)) is not None},
    # two extra batches: forward with the parameters (functional_call keeps the graph) and
    # one backward per task each
    **dict.fromkeys(["SDMGrad", "MoDo"], (3, 0, 9)),
    "AutoLambda": (2, 2, 3),  # training and meta forward; θ ± εu; virtual, meta and real backward
    "AutoLambda-lagged": (2, 2, 2),  # training and meta forward; θ ± εu; real and meta backward
    "AutoLambda-forward": (2, 1, 3),
    "AutoLambda-lagged-forward": (2, 1, 2),
    "HydaLearn": (1, 3, 3),  # training forward; one look-ahead per task; one backward per task
    "HydaLearn-first_order": (1, 0, 3),
    **dict.fromkeys(["GradVac-layer", "CRMOGM-UPGrad", "IMTL"], (1, 0, 3)),
    "AutoLambda+CAGrad": (2, 2, 5),
}
OPTIMIZER = "SGD(lr=0.01, momentum=0.9, weight_decay=1e-4)"
POOL = 4  # distinct training batches (and as many meta batches) cycled through
CLEAR_REFS = Path("/proc/self/clear_refs")
MEMORY_STEPS = 3  # steps over which the memory probe takes the peak
# glibc: serve every allocation >= 64 KiB by mmap and give it back at once, instead of the
# adaptive threshold that keeps freed tensors in the heap (noisy, order-dependent figures)
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}
DESCRIPTIONS = {"mlp": "MLP 128-256-256, 3 heads, batch 256", "cnn": "4-conv CNN on 28x28, 3 heads, batch 64"}
# the pass probes timed among the methods: forward with graph, forward and backward, and a
# forward without graph at other parameters (functional_call), as the look-ahead runs them
PROBES = ("F", "F+B", "F0")

Batch = tuple[torch.Tensor, dict[str, torch.Tensor]]


@dataclass
class Row:
    method: str
    median_ms: float
    ratios: list[float]  # wall-time ratio to the reference, one per repeat
    cpu_ratios: list[float]  # the same for process CPU time
    passes: float | None
    peak_mib: float | None
    peak_ratio: float | None


def setup(kind: str, method: str) -> tuple[dm.MultiTask, list[Batch], list[Batch]]:
    """A model (seed 0, so every method starts from the same weights), its optimizer and
    ``MultiTask``, and the pools of training and meta batches."""
    torch.manual_seed(0)
    model = MODELS[kind]()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    weighting, aggregation = METHODS[method]()
    representation = REPRESENTATION if aggregation.needs_representation else None
    mtl = dm.MultiTask(
        model, tasks(), optimizer, weighting=weighting, aggregation=aggregation, representation=representation
    )
    generator = torch.Generator().manual_seed(1)
    train = [batch(kind, generator) for _ in range(POOL)]
    meta = [batch(kind, generator) for _ in range(POOL)]
    return mtl, train, meta


def _step(mtl: dm.MultiTask, train: list[Batch], meta: list[Batch], i: int) -> dm.StepInfo:
    """Step ``i``: training and meta batch ``i`` of the pools, and for aggregations that read
    several training batches per step the next ones of the pool."""
    extra = [train[(i + k) % POOL] for k in range(1, mtl.aggregation.batches_per_step)]
    return mtl.step(train[i % POOL], meta_batch=meta[i % POOL], extra_batches=extra)


def _stepper(kind: str, method: str) -> Callable[[int], object]:
    mtl, train, meta = setup(kind, method)
    return lambda i: _step(mtl, train, meta, i)


def _probe(kind: str, probe: str) -> Callable[[int], object]:
    """One of ``PROBES`` on the benchmark's model and training batches, through ``Objective``."""
    mtl, train, _ = setup(kind, "Equal")
    objective, params = mtl.objective, list(mtl.objective.params.values())
    if probe == "F":
        return lambda i: objective.losses(train[i % POOL]).sum()
    if probe == "F+B":
        return lambda i: torch.autograd.grad(objective.losses(train[i % POOL]).sum(), params)

    def no_graph(i: int) -> object:
        with torch.no_grad():
            return objective.losses(train[i % POOL], {n: p.detach() for n, p in objective.params.items()})

    return no_graph


def time_steps(
    kind: str, methods: Sequence[str], steps: int, warmup: int
) -> dict[str, tuple[list[float], list[float]]]:
    """Wall and CPU seconds of each timed step of every method and pass probe, all
    interleaved round-robin."""
    runs = {**{m: _stepper(kind, m) for m in methods}, **{p: _probe(kind, p) for p in PROBES}}
    seconds: dict[str, tuple[list[float], list[float]]] = {m: ([], []) for m in runs}
    for i in range(warmup + steps):
        for name, run in runs.items():
            wall, cpu = time.perf_counter(), time.process_time()
            run(i)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            if i >= warmup:
                seconds[name][0].append(wall)
                seconds[name][1].append(cpu)
    return seconds


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith(field + ":"))
    return int(line.split()[1])


def peak_step_memory(kind: str, method: str, warmup: int, threads: int) -> float | None:
    """MiB of resident memory a step adds at its peak, over the state after ``warmup`` steps
    (run this in a fresh process)."""
    if not CLEAR_REFS.exists():
        return None
    torch.set_num_threads(threads)
    mtl, train, meta = setup(kind, method)
    for i in range(warmup):
        _step(mtl, train, meta, i)
    gc.collect()
    before = _status_kib("VmRSS")
    CLEAR_REFS.write_text("5")  # resets VmHWM to the current resident set
    for i in range(warmup, warmup + MEMORY_STEPS):
        _step(mtl, train, meta, i)
    return (_status_kib("VmHWM") - before) / 1024


def measure(kind: str, methods: Sequence[str], reference: str, steps: int, warmup: int, repeats: int) -> list[Row]:
    """Median step time and peak step memory of every method, both as ratios to ``reference``,
    and the ratio of its passes alone."""
    ratios: dict[str, list[float]] = {m: [] for m in methods}
    cpu_ratios: dict[str, list[float]] = {m: [] for m in methods}
    medians: dict[str, list[float]] = {m: [] for m in methods}
    probes: dict[str, list[float]] = {p: [] for p in PROBES}  # CPU time, steadier than wall time
    for _ in range(repeats):
        seconds = time_steps(kind, methods, steps, warmup)
        wall = {m: statistics.median(w) for m, (w, _) in seconds.items()}
        cpu = {m: statistics.median(c) for m, (_, c) in seconds.items()}
        for m in methods:
            ratios[m].append(wall[m] / wall[reference])
            cpu_ratios[m].append(cpu[m] / cpu[reference])
        for m, values in medians.items():
            values.append(wall[m])
        for p, values in probes.items():
            values.append(cpu[p])
    median = {m: statistics.median(v) for m, v in [*medians.items(), *probes.items()]}
    forward, no_graph, backward = median["F"], median["F0"], median["F+B"] - median["F"]
    os.environ.update(MALLOC_ENV)  # read by the probes' fresh interpreters, not by this one
    # one fresh interpreter per method (maxtasksperchild=1, chunksize=1); probes measure
    # their own memory, not time, so they may share the cores
    spawn = multiprocessing.get_context("spawn")
    threads = torch.get_num_threads()
    with spawn.Pool(os.cpu_count() or 1, maxtasksperchild=1) as pool:
        found = pool.starmap(peak_step_memory, [(kind, m, max(warmup, 1), threads) for m in methods], chunksize=1)
    peaks = dict(zip(methods, found))
    base = peaks[reference]

    def passes(method: str) -> float | None:
        if method not in PASSES:
            return None
        f, f0, b = PASSES[method]
        return (f * forward + f0 * no_graph + b * backward) / (forward + backward)

    print(
        f"passes (median CPU ms): forward with graph F {1000 * forward:.2f}, without graph F0 {1000 * no_graph:.2f}, "
        f"backward B {1000 * backward:.2f}"
    )
    return [
        Row(
            m,
            1000 * median[m],
            ratios[m],
            cpu_ratios[m],
            passes(m),
            peaks[m],
            None if peaks[m] is None or not base else peaks[m] / base,
        )
        for m in methods
    ]


def profile(kind: str, method: str, steps: int, warmup: int, rows: int = 25) -> str:
    """The operators of ``steps`` steps of ``method`` by self CPU time (``torch.profiler``)."""
    step = _stepper(kind, method)
    for i in range(warmup):
        step(i)
    with torch.profiler.profile() as prof:
        for i in range(steps):
            step(warmup + i)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def _spread(values: list[float]) -> str:
    middle = f"{statistics.median(values):.2f}"
    return middle if len(values) == 1 else f"{middle} ({min(values):.2f}–{max(values):.2f})"


def table(rows: list[Row], markdown: bool, reference: str) -> str:
    header = (
        "method", "median ms", f"time x {reference}", f"CPU x {reference}", f"passes x {reference}",
        "peak MiB", f"memory x {reference}",
    )
    cells = [
        (
            r.method, f"{r.median_ms:.1f}", _spread(r.ratios), _spread(r.cpu_ratios), _optional(r.passes, ".2f"),
            _optional(r.peak_mib, ".1f"), _optional(r.peak_ratio, ".2f"),
        )
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
    parser.add_argument("--repeats", type=int, default=1, help="timed runs, each with fresh models (default 1)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--profile", metavar="METHOD", help="print the operator profile of METHOD's step too")
    parser.add_argument("--markdown", action="store_true", help="print Markdown tables (for the README)")
    args = parser.parse_args(argv)
    models = _names(args.models, list(MODELS), "models")
    methods = _names(args.methods, list(METHODS), "methods")
    if args.steps < 1 or args.warmup < 0 or args.repeats < 1 or args.threads < 1:
        raise SystemExit("--steps, --repeats and --threads must be >= 1 and --warmup >= 0")
    if args.profile is not None:
        _names(args.profile, list(METHODS), "method to profile")
    torch.set_num_threads(args.threads)
    reference = "Equal" if "Equal" in methods else methods[0]
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; optimizer {OPTIMIZER}; "
        f"meta batch: a second random batch; median of {args.steps} steps after {args.warmup} warm-up steps, "
        f"methods interleaved round-robin, {args.repeats} run(s): median ratio (range); "
        "peak MiB: resident memory a step adds, fresh process per method"
    )
    print(LEGEND)
    print(f"load average (1 min) at start: {_load()}")
    for kind in models:
        print(f"\n{'### ' if args.markdown else ''}{DESCRIPTIONS.get(kind, kind)}\n")
        rows = measure(kind, methods, reference, args.steps, args.warmup, args.repeats)
        print(table(rows, args.markdown, reference))
        if args.profile is not None:
            profiled = profile(kind, args.profile, args.steps, args.warmup)
            print(f"\nprofile of {args.profile}, {args.steps} steps:\n{profiled}")
    print(f"\nload average (1 min) at end: {_load()}")


if __name__ == "__main__":
    main()
