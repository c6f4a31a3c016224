"""Offline sweep of key-rescoring decoder settings over a calibration benchmark's profiles (SIMULATED data).

    python tools/key_sweep.py BENCH_OUT [--seconds 60] [--lam 0.5 0.75 1] [--centre-weight 5 20] \
        [--blank-offset 0.5 1 1.5] [--no-press-bias -0.5 0 0.5]

For every user's calibrated profile of a ``calibration_bench`` run (its ``work/`` folder: the bundle copy with
the profiles, the evaluation sessions), the evaluation session goes once through the streaming runtime as the
benchmark ran it (int8 ONNX, 1 s blocks) with a decoder that records the frames it reads; every setting of the
grid then re-decodes those emissions and frames offline (``keyproto.rescore_offline``, which the tests hold equal
to streaming). Prints, per benchmark job and the strategy its calibration chose (a finetune job can keep
strategy 1, whose keys decode with strategy 1's settings: ``KeyFitConfig.for_strategy``), and per setting, the
mean per-user reduction of the generic CER (the issue's measure), the first row being the profiles as calibrated
(it must reproduce the benchmark's "after" column).
Settings are meant to be chosen on the tuning users (``--first-user 2000`` benchmark runs), never on the
reported ones.
"""

from __future__ import annotations

import argparse
import itertools
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from emgkey import charset
from emgkey.bundle import load_bundle
from emgkey.edge_runtime.calibrate import open_deployed_engine
from emgkey.edge_runtime.keyproto import KeyProfile, KeyRescoringDecoder, key_decoder_factory, rescore_offline
from emgkey.edge_runtime.profile_store import PROFILE_JSON, Profile, load_key_profile
from emgkey.edge_runtime.recognizer import Recognizer, decode_samples
from emgkey.metrics import edit_counts


class _Recording(KeyRescoringDecoder):
    """The benchmark's decoder, keeping every frame it reads (for the offline re-decodes)."""

    frames: list[np.ndarray]

    def observe_frames(self, frames: np.ndarray) -> None:
        self.frames.append(np.asarray(frames, dtype=np.float32))
        super().observe_frames(frames)


def capture(bundle_dir: Path, prof: Profile, kp: KeyProfile, eval_path: str) -> dict[str, Any]:
    """(emissions, frames, delay, target, CER as calibrated) of one profile on its evaluation session."""
    bundle = load_bundle(bundle_dir)
    m = bundle.manifest
    engine, _ = open_deployed_engine(bundle, "int8", "onnx", 1)
    inner = key_decoder_factory(kp, m)()
    dec = _Recording(kp, delay=inner.delay, blank=inner.blank, num_classes=inner.num_classes)
    dec.frames = []
    rec = Recognizer(engine, m.features, lambda: dec, m, normalization=prof.normalization)
    with np.load(eval_path) as z:
        emg, target = z["emg"], str(z["target"])
    emissions, final = decode_samples(rec, emg, [round(m.profile.sample_rate_hz)])
    frames = np.concatenate(dec.frames) if dec.frames else np.zeros((0, *kp.frame_shape), np.float32)
    return {
        "emissions": emissions,
        "frames": frames,
        "delay": dec.delay,
        "target": target,
        "cer": edit_counts(final.raw, target).cer,  # %
    }


def variant(kp: KeyProfile, lam: float, centre_weight: float, blank_offset: float, no_press_bias: float) -> KeyProfile:
    bias = kp.bias.copy()
    has_no_press = len(kp.classes) and int(kp.classes[-1]) == charset.BLANK
    if has_no_press:
        bias[-1] += no_press_bias
    return replace(
        kp,
        lam=lam,
        centre_weight=centre_weight,
        blank_offset=blank_offset if has_no_press else kp.blank_offset,
        bias=bias,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bench", type=Path, help="a calibration_bench --out folder")
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--lam", type=float, nargs="+", default=[0.75])
    ap.add_argument("--centre-weight", type=float, nargs="+", default=[20.0])
    ap.add_argument("--blank-offset", type=float, nargs="+", default=[1.0])
    ap.add_argument("--no-press-bias", type=float, nargs="+", default=[0.0], help="added to the profile's")
    args = ap.parse_args()

    result = json.loads((args.bench / "calibration_bench.json").read_text())
    rows = [r for r in result["rows"] if r["seconds"] == args.seconds and "error" not in r and "keys" in r]
    # the generic model's CER is measured once per user (in the first strategy's rows)
    same = [r for r in result["rows"] if r["seconds"] == args.seconds and "before" in r]
    before_of = {r["user"]: r["before"]["cer"] for r in same}
    grid = list(itertools.product(args.lam, args.centre_weight, args.blank_offset, args.no_press_bias))
    work = args.bench / "work"
    copies = sorted(work.glob("bundle_copy_*"))
    assert len(copies) == 1, f"one bundle copy expected in {work}, found {len(copies)}"
    order = [s for s in result["settings"]["strategies"] if s != "scratch"]  # the jobs that wrote profiles
    table: dict[tuple[str, str], list[list[float]]] = {}  # (job, chosen strategy) -> per user
    for r in rows:
        user_dir = copies[0] / "profiles" / f"bench-u{r['user']}-{args.seconds:g}s"
        dirs = [d for d in sorted(user_dir.iterdir()) if (d / PROFILE_JSON).is_file()]
        profs = [Profile.from_dict(json.loads((d / PROFILE_JSON).read_text()), d) for d in dirs]
        # one profile per job, in job order (stats, then finetune): the row's strategy picks it
        assert len(profs) == len(order), f"{user_dir}: {len(profs)} profiles for the {len(order)} jobs {order}"
        prof = profs[order.index(r["strategy"])]
        kp = load_key_profile(prof)
        before = before_of[r["user"]]
        if kp is None:  # keys off for this user: every setting decodes it the same
            cers = [r["after"]["cer"]] * (len(grid) + 1)
        else:
            eval_path = str(work / f"user{r['user']}_eval.npz")
            cap = capture(prof.bundle_dir(copies[0]), prof, kp, eval_path)
            cers = [cap["cer"]]
            for setting in grid:
                labels = rescore_offline(cap["emissions"], cap["frames"], variant(kp, *setting), cap["delay"])
                cers.append(edit_counts(charset.labels_to_str(labels), cap["target"]).cer)
            if abs(cers[0] - r["after"]["cer"]) > 0.05:
                bench_cer = r["after"]["cer"]
                print(f"warning: user {r['user']} {r['strategy']}: {cers[0]:.2f} here, {bench_cer} in the bench")
        table.setdefault((r["strategy"], prof.strategy), []).append([100.0 * (before - c) / before for c in cers])
        after = " ".join(f"{c:.1f}" for c in cers)
        print(f"user {r['user']} {r['strategy']} (chose {prof.strategy}): before {before:.1f}, after {after}")
    print(
        f"\nmean reduction of the generic CER (%), {args.seconds:g} s; setting = (lam, centre_weight, blank_offset, "
        "no-press bias delta)"
    )
    for (job, chosen), red in sorted(table.items()):
        m = np.mean(np.asarray(red), axis=0)
        print(f"{job} job, {len(red)} users chose {chosen}: as calibrated {m[0]:.1f}")
        for setting, v in sorted(zip(grid, m[1:]), key=lambda t: -t[1]):
            print(f"  {setting}: {v:.1f}")


if __name__ == "__main__":
    main()
