"""Calibration benchmark: CER before and after 15 / 30 / 60 s of calibration, per student and strategy.

    python -m emgkey.benchmarks.calibration_bench --out runs/calib_bench                 # small: trains tiny students
    python -m emgkey.benchmarks.calibration_bench --bundle B --checkpoint B.pt --out DIR  # a given student
    python -m emgkey.benchmarks.calibration_bench --bundle B1 --checkpoint C1 --bundle B2 --checkpoint C2 --out DIR
    python -m emgkey.benchmarks.calibration_bench --quick --out DIR                      # 2 users, 30/60 s: a smoke run

SIMULATED DATA. Users are simulated (``emgkey.firmware_sim``) with ids far from any training population
(``--first-user``, default 1000), so none was seen in training. Per user:

- calibration: the user types prompts chosen by ``emgkey calibrate`` from the prompt corpus (session 0),
  exactly what ``sim://`` gives the CLI (``calib_record.simulated_recording``); the first 30 and 60 s
  of it are the calibration data (each split into fit and held-out prompts by the calibration itself);
  sessions under 30 s type short phrases instead (``PromptChoice.for_session``: the leading words of corpus
  sentences), recorded separately from the same day, and the first 15 s of that are the data;
- evaluation: the same user on another day (session 1: the bands put on again), typing **other** prompts
  for ``--eval-seconds``; CER against the keys actually pressed (typos and ⌫ included, emg2qwerty's
  definition), greedy decoding through the device's streaming runtime (int8 ONNX unless the bundle lacks
  it), and the CTC negative log-likelihood per key of those keys (informative while CER is ~100%).

Strategies, each run exactly as ``emgkey calibrate --strategy ...`` runs it (``calib_run.calibrate_recording``):

- ``stats``: strategy 1, numpy only (no torch imported in its worker);
- ``finetune``: strategy 2 (strategy 1, then the adapter and last layers, re-export when layers changed);
  the profile keeps whichever of the two wins on the held-out prompts;
- ``scratch``: a personalized model of the same architecture trained from scratch on the same data with the
  same loss, early stopping and time budget (``finetune_calib.train_from_scratch``), evaluated in torch.

"after" is the calibrated model; "deployed" is what a device would run: the calibrated model if it beat
the base model on the held-out prompts, else the base model. Compute time is the calibration's wall time
(data checks, strategies, held-out comparison, export, profile write; not the recording). Peak memory is
the peak RSS of the process that ran one (student, strategy) for every user, which imports only what that
strategy needs (an upper bound for one calibration).

Writes ``OUT/calibration_bench.json`` and ``OUT/calibration_bench.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from emgkey.benchmarks.bench import describe_device

log = logging.getLogger("emgkey.calibration_bench")

NOTE = (
    "SIMULATED DATA: every number here comes from users simulated by emgkey.firmware_sim, not from people. "
    "Simulated CER is not real-data CER."
)


@dataclass
class Student:
    name: str
    bundle: Path
    checkpoint: Path | None
    data: tuple[Path, Path] | None = None  # (dataset, split) it was trained on: for its key prior


def _student_identity(s: Student) -> dict[str, Any]:
    """Which model a row is about: paths, the bundle's model fingerprint, and its training run's best validation
    CER when the checkpoint's run folder has a ``results.json``."""
    from emgkey.bundle import load_bundle
    from emgkey.edge_runtime.profile_store import model_fingerprint

    out: dict[str, Any] = {"name": s.name, "bundle": str(s.bundle), "checkpoint": str(s.checkpoint)}
    out["model_fingerprint"] = model_fingerprint(load_bundle(s.bundle).manifest)
    results = s.checkpoint.parent / "results.json" if s.checkpoint is not None else None
    if results is not None and results.is_file():
        out["best_val_cer"] = json.loads(results.read_text()).get("best_val_cer")
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Users: calibration recordings and evaluation sessions


def finetune_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``["max_body_stages=3", "lr=1e-3"]`` -> FinetuneConfig fields typed like their defaults; unknown keys: error."""
    import dataclasses

    from emgkey.errors import ConfigError
    from emgkey.train.finetune_calib import FinetuneConfig

    defaults = {f.name: f.default for f in dataclasses.fields(FinetuneConfig)}
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        allowed = sorted(set(defaults) - {"formats", "time_budget_s"})  # --formats / --budget-s set those
        if not sep or key not in allowed:
            raise ConfigError(f"--finetune-set {item!r}: expected KEY=VALUE with KEY one of {allowed}")
        if isinstance(defaults[key], bool):  # bool("false") is True: spell the two values out
            if value.lower() not in ("true", "false"):
                raise ConfigError(f"--finetune-set {item!r}: {key} is true or false")
            out[key] = value.lower() == "true"
        else:
            out[key] = type(defaults[key])(value)
    return out


def average_arm_population(seed: int) -> Any:
    """The population with every per-user placement and anatomy difference off (band rotation, muscle
    positions, sizes and spectra, finger and key mixes, palmaris; re-donning rotation too), and every
    key reached the population's mean way (its key signature): each user keeps their typing, amplitude,
    contacts and noise. The base model on these users is what it would do if calibration removed every
    anatomical, placement and reaching mismatch."""
    from emgkey.firmware_sim.population import Population, SessionVariability, UserVariability

    user = UserVariability(
        band_rotation_deg=0.0, muscle_angle_sd_deg=0.0, muscle_depth_sd_mm=0.0, muscle_gain_sigma=0.0,
        muscle_spectral_sigma=0.0, palmaris_absent_prob=0.0, finger_mix_sigma=0.0, finger_spill=0.0,
        key_mix_sigma=0.0, key_signature_mean_only=True,
    )  # fmt: skip
    return Population(seed, user, SessionVariability(donning_rotation_sd_deg=0.0))


def _save_eval(path: Path, sess: Any) -> None:
    from emgkey.labels import LabelData

    target = LabelData.from_keystrokes(sess.keystrokes)
    with open(path, "wb") as f:
        np.savez_compressed(f, emg=sess.emg_uv(), target=np.array(target.label_str))


def refuse_seen_users(data_root: str | Path, population_seed: int, user_ids: Sequence[int], what: str) -> None:
    """Stop unless the simulated dataset at ``data_root`` is free of the benchmark's own users (the same population
    seed and user ids): a key prior (or a model) fitted on them would have seen the people it is evaluated on.
    A dataset without ``dataset.json`` (real emg2qwerty data) or from another population passes."""
    meta_path = Path(data_root) / "dataset.json"
    if not meta_path.is_file():
        return
    meta = json.loads(meta_path.read_text())
    if not meta.get("simulated") or int(meta.get("seed", -1)) != population_seed:
        return
    seen = {int(s["user_id"]) for s in meta.get("sessions", []) if "user_id" in s}
    both = sorted(seen & set(user_ids))
    if both:
        raise SystemExit(
            f"{what} {data_root}: simulated users {both[:5]}{' ...' if len(both) > 5 else ''} of population seed "
            f"{population_seed} are the benchmark's own users (ids {min(user_ids)}..{max(user_ids)}); "
            "use data of other users (emgkey sim dataset --first-user) or another --first-user here"
        )


def prepare_users(args: argparse.Namespace, profile_name: str, work: Path) -> list[dict[str, Any]]:
    """Simulate each held-out user's calibration recording and evaluation session (saved under ``work``),
    and the evaluation session of the same user with the average arm (``average_arm_population``)."""
    from emgkey.edge_runtime.calib_data import PromptChoice
    from emgkey.edge_runtime.calib_record import simulated_recording
    from emgkey.firmware_sim.simulate import simulate_session
    from emgkey.labels import LabelData
    from emgkey.profiles import get_profile

    profile = get_profile(profile_name)
    plans: dict[PromptChoice, float] = {}  # each prompt plan (sentences, or phrases for short sessions): longest
    for s in args.seconds:
        choice = PromptChoice.for_session(s, seed=args.seed)
        plans[choice] = max(plans.get(choice, 0.0), s)
    users = []
    for i in range(args.users):
        uid = args.first_user + i
        used: set[int] = set()
        calib_by_seconds: dict[str, str] = {}
        for k, (choice, seconds) in enumerate(plans.items()):
            calib_prompts = choice.choose(choice.enough_for(seconds), salt=f"user{uid}")
            rec = simulated_recording(profile, uid, seconds, calib_prompts, session=0, seed=args.population_seed)
            path = str(rec.save(work / f"user{uid}_calib{'' if k == 0 else k}.npz"))
            for s in args.seconds:
                if PromptChoice.for_session(s, seed=args.seed) == choice:
                    calib_by_seconds[f"{s:g}"] = path
            used |= {pid for pid, _ in calib_prompts}
        eval_choice = PromptChoice(seed=args.seed + 1)
        extra = eval_choice.choose(eval_choice.enough_for(args.eval_seconds) + len(used), f"e{uid}")
        eval_prompts = [t for pid, t in extra if pid not in used]
        minutes = args.eval_seconds / 60.0
        sess = simulate_session(profile, uid, 1, minutes, args.population_seed, eval_prompts)
        eval_path, avg_path = work / f"user{uid}_eval.npz", work / f"user{uid}_eval_average_arm.npz"
        _save_eval(eval_path, sess)
        avg = average_arm_population(args.population_seed)
        _save_eval(
            avg_path, simulate_session(profile, uid, 1, minutes, args.population_seed, eval_prompts, population=avg)
        )
        keys = len(LabelData.from_keystrokes(sess.keystrokes))
        users.append(
            {
                "user": uid,
                "calib": calib_by_seconds,  # seconds -> recording (session 0; its first `seconds` are used)
                "eval": str(eval_path),
                "eval_average_arm": str(avg_path),
                "keys": keys,
            }
        )
    return users


def evaluate_deployed(
    bundle_dir: str | Path,
    normalization: dict[str, Any] | None,
    eval_path: str,
    keys: Any = None,
    adapt: bool = False,
) -> dict[str, Any]:
    """CER and NLL/key of the evaluation session through the streaming runtime (torch-free); ``keys``: a
    ``keyproto.KeyProfile`` to decode with (key rescoring), as ``emgkey run --user`` does when it is enabled;
    ``adapt=True``: its keys learning while the session is typed (``emgkey run --learn-keys``)."""
    from emgkey import charset
    from emgkey.bundle import load_bundle
    from emgkey.edge_runtime.calib_ctc import nll_per_char
    from emgkey.edge_runtime.calibrate import open_deployed_engine
    from emgkey.edge_runtime.recognizer import Recognizer, decode_samples, make_decoder_factory
    from emgkey.metrics import edit_counts

    bundle = load_bundle(bundle_dir)
    m = bundle.manifest
    engine, precision = open_deployed_engine(bundle, "int8", "onnx", 1)
    factory = make_decoder_factory("greedy")
    if keys is not None:
        from emgkey.edge_runtime.keyproto import key_decoder_factory

        factory = key_decoder_factory(keys, m, adapt=adapt)
    rec = Recognizer(engine, m.features, factory, m, normalization=normalization)
    with np.load(eval_path) as z:
        emg, target = z["emg"], str(z["target"])
    emissions, final = decode_samples(rec, emg, [round(m.profile.sample_rate_hz)])  # 1 s blocks, as a device
    labels = np.asarray(charset.str_to_labels(target), dtype=np.int64)
    return {
        "cer": round(edit_counts(final.raw, target).cer, 3),
        "nll": round(nll_per_char([(emissions, labels)]), 4),
        "precision": precision,
    }


def evaluate_torch(model: Any, feature_cfg: Any, eval_path: str) -> dict[str, float]:
    """The same metrics for a torch model (the from-scratch comparison), offline over the whole session."""
    import torch

    from emgkey import charset
    from emgkey.decoding import greedy_decode
    from emgkey.edge_runtime.calib_ctc import nll_per_char
    from emgkey.features import compute_features
    from emgkey.metrics import edit_counts

    with np.load(eval_path) as z:
        emg, target = z["emg"], str(z["target"])
    x = torch.from_numpy(compute_features(emg, feature_cfg)[:, None])
    with torch.no_grad():
        lp = model.eval()(x)[:, 0].numpy()
    labels = np.asarray(charset.str_to_labels(target), dtype=np.int64)
    pred = charset.labels_to_str(greedy_decode(lp))
    return {"cer": round(edit_counts(pred, target).cer, 3), "nll": round(nll_per_char([(lp, labels)]), 4)}


# ---------------------------------------------------------------------------------------------------------------------
# One (student, strategy) in its own process


def _peak_rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return float(line.split()[1]) / 1024.0
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Every user x duration for one (student, strategy); runs in a fresh (spawned) process."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    logging.basicConfig(level=logging.WARNING)
    from emgkey.bundle import load_bundle
    from emgkey.edge_runtime.calib_data import CalibrationDataError, CalibrationRecording, CalibrationSet, DataLimits
    from emgkey.edge_runtime.calib_run import CalibrationOptions, calibrate_recording
    from emgkey.errors import EmgkeyError

    strategy = job["strategy"]
    bundle = load_bundle(job["bundle"])
    limits = DataLimits(min_fit_s=job["min_fit_s"])
    ft_cfg = None
    if strategy in ("finetune", "scratch"):
        import torch

        torch.set_num_threads(1)
        from emgkey.train.finetune_calib import FinetuneConfig

        ft_cfg = FinetuneConfig(
            time_budget_s=job["budget_s"], formats=tuple(job["formats"]) or None, **job.get("finetune_set", {})
        )
    rows = []
    for u in job["users"]:
        recs = {path: CalibrationRecording.load(path) for path in set(u["calib"].values())}
        if job["with_before"]:
            u_before = evaluate_deployed(job["bundle"], None, u["eval"])
            if u.get("eval_average_arm"):
                u_before["average_arm"] = evaluate_deployed(job["bundle"], None, u["eval_average_arm"])
        for seconds in job["seconds"]:
            row: dict[str, Any] = {"student": job["student"], "strategy": strategy, "user": u["user"]}
            row["seconds"] = seconds
            if job["with_before"]:
                row["before"] = u_before
            part = recs[u["calib"][f"{seconds:g}"]].head(seconds)
            try:
                t0 = time.perf_counter()
                if strategy == "scratch":
                    from emgkey.train.checkpoint import load_checkpoint
                    from emgkey.train.finetune_calib import train_from_scratch

                    cal = CalibrationSet.from_recording(part, bundle.manifest.features, limits)
                    model_cfg = load_checkpoint(job["checkpoint"])["model_config"]
                    model, info = train_from_scratch(model_cfg, cal, ft_cfg)
                    row["compute_s"] = round(time.perf_counter() - t0, 3)
                    row["after"] = evaluate_torch(model, bundle.manifest.features, u["eval"])
                    row["info"] = info
                else:
                    opts = CalibrationOptions(
                        strategy=strategy,
                        keys=job["keys"],
                        limits=limits,
                        checkpoint=job["checkpoint"],
                        finetune=ft_cfg,
                        activate=False,
                        keep_recording=False,
                    )
                    out = calibrate_recording(bundle, f"bench-u{u['user']}-{seconds:g}s", part, opts)
                    row["compute_s"] = round(out.seconds, 3)
                    prof = out.profile
                    row["accepted"] = prof.accepted
                    row["chosen"] = prof.strategy
                    row["heldout"] = {"current": out.current, "candidates": out.candidates}
                    own = prof.bundle_dir(bundle.root)
                    row["after"] = evaluate_deployed(own, prof.normalization, u["eval"])
                    if prof.keys is not None:  # the profile has key prototypes: with them, as the device runs it
                        from emgkey.edge_runtime.profile_store import load_key_profile

                        row["keys"] = {k: prof.keys[k] for k in ("enabled", "heldout", "presses", "seconds")}
                        row["after_no_keys"] = row["after"]
                        kp = load_key_profile(prof)
                        if kp is not None:
                            row["after"] = evaluate_deployed(own, prof.normalization, u["eval"], kp)
                            if kp.adapt is not None:  # diagnostic: the keys learning in use (--learn-keys)
                                row["after_learning_keys"] = evaluate_deployed(
                                    own, prof.normalization, u["eval"], kp, adapt=True
                                )
                        elif prof.path is not None and (prof.path / prof.keys["path"]).is_file():
                            # diagnostic only: what the keys the held-out slice turned off would have done
                            from emgkey.edge_runtime.keyproto import KeyProfile

                            forced = KeyProfile.load(prof.path / prof.keys["path"])
                            row["after_keys_forced"] = evaluate_deployed(own, prof.normalization, u["eval"], forced)
            except (CalibrationDataError, EmgkeyError) as exc:
                row["error"] = str(exc)[:300]
            rows.append(row)
            log.warning(
                "%s %s user %s %gs: %s", job["student"], strategy, u["user"], seconds, row.get("error") or row["after"]
            )
    return {"rows": rows, "peak_rss_mb": round(_peak_rss_mb(), 1)}


# ---------------------------------------------------------------------------------------------------------------------
# Training small students when none is given


def train_small(args: argparse.Namespace, work: Path) -> list[Student]:
    """A small simulated population, tiny students trained for a few minutes, ONNX bundles."""
    data = work / "train_data"
    py = [sys.executable, "-m", "emgkey.cli"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if not (data / "dataset.json").is_file():
        subprocess.run(
            [*py, "sim", "dataset", "--profile", args.profile, "--users", str(args.train_users),
             "--sessions-per-user", "2", "--minutes", "2", "--seed", str(args.population_seed), "--test-users", "2",
             "--out", str(data)],
            check=True, env=env,
        )  # fmt: skip
    students = []
    for name in args.students:
        run = work / f"train_{name}"
        if not (run / "best.pt").is_file():
            shutil.rmtree(run, ignore_errors=True)
            subprocess.run(
                [*py, "train", "--config", "tiny", "--model", name, "--data", str(data), "--split",
                 str(data / "splits" / "generic.yaml"), "--out", str(run), "--set", f"epochs={args.train_epochs}",
                 "--set", "max_steps_per_epoch=50", "--set", "data.batch_size=16", "--set", "optim.lr=1e-2",
                 "--set", "eval_test=false"],
                check=True, env=env,
            )  # fmt: skip
        bundle = work / f"bundle_{name}"
        if not (bundle / "manifest.json").is_file():
            subprocess.run(
                [*py, "export", "bundle", "--checkpoint", str(run / "best.pt"), "--data", str(data), "--split",
                 str(data / "splits" / "generic.yaml"), "--out", str(bundle), "--formats", "onnx",
                 "--window-s", "4", "--max-test-windows", "8", "--force"],
                check=True, env=env,
            )  # fmt: skip
        students.append(Student(f"{name} (tiny)", bundle, run / "best.pt", (data, data / "splits" / "generic.yaml")))
    return students


# ---------------------------------------------------------------------------------------------------------------------
# Report


def summarize(rows: list[dict[str, Any]], peaks: dict[tuple[str, str], float]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, str, float], list[dict[str, Any]]] = {}
    before: dict[tuple[str, int], dict[str, float]] = {}
    for r in rows:
        if "before" in r:
            before[(r["student"], r["user"])] = r["before"]
    for r in rows:
        groups.setdefault((r["student"], r["strategy"], r["seconds"]), []).append(r)
    out = []
    order = {"stats": 0, "finetune": 1, "scratch": 2}
    for (student, strategy, seconds), rs in sorted(groups.items(), key=lambda g: (g[0][0], order[g[0][1]], g[0][2])):
        ok = [r for r in rs if "after" in r and (r["student"], r["user"]) in before]

        def mean(xs: Sequence[float]) -> float | None:
            return round(statistics.fmean(xs), 3) if xs else None

        b_cer = [before[(r["student"], r["user"])]["cer"] for r in ok]
        avg_cer = [
            before[(r["student"], r["user"])]["average_arm"]["cer"]
            for r in ok
            if "average_arm" in before[(r["student"], r["user"])]
        ]
        a_cer = [r["after"]["cer"] for r in ok]
        d_cer = [r["after"]["cer"] if r.get("accepted", True) else b for r, b in zip(ok, b_cer)]
        rel = [(b - a) / b for b, a in zip(b_cer, a_cer) if b > 0]
        nk = [r for r in ok if "after_no_keys" in r]
        nk_cer = [r["after_no_keys"]["cer"] for r in nk]
        nk_rel = [(before[(r["student"], r["user"])]["cer"] - c) / before[(r["student"], r["user"])]["cer"]
                  for r, c in zip(nk, nk_cer) if before[(r["student"], r["user"])]["cer"] > 0]  # fmt: skip
        ka_cer = [r.get("after_keys_forced", r["after"])["cer"] for r in nk]
        ka_rel = [(before[(r["student"], r["user"])]["cer"] - c) / before[(r["student"], r["user"])]["cer"]
                  for r, c in zip(nk, ka_cer) if before[(r["student"], r["user"])]["cer"] > 0]  # fmt: skip
        lk = [r.get("after_learning_keys", r["after"])["cer"] for r in ok]
        lk_rel = [(b - a) / b for b, a in zip(b_cer, lk) if b > 0]
        any_learning = any("after_learning_keys" in r for r in ok)
        out.append(
            {
                "student": student,
                "strategy": strategy,
                "seconds": seconds,
                "users": len(rs),
                "failed": len(rs) - len(ok),
                "errors": sorted({r["error"][:80] for r in rs if "error" in r}),
                "cer_before": mean(b_cer),
                "cer_after": mean(a_cer),
                "cer_deployed": mean(d_cer),
                "cer_average_arm": mean(avg_cer) if len(avg_cer) == len(ok) else None,
                "cer_reduction_mean": mean(rel),
                "keys_enabled": sum(bool(r["keys"]["enabled"]) for r in nk) if len(nk) == len(ok) and nk else None,
                "cer_after_no_keys": mean(nk_cer) if len(nk) == len(ok) else None,
                "cer_reduction_no_keys": mean(nk_rel) if len(nk) == len(ok) else None,
                # diagnostic: every user's keys on, including those the held-out prompts turned off
                "cer_after_keys_always": mean(ka_cer) if len(nk) == len(ok) and nk else None,
                "cer_reduction_keys_always": mean(ka_rel) if len(nk) == len(ok) and nk else None,
                # diagnostic: the keys learning while the evaluation session is typed (emgkey run --learn-keys)
                "cer_after_learning_keys": mean(lk) if any_learning else None,
                "cer_reduction_learning_keys": mean(lk_rel) if any_learning else None,
                "nll_before": mean([before[(r["student"], r["user"])]["nll"] for r in ok]),
                "nll_after": mean([r["after"]["nll"] for r in ok]),
                "accepted": sum(bool(r.get("accepted")) for r in ok) if strategy != "scratch" else None,
                "compute_s_median": mean([statistics.median([r["compute_s"] for r in ok])]) if ok else None,
                "compute_s_max": max((r["compute_s"] for r in ok), default=None),
                "peak_rss_mb": peaks.get((student, strategy)),
            }
        )
    return out


def _fmt(x: Any, nd: int = 1) -> str:
    return "-" if x is None else (f"{x:.{nd}f}" if isinstance(x, float) else str(x))


def _no_keys(r: dict[str, Any]) -> str:
    red = r.get("cer_reduction_no_keys")
    return "-" if red is None else f"{_fmt(r['cer_after_no_keys'])} ({100 * red:+.1f}%)"


def _identity_lines(s: dict[str, Any]) -> list[str]:
    """Which models and which machine (results written before these were recorded have neither: no lines)."""
    lines = []
    for st in s.get("students", []):
        if "model_fingerprint" in st:
            val = st.get("best_val_cer")
            best = f", best validation CER {val:.3f}" if isinstance(val, (int, float)) else ""
            lines.append(f"- {st['name']}: model fingerprint {st['model_fingerprint'][:12]}{best}")
    env = s.get("environment")
    if env:
        versions = ", ".join(f"{k} {v}" for k, v in sorted(env.get("versions", {}).items()))
        lines.append(f"- environment: {env['cpu_model']} ({env['arch']}), Python {env['python']}, {versions}")
    return [*lines, ""] if lines else []


def markdown(result: dict[str, Any]) -> str:
    s = result["settings"]
    lines = [
        "# Calibration benchmark",
        "",
        f"**{NOTE}**",
        "",
        f"{s['users']} held-out simulated users (ids {s['first_user']}..{s['first_user'] + s['users'] - 1}, "
        f"profile {s['profile']}); calibration on session 0 (first {', '.join(f'{x:g}' for x in s['seconds'])} s of "
        "prompted typing: sentences, or under 30 s phrases of them in a recording of their own), evaluation on "
        f"session 1 ({s['eval_seconds']:g} s, other prompts). CER in % against the "
        "keys pressed (greedy, streaming runtime); NLL = CTC negative log-likelihood per key of those keys. "
        f"'deployed' keeps the base model when the calibration did not beat it on its held-out prompts. "
        f"Strategy 2 / scratch time budget {s['budget_s']:g} s of training. Machine: {s['machine']}. "
        "'average arm': the base model on the same users' evaluation sessions simulated with every per-user "
        "placement and anatomy difference off (band rotation, muscle positions and sizes, finger and key mixes): "
        "what it would do if calibration undid all of them.",
        "",
        *_identity_lines(s),
        "Key rescoring (calibration step 3, when the bundle has a key prior): 'CER after' decodes with the user's "
        "key prototypes where the held-out prompts enabled them ('keys on': users), 'without keys' is the same "
        "profile decoded by plain greedy CTC. 'compute s' includes the key step.",
        "",
        "| student | strategy | s | users (failed) | CER before | CER after | CER deployed | CER reduction | "
        "without keys (reduction) | keys on | "
        "CER average arm | NLL before | NLL after | accepted | compute s (median / max) | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["summary"]:
        red = r["cer_reduction_mean"]
        lines.append(
            f"| {r['student']} | {r['strategy']} | {r['seconds']:g} | {r['users']} ({r['failed']}) | "
            f"{_fmt(r['cer_before'])} | {_fmt(r['cer_after'])} | {_fmt(r['cer_deployed'])} | "
            f"{'-' if red is None else f'{100 * red:+.1f}%'} | {_no_keys(r)} | {_fmt(r.get('keys_enabled'))} | "
            f"{_fmt(r.get('cer_average_arm'))} | "
            f"{_fmt(r['nll_before'], 3)} | "
            f"{_fmt(r['nll_after'], 3)} | {_fmt(r['accepted'])} | {_fmt(r['compute_s_median'])} / "
            f"{_fmt(r['compute_s_max'])} | {_fmt(r['peak_rss_mb'], 0)} |"
        )
    lines += [
        "",
        "Targets (issue 6), at 60 s (vs scratch: CER lower by more than a point, or within a point and lower NLL):",
    ]
    for t in result["targets"]:
        lines.append(f"- {t}")
    errs = sorted({e for r in result["summary"] for e in r["errors"]})
    if errs:
        lines += ["", "Calibrations that failed (counted in 'failed'):"] + [f"- {e}" for e in errs]
    lines.append("")
    return "\n".join(lines)


def targets(summary: list[dict[str, Any]]) -> list[str]:
    out = []
    by = {(r["student"], r["strategy"], r["seconds"]): r for r in summary}
    for (student, strategy, seconds), r in sorted(by.items()):
        if seconds != 60 or strategy == "scratch" or r["cer_reduction_mean"] is None:
            continue
        scratch = by.get((student, "scratch", 60))
        red = r["cer_reduction_mean"]
        verdict = "meets" if red >= 0.4 else "misses"
        line = f"{student} / {strategy}: CER reduced by {100 * red:.1f}% on average ({verdict} >= 40%)"
        if r.get("cer_after_no_keys") is not None and r["cer_before"]:
            line += f"; without key rescoring {100 * r['cer_reduction_no_keys']:.1f}%"
            always = r.get("cer_reduction_keys_always")
            if always is not None:
                line += f", with every user's keys on {100 * always:.1f}% (diagnostic)"
            learning = r.get("cer_reduction_learning_keys")
            if learning is not None:
                line += f", keys learning in use {100 * learning:.1f}%"
        if r.get("cer_average_arm") is not None and r["cer_before"]:
            room = (r["cer_before"] - r["cer_average_arm"]) / r["cer_before"]
            line += f"; undoing every placement and anatomy difference would remove {100 * room:.1f}%"
        if scratch and scratch["cer_after"] is not None and r["cer_after"] is not None:
            # CER differences within a point are noise (at ~100% CER they are a stray key); then NLL decides.
            diff = r["cer_after"] - scratch["cer_after"]
            beats = diff < -1.0 or (abs(diff) <= 1.0 and (r["nll_after"] or 0) < (scratch["nll_after"] or 0))
            line += (
                f"; vs from scratch: CER {r['cer_after']:.1f} vs {scratch['cer_after']:.1f}, NLL {r['nll_after']:.3f} "
                f"vs {scratch['nll_after']:.3f} ({'beats' if beats else 'does not beat'} it)"
            )
        out.append(line)
    return out


# ---------------------------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m emgkey.benchmarks.calibration_bench",
        description="CER before/after on-device calibration (15/30/60 s) for held-out simulated users (SIMULATED DATA)",
    )
    p.add_argument("--out", required=True, help="output folder (calibration_bench.json / .md, work files)")
    p.add_argument("--bundle", action="append", default=[], help="a student's bundle (repeatable)")
    p.add_argument("--checkpoint", action="append", default=[], help="its checkpoint, same order (strategy 2, scratch)")
    p.add_argument("--strategies", nargs="+", default=["stats", "finetune", "scratch"],
                   choices=("stats", "finetune", "scratch"))  # fmt: skip
    p.add_argument("--users", type=int, default=8, help="held-out simulated users (default 8)")
    p.add_argument("--first-user", type=int, default=1000, help="their ids start here (training uses low ids)")
    p.add_argument("--seconds", type=float, nargs="+", default=[15.0, 30.0, 60.0], help="calibration lengths")
    p.add_argument("--eval-seconds", type=float, default=60.0, help="evaluation session per user")
    p.add_argument("--budget-s", type=float, default=40.0, help="strategy 2 / scratch training time budget")
    p.add_argument(
        "--finetune-set", action="append", default=[], metavar="KEY=VALUE",
        help="strategy 2 / scratch FinetuneConfig field (repeatable), e.g. max_body_stages=3; tune on other "
        "users (--first-user) than the ones you report",
    )  # fmt: skip
    p.add_argument("--formats", default="onnx", help="strategy 2 re-export formats (comma list; '' = the bundle's)")
    p.add_argument(
        "--min-fit-seconds", type=float, default=4.0, help="fit data a calibration needs (as emgkey calibrate)"
    )
    p.add_argument("--seed", type=int, default=0, help="prompt choice")
    p.add_argument("--population-seed", type=int, default=0, help="simulated population")
    p.add_argument(
        "--key-prior", nargs=2, metavar=("DATA", "SPLIT"), default=None,
        help="add a key prior (emgkey export keyprior) from this dataset's training sessions to each bundle copy "
        "that has none; tiny students get one from their own training data",
    )  # fmt: skip
    p.add_argument("--no-keys", action="store_true", help="calibrate without the key step (bundle priors ignored)")
    p.add_argument(
        "--key-prior-align-bands",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the added key prior rolls the sessions' bands onto one frame (keyalign; default: on, as export's)",
    )
    p.add_argument(
        "--key-prior-sessions",
        type=int,
        default=None,
        help="training sessions the added key prior is fitted on (default: export keyprior's)",
    )
    p.add_argument("--quick", action="store_true", help="2 users, 30 and 60 s, 15 s budgets: a smoke run")
    small = p.add_argument_group("without --bundle: train small students first")
    small.add_argument("--students", nargs="+", default=["gru"], help="tiny students to train (gru, tcn, bilstm)")
    small.add_argument("--profile", default="armband8")
    small.add_argument("--train-users", type=int, default=12)
    small.add_argument("--train-epochs", type=int, default=20)
    args = p.parse_args(argv)
    if args.quick:
        args.users, args.seconds, args.budget_s = 2, [30.0, 60.0], 15.0
    if args.checkpoint and len(args.checkpoint) != len(args.bundle):
        p.error("give one --checkpoint per --bundle (or none)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from emgkey.bundle import load_bundle

    out = Path(args.out)
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    if args.bundle:
        ckpts = args.checkpoint or [None] * len(args.bundle)
        students = []
        for b, c in zip(args.bundle, ckpts):
            m = load_bundle(b).manifest
            students.append(Student(f"{m.model['name']} ({Path(b).name})", Path(b), Path(c) if c else None))
    else:
        students = train_small(args, work)
    profile = load_bundle(students[0].bundle).manifest.profile.name
    bench_users = range(args.first_user, args.first_user + args.users)
    if args.key_prior:
        refuse_seen_users(args.key_prior[0], args.population_seed, bench_users, "--key-prior")
    log.info("simulating %d held-out users", args.users)
    users = prepare_users(args, profile, work)
    ctx = multiprocessing.get_context("spawn")
    rows: list[dict[str, Any]] = []
    peaks: dict[tuple[str, str], float] = {}
    skipped: list[str] = []
    for st in students:
        copy = work / f"bundle_copy_{st.bundle.name}"  # profiles are written next to the bundle: not the original
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(st.bundle, copy, ignore=shutil.ignore_patterns("profiles"))
        prior_src = tuple(args.key_prior) if args.key_prior else st.data
        if prior_src is not None and not args.no_keys and "key_prior" not in load_bundle(copy).manifest.model:
            from emgkey.edge_runtime.keyproto import KeyProtoError
            from emgkey.export.key_prior import add_key_prior, fit_key_prior

            log.info("%s: key prior from %s", st.name, prior_src[0])
            try:
                add_key_prior(
                    copy,
                    fit_key_prior(
                        load_bundle(copy),
                        *prior_src,
                        align_bands=args.key_prior_align_bands,
                        **({} if args.key_prior_sessions is None else {"sessions": args.key_prior_sessions}),
                    ),
                )
            except KeyProtoError as exc:  # e.g. a tiny dataset: calibrate without the key step
                skipped.append(f"{st.name} / key prior: {exc}")
        for i, strategy in enumerate(args.strategies):
            if strategy != "stats" and st.checkpoint is None:
                skipped.append(f"{st.name} / {strategy}: no checkpoint given")
                continue
            job = {
                "student": st.name,
                "strategy": strategy,
                "bundle": str(copy),
                "checkpoint": str(st.checkpoint) if st.checkpoint else None,
                "users": users,
                "seconds": args.seconds,
                "with_before": i == 0,
                "min_fit_s": args.min_fit_seconds,
                "budget_s": args.budget_s,
                "formats": [f for f in args.formats.split(",") if f],
                "finetune_set": finetune_overrides(args.finetune_set),
                "keys": not args.no_keys,
            }
            log.info("%s / %s: %d users x %s s", st.name, strategy, len(users), args.seconds)
            with ctx.Pool(1) as pool:
                res = pool.apply(run_job, (job,))
            rows += res["rows"]
            peaks[(st.name, strategy)] = res["peak_rss_mb"]
    summary = summarize(rows, peaks)
    result = {
        "note": NOTE,
        "data": "simulated",
        "settings": {
            "users": args.users,
            "first_user": args.first_user,
            "profile": profile,
            "seconds": args.seconds,
            "eval_seconds": args.eval_seconds,
            "budget_s": args.budget_s,
            "finetune_set": finetune_overrides(args.finetune_set),
            "strategies": args.strategies,
            "students": [_student_identity(s) for s in students],
            "machine": f"{os.cpu_count()} CPU cores (shared), 1 thread per calibration",
            # what a rebuild must match to reproduce these numbers (a retrained model on another CPU or numpy can
            # differ: docs/calibration.md, calibration_v3_keys6)
            "environment": describe_device(),
            "population_seed": args.population_seed,
            "key_prior": None if args.no_keys else (list(args.key_prior) if args.key_prior else "tiny students' data"),
            "key_prior_align_bands": args.key_prior_align_bands,
            "key_prior_sessions": args.key_prior_sessions,  # None: fit_key_prior's default
        },
        "summary": summary,
        "targets": targets(summary),
        "skipped": skipped,
        "rows": rows,
        "wall_s": round(time.perf_counter() - t_start, 1),
    }
    (out / "calibration_bench.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "calibration_bench.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
