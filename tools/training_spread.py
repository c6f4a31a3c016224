"""How much the calibration benchmark moves between trainings of one recipe (SIMULATED data).

    python tools/training_spread.py BENCH_DIR [BENCH_DIR ...] [--seconds 60] [--target 0.4]

Each BENCH_DIR is one ``calibration_bench`` run of one generic model (``calibration_models.sh`` with ``SEED=N``
trains the same recipe and data with another training seed). Prints a markdown table: per training its best
validation CER, generic CER on the held-out users and, per strategy, the mean per-user reduction of the generic
CER (the issue's measure) and the engines it ran; then the mean, standard deviation and range over trainings, and
per user the mean reduction over trainings with its spread, so the spread between trainings can be set beside the
spread between users.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any


def load(bench: Path) -> dict[str, Any]:
    path = bench / "calibration_bench.json" if bench.is_dir() else bench
    d = json.loads(path.read_text())
    assert len(d["settings"]["students"]) == 1, f"{path}: one generic model per benchmark run, please"
    return d


def per_user(d: dict[str, Any], seconds: float) -> dict[str, dict[int, float]]:
    """strategy -> user -> reduction of the generic CER (users whose calibration failed are left out)."""
    before = generic_cer(d, seconds)
    out: dict[str, dict[int, float]] = defaultdict(dict)
    for r in d["rows"]:
        if r["seconds"] == seconds and "after" in r and before.get(r["user"], 0) > 0:
            out[r["strategy"]][r["user"]] = 1.0 - r["after"]["cer"] / before[r["user"]]
    return out


def generic_cer(d: dict[str, Any], seconds: float) -> dict[int, float]:
    """user -> the generic model's CER on the evaluation session (recorded on one strategy's row per user)."""
    return {r["user"]: r["before"]["cer"] for r in d["rows"] if r["seconds"] == seconds and "before" in r}


def spread(xs: list[float]) -> str:
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{100 * statistics.fmean(xs):.1f} ± {100 * sd:.1f} ({100 * min(xs):.1f}-{100 * max(xs):.1f})"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bench", nargs="+", type=Path)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--target", type=float, default=0.4, help="reduction the issue asks for")
    a = p.parse_args(argv)

    runs = [(b, load(b)) for b in a.bench]
    order = ["stats", "finetune", "scratch"]  # cheapest first, as the benchmark runs them
    strategies = sorted(
        {s for _, d in runs for s in per_user(d, a.seconds)},
        key=lambda s: (order.index(s) if s in order else len(order), s),
    )
    head = ["training", "best val CER", "generic CER"] + [f"{s}, {a.seconds:g} s" for s in strategies]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    means: dict[str, list[float]] = defaultdict(list)
    users: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    generic = []
    for bench, d in runs:
        st = d["settings"]["students"][0]
        red = per_user(d, a.seconds)
        generic.append(statistics.fmean(generic_cer(d, a.seconds).values()))
        cells = [f"{st['name']} (`{bench.name}`)", f"{st.get('best_val_cer', float('nan')):.2f}", f"{generic[-1]:.1f}"]
        for s in strategies:
            xs = list(red[s].values())
            means[s].append(statistics.fmean(xs))
            for u, x in red[s].items():
                users[s][u].append(x)
            engines = sorted(
                {
                    r["after"]["precision"]
                    for r in d["rows"]
                    if r["seconds"] == a.seconds and r["strategy"] == s and "after" in r
                }
            )
            cells.append(f"{100 * means[s][-1]:.1f} % ({len(xs)} users, {'/'.join(engines)})")
        print("| " + " | ".join(cells) + " |")
    print(
        "| mean ± sd (range) | | "
        + f"{statistics.fmean(generic):.1f}"
        + "".join(
            f" | {spread(means[s])} %, {sum(m >= a.target for m in means[s])} of {len(means[s])} at target"
            for s in strategies
        )
        + " |"
    )
    print()
    print("Per user, mean reduction over the trainings ± its sd between trainings:")
    print()
    for s in strategies:
        cells = [
            f"{u}: {100 * statistics.fmean(x):.1f} ± {100 * (statistics.stdev(x) if len(x) > 1 else 0):.1f}"
            for u, x in sorted(users[s].items())
        ]
        user_means = [statistics.fmean(x) for x in users[s].values()]
        print(f"- {s}: " + ", ".join(cells) + f"; sd between users {100 * statistics.stdev(user_means):.1f}")


if __name__ == "__main__":
    main()
