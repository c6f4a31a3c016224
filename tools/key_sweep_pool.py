"""Pool several ``tools/key_sweep.py`` outputs (several trainings' benchmarks) into one choice of decoder settings.

    python tools/key_sweep.py BENCH --lam 0.5 0.75 1 --blank-offset 1 1.5 2 > sweep_N.txt     # per training
    python tools/key_sweep_pool.py sweep_*.txt --lam 0.5 0.75 1 --blank-offset 1 1.5 2        # same grid

Reads key_sweep's per-user lines (``user U JOB (chose C): before B, after A0 A1 ...``: A0 as calibrated, then one
CER per (lam, blank offset) setting in key_sweep's grid order, centre weight and no-press bias at one value each)
and, per benchmark job, scores every pair (setting for profiles whose calibration kept the base model, setting for
fine-tuned profiles) by the mean per-user reduction of the generic CER over every user of every training, the way
``KeyFitConfig.for_strategy`` gives the two kinds of profile their own settings. SIMULATED data; choose on the
tuning users (``--first-user 2000`` benchmarks), report on others.
"""

from __future__ import annotations

import argparse
import itertools
import re
import statistics
from pathlib import Path

from emgkey.edge_runtime.keyproto import KeyFitConfig

LINE = re.compile(r"user (\d+) (\w+) \(chose (\w+)\): before ([\d.]+), after (.*)")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sweeps", nargs="+", type=Path)
    p.add_argument("--lam", type=float, nargs="+", required=True, help="as given to key_sweep")
    p.add_argument("--blank-offset", type=float, nargs="+", required=True, help="as given to key_sweep")
    fit = KeyFitConfig()
    shipped = [fit.lam, fit.blank_offset, fit.lam_finetuned, fit.blank_offset_finetuned]
    p.add_argument("--shipped", type=float, nargs=4, default=shipped,
                   metavar=("LAM_BASE", "OFFSET_BASE", "LAM_FT", "OFFSET_FT"),
                   help="the settings to compare with (default: KeyFitConfig's)")  # fmt: skip
    p.add_argument("--top", type=int, default=5)
    a = p.parse_args(argv)
    grid = list(itertools.product(a.lam, a.blank_offset))  # key_sweep's order
    rows = []  # (sweep, job, chosen, generic CER, [CER as calibrated, CER per setting])
    for f in a.sweeps:
        for line in f.read_text().splitlines():
            m = LINE.match(line)
            if m:
                cers = [float(x) for x in m[5].split()]
                assert len(cers) == len(grid) + 1, f"{f}: {len(cers) - 1} settings, the grid has {len(grid)}"
                rows.append((f.stem, m[2], m[3], float(m[4]), cers))
    assert rows, "no per-user lines found"

    def red(r: tuple, k: int) -> float:
        return 1.0 - r[4][k] / r[3]

    def col(r: tuple, base: tuple[float, float], ft: tuple[float, float]) -> int:
        return 1 + grid.index(ft if r[2] == "finetune" else base)

    shipped = (tuple(a.shipped[:2]), tuple(a.shipped[2:]))
    for s in shipped:
        assert s in grid, f"--shipped setting {s} is not in the grid"
    print(f"{len(rows)} user-trainings from {len(a.sweeps)} sweeps; setting = (lam, blank offset)")
    for job in sorted({r[1] for r in rows}, key=lambda j: (j != "stats", j)):
        rs = [r for r in rows if r[1] == job]
        scored = sorted(
            ((statistics.fmean(red(r, col(r, b, f)) for r in rs), b, f) for b in grid for f in grid), reverse=True
        )
        calibrated = statistics.fmean(red(r, 0) for r in rs)
        print(f"\n{job} job, {len(rs)} users x trainings; as calibrated {100 * calibrated:.2f} %")
        for v, b, f in scored[: a.top]:
            print(f"  base-model profiles {b}, fine-tuned profiles {f}: {100 * v:.2f} %")
        v = statistics.fmean(red(r, col(r, *shipped)) for r in rs)
        print(f"  shipped {shipped[0]} / {shipped[1]}: {100 * v:.2f} %")
        best = scored[0]
        for name in sorted({r[0] for r in rs}):
            mine = [r for r in rs if r[0] == name]
            x0 = statistics.fmean(red(r, col(r, *shipped)) for r in mine)
            x1 = statistics.fmean(red(r, col(r, best[1], best[2])) for r in mine)
            print(f"    {name}: shipped {100 * x0:.1f} -> best {100 * x1:.1f}")


if __name__ == "__main__":
    main()
