"""Numbers and figures of docs/claims.md, read from the folders of `dynamtl compare --config
src/dynamtl/cli/claims/<claim>.toml --out <folder>`.

    python scripts/claims.py noise FOLDER [FOLDER…] --figure docs/claims-noise.png
    python scripts/claims.py drift FOLDER --figure docs/claims-drift.png
    python scripts/claims.py oracle FOLDER
    python scripts/claims.py ablation FOLDER [FOLDER…]

``noise``: per compared method, each task's λ at the end of training and averaged over the
last third of the steps (mean ± std over seeds), and in how many seeds the noise task's λ is
the lowest. ``drift``: per HydaLearn-like run of the drift benchmark, how its auxiliary share
w_aux / (w_main + w_aux) follows the share of helpful samples: the correlation with each
mini-batch's helpful fraction h, with the generator's drifting probability p(t), and the
least-squares coefficient of h − p(t) (the batch's composition beyond the drift) in
share ~ 1 + p(t) + (h − p(t)), with its t-statistic; mean ± std over seeds; its figure
shows every such run's share next to p(t) and, when the folder has them, the primary metric of
the Static auxiliary weights against HydaLearn's. ``oracle``: what a weighting that knew the
generator's relevance would get, with the comparison's benchmark, seeds and training settings
(Adam, no shuffling, the model selected on validation main MAE): a plain training loop with the
auxiliary weight a·2p(t) (following the drift, mean a), a·2h (the batch's helpful share),
a·2(1 − p(t)) (against the drift) and a (static, to check the loop against ``compare``'s Static
rows), for a = 1, 2; test main MAE, mean ± std over seeds.
``ablation``: per dynamic method of an auxiliary comparison, the first primary task's test
metric (mean ± std over seeds), its paired difference with single-task learning and with the
method's matched controls (`.static`, `.equal-lr`) seed by seed (mean ± std, and in how many
seeds the method is ahead), and each task's final λ: one markdown row per method.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

import torch

from dynamtl.registry import benchmark
from dynamtl.report.records import taken_steps

NOISE = "noise"


def steps(run_dir: Path) -> list[dict]:
    """The records of the steps taken (not skipped), each with every task's weight; damaged
    lines and incomplete records named and left out."""
    return taken_steps(run_dir / "steps.jsonl")


def weights(rows: list[dict]) -> dict[str, torch.Tensor]:
    tasks = [k.removeprefix("weight/") for k in rows[0] if k.startswith("weight/")]
    return {t: torch.tensor([r[f"weight/{t}"] for r in rows], dtype=torch.float64) for t in tasks}


def dynamic_runs(folder: Path) -> dict[str, list[Path]]:
    """Method -> its seed folders, for runs whose weights change (no stl, no Static, no control)."""
    out: dict[str, list[Path]] = {}
    for method in sorted(p for p in (folder / "runs").iterdir() if p.is_dir()):
        seeds = sorted(p for p in method.iterdir() if (p / "results.json").is_file())
        if method.name == "stl" or not seeds:
            continue
        w = weights(steps(seeds[0]))
        if all(bool((v == v[0]).all()) for v in w.values()):
            continue
        out[method.name] = seeds
    return out


def _ms(values: list[float], digits: int = 3) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.fmean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def noise(folders: list[Path], figure: Path | None) -> None:
    panels = []
    for folder in folders:
        mode = json.loads((folder / "comparison.json").read_text())["config"]["mode"]
        for method, seeds in dynamic_runs(folder).items():
            per_seed = [weights(steps(s)) for s in seeds]
            tasks = list(per_seed[0])
            final = {t: [float(w[t][-1]) for w in per_seed] for t in tasks}
            third = {t: [float(w[t][-len(w[t]) // 3 :].mean()) for w in per_seed] for t in tasks}
            lowest_final = sum(min(tasks, key=lambda t: w[t][-1]) == NOISE for w in per_seed)
            lowest_third = sum(min(tasks, key=lambda t: w[t][-len(w[t]) // 3 :].mean()) == NOISE for w in per_seed)
            print(f"{mode:10s} {method:22s} seeds {len(seeds)}")
            print("   final λ:       " + ", ".join(f"{t} {_ms(final[t])}" for t in tasks))
            print("   last-third λ:  " + ", ".join(f"{t} {_ms(third[t])}" for t in tasks))
            print(f"   noise lowest:  final {lowest_final}/{len(seeds)}, last third {lowest_third}/{len(seeds)}")
            panels.append((f"{method} ({mode})", per_seed))
    if figure is not None:
        _draw_noise(panels, figure)


def _primary_metric(run_dir: Path) -> float:
    """The test value of the first primary task's first metric, signed so that higher is better."""
    result = json.loads((run_dir / "results.json").read_text())
    task = result["primary"][0]
    metric = result["metrics"][task][0]
    value = float(result["test"][task][metric["name"]])
    return value if metric["higher_is_better"] else -value


def ablation(folders: list[Path]) -> None:
    print("| folder | method | primary test metric | − stl | ahead of stl | − .static | ahead of .static "
          "| − .equal-lr | final λ |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for folder in folders:
        for method, seeds in dynamic_runs(folder).items():
            if "." in method:
                continue
            names = [s.name for s in seeds]
            own = [_primary_metric(s) for s in seeds]
            cells = [f"{statistics.fmean(own):.4f} ± {statistics.stdev(own):.4f}" if len(own) > 1 else f"{own[0]:.4f}"]
            for other in ("stl", f"{method}.static", f"{method}.equal-lr"):
                paired = [(a, _primary_metric(folder / "runs" / other / n)) for a, n in zip(own, names)
                          if (folder / "runs" / other / n / "results.json").is_file()]
                if not paired:
                    cells += ["–", "–"] if other != f"{method}.equal-lr" else ["–"]
                    continue
                diffs = [100 * (a - b) for a, b in paired]
                cells.append(_ms(diffs, 2) + " pt")
                if other != f"{method}.equal-lr":
                    cells.append(f"{sum(d > 0 for d in diffs)}/{len(diffs)}")
            final = {t: [float(weights(steps(s))[t][-1]) for s in seeds] for t in weights(steps(seeds[0]))}
            lam = ", ".join(f"{t} {_ms(v)}" for t, v in final.items())
            print(f"| {folder.name} | {method} | " + " | ".join(cells) + f" | {lam} |")


def _draw_noise(panels, figure: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.2), squeeze=False)
    colours = {"label": "tab:blue", "group": "tab:green", NOISE: "tab:red"}
    for ax, (title, per_seed) in zip(axes[0], panels):
        for task in per_seed[0]:
            stacked = torch.stack([w[task] for w in per_seed])
            steps_axis = torch.arange(1, stacked.shape[1] + 1)
            mean = stacked.mean(0)
            ax.plot(steps_axis, mean, color=colours.get(task), label=task)
            ax.fill_between(steps_axis, stacked.min(0).values, stacked.max(0).values, color=colours.get(task),
                            alpha=0.2, linewidth=0)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step")
    axes[0][0].set_ylabel("λ (mean of seeds; band: min–max)")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    figure.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(figure, dpi=110)
    print(f"figure: {figure}")


def _drift_series(run_dir: Path) -> dict[str, torch.Tensor]:
    config = json.loads((run_dir / "config.json").read_text())
    bench = benchmark("drift", config["benchmark_options"])
    helpful = bench.helpful(config["seed"], "train", config["limit"]).double()
    n, size = len(helpful), config["batch_size"]
    rows = steps(run_dir)
    w = weights(rows)
    share = w["aux"] / (w["main"] + w["aux"])
    starts = torch.tensor([(r["batch"] - 1) * size for r in rows])
    frac = torch.stack([helpful[s : s + size].mean() for s in starts.tolist()])
    centre = (starts + torch.clamp(torch.full_like(starts, size), max=n - starts) / 2) / n
    p = bench.helpful_share(centre.double())
    return {
        "share": share,
        "helpful": frac,
        "p": p,
        "step": torch.tensor([r["step"] for r in rows]),
        "main_weight": w["main"],
    }


def _regression(series: dict[str, torch.Tensor]) -> tuple[float, float, float, float]:
    y, h, p = series["share"], series["helpful"], series["p"]
    corr_h = float(torch.corrcoef(torch.stack([y, h]))[0, 1])
    corr_p = float(torch.corrcoef(torch.stack([y, p]))[0, 1])
    x = torch.stack([torch.ones_like(p), p, h - p], 1)
    beta = torch.linalg.lstsq(x, y.unsqueeze(1)).solution.squeeze(1)
    residual = y - x @ beta
    sigma2 = float(residual @ residual) / (len(y) - 3)
    cov = sigma2 * torch.linalg.inv(x.T @ x)
    return corr_h, corr_p, float(beta[2]), float(beta[2] / math.sqrt(float(cov[2, 2])))


def drift(folder: Path, figure: Path | None) -> None:
    shown = {}
    for method, seeds in dynamic_runs(folder).items():
        series = [_drift_series(s) for s in seeds]
        stats = [_regression(s) for s in series]
        corr_h, corr_p, coef, t = (list(v) for v in zip(*stats))
        mean_share = [float(s["share"].mean()) for s in series]
        quarters = [
            [float(s["share"][(s["p"] >= q / 4) & (s["p"] < (q + 1) / 4 + (q == 3))].mean()) for s in series]
            for q in range(4)
        ]
        main_off = [float((s["main_weight"] == 0).double().mean()) for s in series]
        print(
            f"{method:22s} seeds {len(seeds)}: mean aux share {_ms(mean_share)}; corr(share, batch helpful) "
            f"{_ms(corr_h)}; corr(share, p(t)) {_ms(corr_p)}; coefficient of h − p(t) {_ms(coef)} "
            f"(t = {_ms(t, 1)})"
        )
        print(
            f"{'':22s} mean aux share for p(t) in [0, ¼), [¼, ½), [½, ¾), [¾, 1]: "
            + ", ".join(_ms(q) for q in quarters)
            + f"; main weight 0 in {_ms(main_off)} of the steps"
        )
        shown[method] = series[0]
    if figure is not None:
        _draw_drift(shown, _static_curve(folder), figure)


def _static_curve(folder: Path) -> dict[str, tuple[float, float]]:
    """Row name -> (mean, std) of the primary metric, from the comparison's table.csv: the
    Static auxiliary weights (``static-aux<w>``, ``equal`` = 1) and the dynamic rows."""
    import csv

    rows = list(csv.DictReader((folder / "table.csv").open()))
    metric = next(k for k in rows[0] if k.endswith(" mean") and "/" in k)
    return {r["method"]: (float(r[metric]), float(r[metric.replace(" mean", " std")] or 0.0)) for r in rows}


def _draw_drift(shown: dict[str, dict[str, torch.Tensor]], table: dict[str, tuple[float, float]], figure: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    statics = sorted(
        (1.0 if m == "equal" else float(m.removeprefix("static-aux")), v)
        for m, v in table.items()
        if m == "equal" or m.startswith("static-aux")
    )
    fig, axes = plt.subplots(len(shown) + 1, 1, figsize=(8, 2.6 * (len(shown) + 1)), squeeze=False)
    ax = axes[0, 0]
    ax.errorbar(
        [w for w, _ in statics],
        [v[0] for _, v in statics],
        [v[1] for _, v in statics],
        color="black",
        marker="o",
        capsize=3,
        label="Static, auxiliary weight w (main 1)",
    )
    for i, method in enumerate(shown):
        mean, std = table[method]
        ax.axhline(mean, color=f"C{i}", lw=1.2, label=f"{method} ({mean:.3f} ± {std:.3f})")
    ax.set_xlabel("static auxiliary weight w")
    ax.set_ylabel("test main MAE (mean ± std)")
    ax.set_title("primary metric: Static weights against HydaLearn", fontsize=9)
    ax.legend(fontsize=7)
    for ax, (method, s) in zip(axes[1:, 0], shown.items()):
        last = s["step"] > s["step"].max() - 2 * int((s["step"] <= s["step"].max()).sum() / 10)
        ax.plot(s["step"][last], s["helpful"][last], color="tab:gray", lw=0.8, label="helpful share of the batch")
        ax.plot(s["step"][last], s["p"][last], color="black", lw=1.2, label="p(t), the generator's relevance")
        ax.plot(s["step"][last], s["share"][last], color="tab:red", lw=1.0, label="w_aux / (w_main + w_aux)")
        ax.set_title(f"{method}, seed 0, last two tenths of training", fontsize=9)
        ax.set_ylim(-0.05, 1.05)
    axes[1, 0].legend(fontsize=7, loc="upper right")
    axes[-1, 0].set_xlabel("step")
    fig.tight_layout()
    figure.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(figure, dpi=110)
    print(f"figure: {figure}")


ORACLE_SCHEDULES = {
    "static a": lambda a, p, h: a,
    "a·2p(t)": lambda a, p, h: 2 * a * p,
    "a·2h": lambda a, p, h: 2 * a * h,
    "a·2(1−p(t))": lambda a, p, h: 2 * a * (1 - p),
}


def _oracle_run(folder: Path, seed: int, schedule, a: float) -> float:
    """Test main MAE of the model selected on validation main MAE, trained with the auxiliary
    weight schedule(a, p(t), h) per batch (main weight 1)."""
    import torch.nn.functional as F

    config = json.loads((folder / "comparison.json").read_text())["config"]
    bench = benchmark("drift", config.get("benchmark_options") or {})
    data = bench.splits(Path("."), seed, config.get("limit"))
    helpful = bench.helpful(seed, "train", config.get("limit")).double()
    defaults = bench.defaults
    size, epochs = config.get("batch_size") or defaults.batch_size, config.get("epochs") or defaults.epochs
    torch.manual_seed(seed)
    model = bench.model({"main": 1, "aux": 1})
    optimizer = torch.optim.Adam(model.parameters(), lr=config.get("lr") or defaults.lr)
    x, main, aux = data.train.inputs, data.train.targets["main"], data.train.targets["aux"]
    n, best = len(x), (math.inf, math.inf)
    for _ in range(epochs):
        model.train()
        for start in range(0, n, size):
            end = min(start + size, n)
            p = float(bench.helpful_share(torch.tensor((start + end) / 2 / n)))
            weight = schedule(a, p, float(helpful[start:end].mean()))
            out = model(x[start:end])
            loss = F.mse_loss(out["main"], main[start:end]) + weight * F.mse_loss(out["aux"], aux[start:end])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            val = float((model(data.val.inputs)["main"] - data.val.targets["main"]).abs().mean())
            if val < best[0]:
                best = (val, float((model(data.test.inputs)["main"] - data.test.targets["main"]).abs().mean()))
    return best[1]


def oracle(folder: Path) -> None:
    seeds = json.loads((folder / "comparison.json").read_text())["seeds"]
    torch.set_num_threads(1)
    alone = [_oracle_run(folder, s, ORACLE_SCHEDULES["static a"], 0.0) for s in seeds]
    print(f"weight 0 (single-task): test main MAE {_ms(alone, 4)}")
    for a in (1.0, 2.0):
        for label, schedule in ORACLE_SCHEDULES.items():
            maes = [_oracle_run(folder, s, schedule, a) for s in seeds]
            each = " / ".join(f"{m:.4f}" for m in maes)
            print(f"a = {a:g}, auxiliary weight {label:12s}: test main MAE {_ms(maes, 4)} (seeds: {each})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("claim", choices=["noise", "drift", "oracle", "ablation"])
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--figure", type=Path)
    args = parser.parse_args()
    if args.claim == "noise":
        noise(args.folders, args.figure)
    elif args.claim == "oracle":
        oracle(args.folders[0])
    elif args.claim == "ablation":
        ablation(args.folders)
    else:
        drift(args.folders[0], args.figure)


if __name__ == "__main__":
    main()
