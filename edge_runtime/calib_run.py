"""A whole calibration: data checks, strategies, the held-out decision, the profile, activation.

``calibrate_recording(bundle, user, recording, options)`` is what ``emgkey calibrate`` runs after
recording (and what the benchmark runs on simulated recordings):

1. ``CalibrationSet.from_recording``: features, one segment per prompt, checks (a
   ``CalibrationDataError`` here means nothing is written);
2. the **current** model, what ``emgkey run --user`` runs today (the active profile, else the plain
   bundle), scored on the held-out prompts;
3. strategy 1 (``calibrate.estimate_stats``, numpy) on the base bundle; strategy 2
   (``emgkey.train.finetune_calib``, torch, imported only then) starting from its result, when asked
   for (``finetune``) or possible (``auto``: torch installed and the base checkpoint found);
4. the best strategy on the held-out slice (deployed engine, int8) is compared with the current model
   (``calibrate.Acceptance``);
5. when the bundle has a key prior (``emgkey export keyprior``), the user's key prototypes on top of the
   chosen strategy, the key vectors read through strategy 1's input map (``calib_keys``: torch-free;
   rescoring is enabled unless it adds more than one error on the held-out prompts);
6. the profile is written either way (``profile_store``: atomic, with the recording), and activated only
   when it wins.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emgkey.bundle import Bundle, load_bundle, sha256_file
from emgkey.edge_runtime.calib_data import CalibrationRecording, CalibrationSet, DataLimits
from emgkey.edge_runtime.calib_keys import calibrate_keys, heldout_cer_with_keys
from emgkey.edge_runtime.calibrate import Acceptance, Deployed, StatsConfig, estimate_stats, heldout_score
from emgkey.edge_runtime.keyproto import KeyFitConfig, KeyProtoError, bundle_key_prior
from emgkey.edge_runtime.profile_store import (
    Profile,
    ProfileError,
    ProfileStore,
    load_key_profile,
    model_fingerprint,
    open_for_run,
)
from emgkey.errors import ConfigError

log = logging.getLogger(__name__)

STRATEGIES = ("stats", "finetune", "auto")
KEYS_NAME = "keys.npz"


@dataclass
class CalibrationOptions:
    strategy: str = "auto"  # stats | finetune | auto (finetune when torch and the base checkpoint are there)
    stats: StatsConfig = field(default_factory=StatsConfig)
    limits: DataLimits = field(default_factory=DataLimits)
    acceptance: Acceptance = field(default_factory=Acceptance)
    precision: str = "int8"  # what the held-out comparison runs (as `emgkey run`)
    format: str = "onnx"
    threads: int = 1
    checkpoint: str | None = None  # strategy 2: the base model's checkpoint (default: the manifest's path)
    finetune: Any = None  # emgkey.train.finetune_calib.FinetuneConfig (None: its defaults)
    activate: bool = True
    keep_recording: bool = True
    keys: bool = True  # key prototypes when the bundle has a key prior
    key_fit: KeyFitConfig = field(default_factory=KeyFitConfig)

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"unknown strategy {self.strategy!r}: {', '.join(STRATEGIES)}")


@dataclass
class CalibrationOutcome:
    profile: Profile
    activated: bool
    current: dict[str, Any]
    candidates: dict[str, dict[str, Any]]
    seconds: float

    def summary_lines(self) -> list[str]:
        p = self.profile
        cur = self.current
        lines = [f"current model ({cur['label']}): held-out NLL/key {cur['nll']:.3f}, CER {cur['cer']:.1f}%"]
        for name, c in self.candidates.items():
            h = c["heldout"]
            lines.append(
                f"{name:<8} held-out NLL/key {h['nll']:.3f}, CER {h['cer']:.1f}%  ({c['seconds']:.1f} s compute)"
            )
        k = p.keys
        if k is not None:
            h = k["heldout"]
            state = "enabled" if k["enabled"] else "not enabled (more than one error added on the held-out prompts)"
            lines.append(
                f"keys     {k['presses']} aligned presses; held-out CER {h['cer_without']:.1f} -> "
                f"{h['cer_with']:.1f}% with key rescoring: {state}"
            )
        verdict = "activated" if self.activated else ("accepted, not activated" if p.accepted else "rejected")
        lines.append(f"profile {p.id} ({p.strategy}): {verdict}: {p.reason}")
        return lines


def resolve_checkpoint(bundle: Bundle, checkpoint: str | Path | None) -> Path:
    """The base model's checkpoint: ``checkpoint``, else the manifest's path; its hash must be the manifest's."""
    m = bundle.manifest.model
    path = Path(checkpoint) if checkpoint is not None else (Path(m["checkpoint"]) if m.get("checkpoint") else None)
    if path is None or not path.is_file():
        raise ConfigError(
            "strategy finetune needs the base model's checkpoint (the bundle holds only graphs): pass --checkpoint; "
            f"the manifest names {m.get('checkpoint')!r}"
        )
    want = m.get("checkpoint_sha256")
    if want and sha256_file(path) != want:
        raise ConfigError(f"{path} is not the checkpoint this bundle was exported from (sha256 differs)")
    return path


def finetune_available(bundle: Bundle, checkpoint: str | Path | None) -> tuple[bool, str]:
    """Whether strategy 2 can run here: torch installed and the base checkpoint found and matching."""
    if importlib.util.find_spec("torch") is None:
        return False, "torch is not installed"
    try:
        resolve_checkpoint(bundle, checkpoint)
    except ConfigError as exc:
        return False, str(exc)
    return True, ""


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _with_current_keys(
    current: Deployed, prof: Profile, cal: CalibrationSet, score: dict[str, Any], run_kw: dict[str, Any]
) -> dict[str, Any]:
    """The current profile's held-out CER with its key rescoring, if it has enabled keys (else ``score``)."""
    try:
        kp = load_key_profile(prof)
    except ProfileError as exc:
        log.warning("the active profile's keys cannot be used (%s): it is scored without them", exc)
        return score
    if kp is None:
        return score
    cer = heldout_cer_with_keys(current.bundle, current.normalization, cal, kp, **run_kw)
    return {**score, "cer_greedy": score["cer"], "cer": cer}


def _keys_on_base(
    bundle: Bundle,
    cal: CalibrationSet,
    cur_score: dict[str, Any],
    tmp: Path,
    opt: CalibrationOptions,
    run_kw: dict[str, Any],
) -> tuple[dict[str, Any], dict[str, Any], tuple[bool, str]] | None:
    """Candidate "keys": the base model with its own input map plus the user's keys, if that is accepted.

    Returns (candidate, keys entry, judgement) and leaves its ``keys.npz`` in ``tmp``; None (and ``tmp`` as it
    was) when the keys do not help the base model enough.
    """
    t0 = time.perf_counter()
    base = {"normalization": {"kind": "identity"}, "bundle": None}
    keys = _key_step(bundle, base, "keys", tmp, cal, opt, run_kw, name="keys_base.npz")
    if not keys or not keys.get("enabled"):
        (tmp / "keys_base.npz").unlink(missing_ok=True)
        return None
    score = heldout_score(Deployed(bundle, base["normalization"], "keys"), cal, **run_kw)
    verdict = opt.acceptance.judge({**score, "cer": keys["heldout"]["cer_with"]}, cur_score, keys=True)
    if not verdict[0]:
        (tmp / "keys_base.npz").unlink()
        return None
    os.replace(tmp / "keys_base.npz", tmp / KEYS_NAME)
    keys["path"] = KEYS_NAME
    cand = {**base, "info": {"keys": "base model, its own input map"}, "seconds": time.perf_counter() - t0}
    cand["heldout"] = score
    return cand, keys, verdict


def _key_step(
    bundle: Bundle,
    best: dict[str, Any],
    strategy: str,
    tmp: Path,
    cal: CalibrationSet,
    opt: CalibrationOptions,
    run_kw: dict[str, Any],
    name: str = KEYS_NAME,
    key_normalization: dict[str, Any] | None = None,
    gate_model: tuple[Bundle, dict[str, Any] | None] | None = None,
) -> dict[str, Any] | None:
    """Key prototypes for the chosen strategy, written to ``tmp/<name>``; None when the bundle has no prior.
    ``strategy``: the candidate whose model the keys rescore (its decoder settings: ``KeyFitConfig.for_strategy``);
    ``key_normalization``: the input map the key vectors read (strategy 1's; None: the strategy's own);
    ``gate_model``: the model whose held-out emissions decide whether the keys are enabled (None: the chosen).

    A prior that fails its checks, or too few aligned presses, leaves the profile without keys (and says why
    in its metrics): key rescoring is an addition, never a reason to lose the rest of a calibration.
    """
    try:
        prior = bundle_key_prior(bundle)
    except KeyProtoError as exc:
        log.warning("key prior unusable: %s", exc)
        return {"skipped": str(exc)}
    if prior is None:
        return None
    own = bundle if best["bundle"] is None else load_bundle(tmp / best["bundle"])
    try:
        res = calibrate_keys(
            own,
            best["normalization"],
            cal,
            prior,
            opt.key_fit.for_strategy(strategy),
            key_normalization=key_normalization,
            gate_model=gate_model,
            **run_kw,
        )
    except KeyProtoError as exc:
        log.warning("no key profile: %s", exc)
        return {"skipped": str(exc)}
    path = res.profile.save(tmp / name)
    return res.manifest_entry(name, sha256_file(path))


def calibrate_recording(
    bundle: Bundle, user: str, recording: CalibrationRecording, options: CalibrationOptions | None = None
) -> CalibrationOutcome:
    opt = options or CalibrationOptions()
    t_start = time.perf_counter()
    m = bundle.manifest
    store = ProfileStore(bundle.root, user, manifest=m)
    store.remove_stale_partials()
    cal = CalibrationSet.from_recording(recording, m.features, opt.limits)
    run_kw = dict(precision=opt.precision, format=opt.format, threads=opt.threads)

    try:
        current_bundle, current_profile = open_for_run(bundle, user)
    except ProfileError as exc:  # e.g. the bundle's model was replaced since: its profiles no longer apply
        log.warning("the active profile of %s cannot be used (%s): comparing with the plain bundle", user, exc)
        current_bundle, current_profile = bundle, None
    current = Deployed(
        current_bundle,
        current_profile.normalization if current_profile is not None else None,
        f"profile {current_profile.id}" if current_profile is not None else "plain bundle",
    )
    cur_score: dict[str, Any] = {"label": current.label, **heldout_score(current, cal, **run_kw)}
    if current_profile is not None and opt.keys:  # the current profile decodes with its keys: score it so
        cur_score = _with_current_keys(current, current_profile, cal, cur_score, run_kw)

    want_ft = opt.strategy in ("finetune", "auto")
    if want_ft:
        ok, why = finetune_available(bundle, opt.checkpoint)
        if not ok:
            if opt.strategy == "finetune":
                raise ConfigError(f"strategy finetune cannot run: {why}")
            log.info("strategy 2 skipped (%s): strategy 1 only", why)
            want_ft = False

    candidates: dict[str, dict[str, Any]] = {}
    with store.staging() as tmp:
        t0 = time.perf_counter()
        stats = estimate_stats(bundle, cal, opt.stats, threads=opt.threads)
        stats_norm = stats.normalization.to_manifest()
        candidates["stats"] = {
            "normalization": stats_norm,
            "bundle": None,
            "info": stats.describe(),
            "seconds": time.perf_counter() - t0,
        }
        candidates["stats"]["heldout"] = heldout_score(Deployed(bundle, stats_norm, "stats"), cal, **run_kw)
        if want_ft:
            from emgkey.train import finetune_calib as ft

            t0 = time.perf_counter()
            res = ft.finetune(bundle, cal, stats.normalization, opt.checkpoint, opt.finetune)
            own: Bundle = bundle
            rel = None
            if res.model_changed:
                ft.export_calibrated_bundle(res, bundle, cal, tmp / "bundle", opt.finetune, opt.checkpoint)
                own, rel = load_bundle(tmp / "bundle"), "bundle"
            info = dict(res.info)
            info["peak_rss_mb"] = round(_peak_rss_mb(), 1)
            candidates["finetune"] = {
                "normalization": res.normalization,
                "bundle": rel,
                "info": info,
                "seconds": time.perf_counter() - t0,
                "heldout": heldout_score(Deployed(own, res.normalization, "finetune"), cal, **run_kw),
            }
        best_name = min(candidates, key=lambda k: candidates[k]["heldout"]["nll"])
        if best_name != "finetune" and (tmp / "bundle").exists():
            import shutil

            shutil.rmtree(tmp / "bundle")
        for name, c in candidates.items():
            if name != best_name:
                c["bundle"] = None
        best = candidates[best_name]
        # the key vectors read strategy 1's map whichever strategy won, and strategy 2 (early-stopped on the
        # held-out prompts) leaves the keys' enabling to strategy 1's model (calib_keys' docstring says why)
        key_norm = candidates["stats"]["normalization"]
        gate = (bundle, key_norm) if best_name == "finetune" else None
        keys = (
            _key_step(bundle, best, best_name, tmp, cal, opt, run_kw, key_normalization=key_norm, gate_model=gate)
            if opt.keys
            else None
        )
        with_keys = bool(keys and keys.get("enabled"))
        new_score = dict(best["heldout"])
        if with_keys:
            assert keys is not None
            new_score["cer"] = keys["heldout"]["cer_with"]  # what the profile would decode
        accepted, reason = opt.acceptance.judge(new_score, cur_score, keys=with_keys)
        if not accepted and keys is not None and "path" in keys:
            # The strategies did not win, but the user's keys may still help the base model as it is.
            alt = _keys_on_base(bundle, cal, cur_score, tmp, opt, run_kw)
            if alt is not None:
                best_name, best, keys, (accepted, reason) = "keys", alt[0], alt[1], alt[2]
                candidates["keys"] = best
                for c in candidates.values():
                    c["bundle"] = None
                if (tmp / "bundle").exists():
                    import shutil

                    shutil.rmtree(tmp / "bundle")
        if opt.keep_recording:
            recording.save(tmp / "recording.npz")
        metrics = {
            "data": cal.summary(),
            "recording_seconds": round(recording.seconds, 2),
            "source": recording.source,
            "current": cur_score,
            "candidates": {
                k: {"heldout": v["heldout"], "seconds": round(v["seconds"], 3), "info": v["info"]}
                for k, v in candidates.items()
            },
            "chosen": best_name,
            "keys": keys,
            "peak_rss_mb": round(_peak_rss_mb(), 1),
            "seconds_total": round(time.perf_counter() - t_start, 2),
        }
        profile = Profile(
            id="",
            user=user,
            created_unix=time.time(),
            strategy=best_name,
            base_fingerprint=model_fingerprint(m),
            normalization=best["normalization"],
            accepted=accepted,
            reason=reason,
            bundle=best["bundle"],
            keys=keys if keys is not None and "path" in keys else None,
            metrics=metrics,
        )
        profile = store.commit(tmp, profile)
    activated = False
    if accepted and opt.activate:
        store.activate(profile.id)
        activated = True
    return CalibrationOutcome(
        profile=profile,
        activated=activated,
        current=cur_score,
        candidates={k: {"heldout": v["heldout"], "seconds": v["seconds"]} for k, v in candidates.items()},
        seconds=time.perf_counter() - t_start,
    )
