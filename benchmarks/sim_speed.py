"""Simulator speed on one core: how many times faster than real time each device profile is generated.

    python -m emgkey.benchmarks.sim_speed --out runs/sim_speed.json [--minutes 2] [--repeats 3]

Thread pools are pinned to one thread *before* numpy loads (the variables are
read when BLAS initialises), so the figure is per core: a dataset run with
``--workers W`` scales about linearly on W free cores. Targets: 50x real time
for ``armband8``, 5x for ``emg2qwerty``, judged on CPU time (see ``measure``);
wall time is reported too. Timing is the best of ``--repeats`` runs of
``simulate_session`` (typing timeline, muscle activity, device front end);
writing files is not included.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from emgkey import __version__  # noqa: E402
from emgkey.atomic import atomic_write_text  # noqa: E402
from emgkey.profiles import PROFILES  # noqa: E402

TARGETS_X_REALTIME: dict[str, float] = {"armband8": 50.0, "emg2qwerty": 5.0}


def measure(profile_name: str, minutes: float, repeats: int, seed: int = 0) -> dict[str, Any]:
    """Best-of-``repeats`` wall and CPU time of one simulated session (users 0.., session 0).

    CPU time (``time.process_time``) of this single-threaded process is its
    time on one core, which stays meaningful on a shared machine where wall
    time also counts waiting for a core; on an idle core the two agree.
    """
    from emgkey.firmware_sim.simulate import simulate_session

    profile = PROFILES[profile_name]
    simulate_session(profile, 0, 0, 0.1, seed)  # warm caches (filter design, corpus) outside the timing
    wall, cpu = [], []
    for r in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        sim = simulate_session(profile, r, 0, minutes, seed)
        cpu.append(time.process_time() - c)
        wall.append(time.perf_counter() - w)
    target = TARGETS_X_REALTIME.get(profile_name)
    x_cpu = minutes * 60.0 / min(cpu)
    return {
        "profile": profile_name,
        "minutes": minutes,
        "samples": sim.n_samples,
        "wall_s": wall,
        "cpu_s": cpu,
        "x_realtime": x_cpu,
        "x_realtime_wall": minutes * 60.0 / min(wall),
        "target_x_realtime": target,
        "meets_target": None if target is None else x_cpu >= target,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--minutes", type=float, default=2.0, help="simulated minutes per run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--profiles", default=",".join(TARGETS_X_REALTIME), help="comma-separated profile names")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.profiles.split(",") if n.strip()]
    unknown = [n for n in names if n not in PROFILES]
    if unknown:
        parser.error(f"unknown profile(s) {unknown}; known: {sorted(PROFILES)}")
    results = [measure(n, args.minutes, args.repeats) for n in names]
    report = {
        "benchmark": "sim_speed",
        "note": "SIMULATED DATA generation speed, one thread",
        "emgkey_version": __version__,
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        "processor": platform.processor() or platform.uname().machine,
        "cpu_count": os.cpu_count(),
        "load_avg_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "threads": 1,
        "results": results,
    }
    atomic_write_text(Path(args.out), json.dumps(report, indent=2) + "\n")
    print(f"{'profile':<12} {'minutes':>7} {'x real time (cpu)':>17} {'(wall)':>8} {'target':>7}  ok")
    for r in results:
        target = "-" if r["target_x_realtime"] is None else f"{r['target_x_realtime']:.0f}x"
        ok = {True: "yes", False: "NO", None: "-"}[r["meets_target"]]
        print(
            f"{r['profile']:<12} {r['minutes']:>7.1f} {r['x_realtime']:>16.1f}x {r['x_realtime_wall']:>7.1f}x "
            f"{target:>7}  {ok}"
        )
    print(f"(one thread; load average {report['load_avg_1min']} on {report['cpu_count']} cores; written to {args.out})")
    return 0 if all(r["meets_target"] is not False for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
