"""``emgkey calibrate`` end to end: sim://, a saved recording, serial through a pty, then ``emgkey run --user``.

The decisive case uses an oracle toy model (``KeyedToyModel``: key ``k`` is a burst on electrode slot
``k``) and a new user who wears both bands rotated: uncalibrated, every burst is read as the neighbouring
electrode's key; after ``emgkey calibrate`` the user's ``emgkey run`` decodes what was typed.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnx", reason="toy bundles are built with onnx.helper")
pytest.importorskip("onnxruntime", reason="the calibration scores through the ONNX engine")

from test_calibration import add_reference, sim_features

from emgkey.benchmarks.toy_bundle import KeyedToyModel, build_toy_bundle, keyed_emg
from emgkey.cli import main
from emgkey.edge_runtime.calib_data import CalibrationRecording, PromptChoice, PromptSpan
from emgkey.edge_runtime.keyproto import KeyFitConfig, KeyProfile, KeyProtoError
from emgkey.edge_runtime.profile_store import ProfileStore, load_key_profile
from emgkey.features import FeatureConfig, compute_features
from emgkey.metrics import cer
from emgkey.profiles import ARMBAND8

# Simulated user 69 types fast (median 0.16 s between keys): a 40 s calibration holds several prompts.
# 32 unshifted keys, one per electrode slot of armband8 (2 bands x 8 electrodes).
KEYS = "etaoinsrhldcumfpgwybvkxjqz,.'-/;"


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = build_toy_bundle(tmp_path_factory.mktemp("toy") / "bundle", "armband8", chunk_frames=4, kernel=2)
    add_reference(out, sim_features(seconds=10.0, users=(900,)))
    return out


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = KeyedToyModel(ARMBAND8.n_bands, ARMBAND8.channels_per_band, 9, keys=KEYS)
    out = build_toy_bundle(tmp_path_factory.mktemp("keyed") / "bundle", "armband8", chunk_frames=4, model=model)
    population = keyed_emg(ARMBAND8, 40.0, keys=KEYS, seed=100).emg
    add_reference(out, compute_features(population, FeatureConfig.for_profile(ARMBAND8)))
    return out


def _rotated_recording(seconds: float, shift: tuple[int, int], seed: int, per_prompt: int = 7):
    """A keyed recording worn rotated: this arm's electrode c carries what the model expects at c + shift."""
    rec = keyed_emg(ARMBAND8, seconds, keys=KEYS, seed=seed)
    emg = rec.emg.copy()
    for b, s in enumerate(shift):
        emg[:, b] = np.roll(rec.emg[:, b], -s, axis=1)
    spans = []
    groups = [rec.keys[i : i + per_prompt] for i in range(0, len(rec.keys), per_prompt)]
    for i, g in enumerate(groups[:-1]):
        start = 0 if i == 0 else g[0][1] - 20
        stop = groups[i + 1][0][1] - 20
        spans.append(PromptSpan("".join(k for k, _, _ in g), int(start), int(stop)))
    return emg, rec.target, spans


def _write_session(path: Path, emg_uv: np.ndarray) -> Path:
    from emgkey.session import write_session

    counts = np.clip(np.rint(emg_uv / ARMBAND8.adc_scale_uv_per_count), -32767, 32767).astype(np.int16)
    ts = 1.7e9 + np.arange(len(counts)) / ARMBAND8.sample_rate_hz
    return write_session(
        path,
        profile=ARMBAND8,
        timestamps=ts,
        emg=counts,
        keystrokes=[],
        prompts=[],
        session_name=path.stem,
        user="test",
    )


def _run_text(capsys: pytest.CaptureFixture[str], bundle: Path, source: str, *extra: str) -> str:
    rc = main(["run", "--bundle", str(bundle), "--source", source, "--no-endpoint", "--status", "off", *extra])
    assert rc == 0
    return "".join(capsys.readouterr().out.split("\n"))


def test_calibrate_then_run_decodes_a_rotated_user(keyed: Path, tmp_path: Path, capsys) -> None:
    shift = (1, -1)
    emg, _, spans = _rotated_recording(36.0, shift, seed=1)
    rec_path = CalibrationRecording(ARMBAND8, emg, spans, "keyed test").save(tmp_path / "calib.npz")
    rc = main(
        [
            "calibrate",
            "--bundle",
            str(keyed),
            "--user",
            "carol",
            "--recording",
            str(rec_path),
            "--strategy",
            "stats",
            "--json",
        ]
    )
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["accepted"] and out["activated"], out["reason"]
    assert out["normalization"]["channel_shift"] == list(shift)
    assert out["metrics"]["candidates"]["stats"]["seconds"] < 10.0

    # Later typing by the same user (other keys), through the recorded-file source, as on the device.
    eval_emg, target, _ = _rotated_recording(15.0, shift, seed=2)
    session = _write_session(tmp_path / "eval.hdf5", eval_emg)
    url = f"replay://{session}?speed=max"
    calibrated = _run_text(capsys, keyed, url, "--user", "carol")
    plain = _run_text(capsys, keyed, url, "--user", "carol", "--profile", "base")
    assert cer(calibrated, target) < 10.0 < 50.0 < cer(plain, target)

    # Rollback: the plain bundle again.
    assert main(["calibrate", "--bundle", str(keyed), "--user", "carol", "--rollback"]) == 0
    assert ProfileStore(keyed, "carol").active() is None
    assert _run_text(capsys, keyed, url, "--user", "carol") == plain


def test_calibrate_on_a_simulated_new_user(toy: Path, capsys) -> None:
    rc = main(
        [
            "calibrate",
            "--bundle",
            str(toy),
            "--user",
            "dave",
            "--source",
            "sim://?user=69&speed=max",
            "--seconds",
            "40",
            "--strategy",
            "stats",
            "--json",
        ]
    )
    assert rc == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out[captured.out.index("{") :])
    shown = [line for line in captured.out.splitlines() if line.startswith("[")]
    assert len(shown) >= 3  # the prompts were shown as the simulated user reached them
    data = out["metrics"]["data"]
    assert data["prompts_fit"] >= 2 and data["prompts_heldout"] >= 1 and data["seconds_fit"] >= 8.0
    store = ProfileStore(toy, "dave")
    [prof] = store.profiles()
    assert (store.active_id() == prof.id) == out["activated"] == (out["accepted"] and True)
    rec = CalibrationRecording.load(prof.path / "recording.npz")
    assert rec.seconds == pytest.approx(40.0) and len(rec.spans) >= 3
    # Every prompt the user typed is one the calibration chose from the prompt corpus.
    chosen = {t for _, t in PromptChoice().choose(PromptChoice().enough_for(40.0), salt="dave")}
    assert {s.text for s in rec.spans} <= chosen
    assert main(["calibrate", "--bundle", str(toy), "--user", "dave", "--list"]) == 0
    assert prof.id in capsys.readouterr().out


def test_too_little_data_is_a_clear_error_and_writes_nothing(toy: Path, capsys) -> None:
    rc = main(
        [
            "calibrate",
            "--bundle",
            str(toy),
            "--user",
            "erin",
            "--source",
            "sim://?user=5&speed=max",
            "--seconds",
            "6",
            "--strategy",
            "stats",
        ]
    )
    assert rc == 2
    assert "[too_little_data]" in capsys.readouterr().err
    assert not (toy / "profiles" / "erin").exists()


def test_a_device_with_other_channels_is_refused(toy: Path, tmp_path: Path, capsys) -> None:
    rec = CalibrationRecording(ARMBAND8, np.ones((4000, 2, 6), np.float32), [], "bad")
    rc = main(["calibrate", "--bundle", str(toy), "--user", "erin", "--recording", str(rec.save(tmp_path / "r.npz"))])
    assert rc == 2 and "[wrong_channels]" in capsys.readouterr().err


@pytest.mark.pty
def test_calibrate_through_the_serial_link_of_a_simulated_armband(toy: Path, capsys) -> None:
    """The simulator's firmware on a pty, its user typing the calibration prompts; the real serial driver."""
    from emgkey.firmware_sim.firmware import ArmbandFirmware, ArraySource
    from emgkey.firmware_sim.link import FirmwareRunner, PtyLink
    from emgkey.firmware_sim.simulate import simulate_session

    seconds, user = 40.0, "frank"  # simulated user 88 is a fast typist: several prompts in 40 s
    choice = PromptChoice()
    prompts = [t for _, t in choice.choose(choice.enough_for(seconds), salt=user)]
    session = simulate_session(ARMBAND8, 88, 0, seconds / 60, 0, prompts)
    fw = ArmbandFirmware(ARMBAND8, ArraySource(session.emg))
    with PtyLink() as link, FirmwareRunner(fw, link.master_fd, realtime=False):
        rc = main(
            [
                "calibrate",
                "--bundle",
                str(toy),
                "--user",
                user,
                "--source",
                f"serial://{link.path}",
                "--sim-typist",
                "user=88&seed=0",
                "--seconds",
                str(seconds),
                "--strategy",
                "stats",
            ]
        )
    assert rc == 0
    err = capsys.readouterr().err
    assert "complete prompts" in err
    [prof] = ProfileStore(toy, user).profiles()
    rec = CalibrationRecording.load(prof.path / "recording.npz")
    np.testing.assert_allclose(rec.samples, session.emg_uv()[: len(rec.samples)])  # every sample, in order
    assert [s.text for s in rec.spans] == [p["payload"]["text"] for p in session.prompts][: len(rec.spans)]


def test_strategy_finetune_needs_torch_and_the_checkpoint(toy: Path, capsys) -> None:
    rc = main(
        [
            "calibrate",
            "--bundle",
            str(toy),
            "--user",
            "gina",
            "--source",
            "sim://?user=6&speed=max",
            "--seconds",
            "30",
            "--strategy",
            "finetune",
        ]
    )
    assert rc == 2
    assert "finetune cannot run" in capsys.readouterr().err
    assert not (toy / "profiles" / "gina").exists() or not ProfileStore(toy, "gina").profiles()


def _add_keyed_prior(bundle: Path) -> None:
    """A key prior fitted, as ``emgkey export keyprior`` does, on a keyed population recording (any key count)."""
    from emgkey import charset
    from emgkey.bundle import load_bundle
    from emgkey.edge_runtime.calib_data import Segment
    from emgkey.edge_runtime.calibrate import Deployed, Scorer
    from emgkey.edge_runtime.keyproto import KeyFeatureSpec, KeyPrior, ctc_peaks, key_vectors
    from emgkey.export.key_prior import add_key_prior

    b = load_bundle(bundle)
    m = b.manifest
    xs, ys = [], []
    for seed in (100, 101):
        pop = keyed_emg(ARMBAND8, 60.0, keys=KEYS, seed=seed)
        feats = compute_features(pop.emg, m.features)
        y = np.asarray(charset.str_to_labels(pop.target), np.int64)
        norm = Deployed(b, None, "base").input_map()
        lp = Scorer(b, feats, use="auto", precision="fp32").emissions(norm, Segment(pop.target, 0, len(feats), y))
        peaks = ctc_peaks(lp, y)
        ok = peaks >= 0
        xs.append(key_vectors(norm(feats), peaks[ok], KeyFeatureSpec(), m.features.frame_rate_hz))
        ys.append(y[ok])
    shape = (m.profile.n_bands, m.profile.channels_per_band, m.features.n_freq)
    add_key_prior(bundle, KeyPrior.fit(xs, ys, KeyFeatureSpec(), m.features.frame_rate_hz, shape, min_count=3))


def test_key_prototypes_are_calibrated_kept_with_the_profile_and_used_by_run(
    keyed: Path, tmp_path: Path, capsys
) -> None:
    import shutil

    bundle = tmp_path / "bundle"
    shutil.copytree(keyed, bundle, ignore=shutil.ignore_patterns("profiles"))
    _add_keyed_prior(bundle)
    shift = (1, -1)
    emg, _, spans = _rotated_recording(40.0, shift, seed=3)
    rec_path = CalibrationRecording(ARMBAND8, emg, spans, "keyed test").save(tmp_path / "calib.npz")
    args = ["calibrate", "--bundle", str(bundle), "--user", "erin", "--recording", str(rec_path)]
    assert main([*args, "--strategy", "stats", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    keys = out["keys"]
    assert keys is not None and keys["presses"] >= 20 and isinstance(keys["enabled"], bool)
    h = keys["heldout"]
    assert keys["enabled"] == (h["errors_with"] <= h["errors_without"] + 1)
    prof = ProfileStore(bundle, "erin").active()
    assert prof is not None and (prof.path / "keys.npz").is_file()
    # the key vectors read strategy 1's map (here also the model's), stored in the key profile (format 3)
    kp = KeyProfile.load(prof.path / "keys.npz")
    assert kp.input_map == prof.normalization
    assert kp.lam == KeyFitConfig().lam  # strategy 1's decoder settings (a fine-tuned model has its own)

    eval_emg, target, _ = _rotated_recording(15.0, shift, seed=4)
    url = f"replay://{_write_session(tmp_path / 'eval.hdf5', eval_emg)}?speed=max"
    without = _run_text(capsys, bundle, url, "--user", "erin", "--no-keys")
    assert cer(without, target) < 10.0
    # Whether or not the held-out slice enabled it, rescoring runs when the profile says so.
    data = json.loads((prof.path / "profile.json").read_text())
    data["keys"]["enabled"] = True
    (prof.path / "profile.json").write_text(json.dumps(data))
    with_keys = _run_text(capsys, bundle, url, "--user", "erin")
    assert cer(with_keys, target) < 15.0  # the oracle's own keys are the user's: rescoring keeps them
    assert KeyProfile.load(prof.path / "keys.npz").adapt is not None  # the keys can learn in use, if asked
    learning = _run_text(capsys, bundle, url, "--user", "erin", "--learn-keys")
    assert cer(learning, target) < 15.0

    # A damaged keys.npz is refused with a clear error; --no-keys still runs the rest of the profile.
    (prof.path / "keys.npz").write_bytes(b"not an npz")
    rc = main(["run", "--bundle", str(bundle), "--source", url, "--no-endpoint", "--status", "off", "--user", "erin"])
    assert rc == 2 and "keys_corrupt" in capsys.readouterr().err
    assert _run_text(capsys, bundle, url, "--user", "erin", "--no-keys") == without

    # A profile with enabled keys is the current model of the next calibration: scored with its keys.
    (prof.path / "keys.npz").unlink()
    with pytest.raises(Exception, match="keys_corrupt"):
        load_key_profile(prof)
    assert main([*args, "--strategy", "stats", "--json"]) == 0  # the damaged keys: scored without them
    assert "cer_greedy" not in json.loads(capsys.readouterr().out)["metrics"]["current"]
    store = ProfileStore(bundle, "erin")
    newest = store.profiles()[-1]
    data = json.loads((newest.path / "profile.json").read_text())
    data["keys"]["enabled"] = True
    (newest.path / "profile.json").write_text(json.dumps(data))
    if store.active_id() != newest.id:
        data["accepted"] = True
        (newest.path / "profile.json").write_text(json.dumps(data))
        store.activate(newest.id)
    assert main([*args, "--strategy", "stats", "--json"]) == 0
    current = json.loads(capsys.readouterr().out)["metrics"]["current"]
    assert "cer_greedy" in current and current["label"] == f"profile {newest.id}"

    # --no-keys: step 3 is skipped even though the bundle has a prior
    assert main([*args, "--strategy", "stats", "--json", "--no-keys", "--no-activate"]) == 0
    assert json.loads(capsys.readouterr().out)["keys"] is None
    assert not (store.profiles()[-1].path / "keys.npz").exists()


def test_keys_alone_on_the_base_model_when_no_strategy_wins(keyed: Path, tmp_path: Path) -> None:
    """Strategies that lose on the held-out prompts leave one more candidate: the base model with the keys."""
    import shutil

    from emgkey.bundle import load_bundle, sha256_file
    from emgkey.edge_runtime.calib_run import CalibrationOptions, calibrate_recording
    from emgkey.edge_runtime.calibrate import Acceptance

    class BaseWithKeysOnly(Acceptance):  # reject every changed model; take the base model if its keys help
        def judge(self, new: dict, current: dict, keys: bool = False) -> tuple[bool, str]:
            ok = keys and new["nll"] == current["nll"] and new["cer"] <= current["cer"]
            return ok, "base with keys" if ok else "rejected by the test's rule"

    bundle = tmp_path / "bundle"
    shutil.copytree(keyed, bundle, ignore=shutil.ignore_patterns("profiles"))
    _add_keyed_prior(bundle)
    emg, _, spans = _rotated_recording(40.0, (1, -1), seed=5)  # strategy 1 finds the shift: another model
    rec = CalibrationRecording(ARMBAND8, emg, spans, "keyed test")
    opts = CalibrationOptions(strategy="stats", acceptance=BaseWithKeysOnly())
    out = calibrate_recording(load_bundle(bundle), "frank", rec, opts)
    p = out.profile
    assert p.keys is not None and p.keys["enabled"], p.metrics["keys"]
    assert p.strategy == "keys" and p.accepted and out.activated, p.reason
    assert p.bundle is None and p.normalization == {"kind": "identity"}
    assert sha256_file(p.path / "keys.npz") == p.keys["sha256"] and not (p.path / "keys_base.npz").exists()
    assert set(out.candidates) == {"stats", "keys"}
    assert KeyProfile.load(p.path / "keys.npz").input_map == {"kind": "identity"}  # the base model's own map


def test_key_vectors_can_read_another_map_than_the_models(keyed: Path, tmp_path: Path) -> None:
    """Under strategy 2 the keys read strategy 1's map: ``calibrate_keys(key_normalization=...)`` uses and
    stores that map, and the held-out check reads the features through it."""
    import shutil

    from emgkey.bundle import load_bundle
    from emgkey.edge_runtime.calib_data import CalibrationSet
    from emgkey.edge_runtime.calib_keys import calibrate_keys, heldout_cer_with_keys
    from emgkey.edge_runtime.keyproto import bundle_key_prior

    bundle = tmp_path / "bundle"
    shutil.copytree(keyed, bundle, ignore=shutil.ignore_patterns("profiles"))
    _add_keyed_prior(bundle)
    b = load_bundle(bundle)
    emg, _, spans = _rotated_recording(40.0, (0, 0), seed=6)
    cal = CalibrationSet.from_recording(CalibrationRecording(ARMBAND8, emg, spans, "t"), b.manifest.features)
    prior = bundle_key_prior(b)
    assert prior is not None
    model_map = {"kind": "identity"}
    key_map = {"kind": "affine", "scale": 1.0, "offset": 3.0}  # a level shift: the centred key vectors ignore it
    ident = calibrate_keys(b, model_map, cal, prior)
    other = calibrate_keys(b, model_map, cal, prior, key_normalization=key_map)
    assert ident.profile.input_map == {"kind": "identity"}
    assert other.profile.input_map is not None and other.profile.input_map["kind"] == "affine"
    np.testing.assert_allclose(other.profile.centre, ident.profile.centre + 3.0, atol=1e-4)
    assert other.heldout == ident.heldout
    assert heldout_cer_with_keys(b, model_map, cal, other.profile) == ident.heldout["cer_with"]
    twice = {"kind": "affine", "scale": 2.0, "offset": 0.0}
    doubled = calibrate_keys(b, model_map, cal, prior, key_normalization=twice)
    np.testing.assert_allclose(doubled.profile.centre, 2 * ident.profile.centre, rtol=1e-4, atol=1e-4)

    # the gate: another model's held-out emissions decide whether the keys are enabled (strategy 1's, under 2)
    same = calibrate_keys(b, model_map, cal, prior, gate_model=(b, model_map))
    assert same.gate == same.heldout and same.enabled == ident.enabled and ident.gate is None
    from emgkey.edge_runtime.calib_keys import keys_help

    blind = calibrate_keys(b, model_map, cal, prior, gate_model=(b, {"kind": "affine", "scale": 0.0, "offset": 0.0}))
    assert blind.gate is not None and blind.gate != blind.heldout and blind.heldout == ident.heldout
    assert blind.enabled == keys_help(blind.gate)
    assert blind.manifest_entry("k.npz", "x")["gate"] == blind.gate and "gate" not in ident.manifest_entry("k", "x")


@pytest.mark.parametrize("strategy", ["stats", "finetune", "keys"])
def test_the_key_step_fits_with_the_settings_of_the_model_it_rescores(monkeypatch, tmp_path: Path, strategy) -> None:
    from emgkey.edge_runtime import calib_run

    seen = {}

    def fake_calibrate_keys(own, normalization, cal, prior, cfg, **kw):
        seen["cfg"] = cfg
        raise KeyProtoError("stop here")

    monkeypatch.setattr(calib_run, "bundle_key_prior", lambda bundle: object())
    monkeypatch.setattr(calib_run, "calibrate_keys", fake_calibrate_keys)
    opt = calib_run.CalibrationOptions(key_fit=KeyFitConfig(lam_finetuned=0.2, blank_offset_finetuned=3.0))
    best = {"bundle": None, "normalization": None}
    out = calib_run._key_step(object(), best, strategy, tmp_path, None, opt, {})
    assert out == {"skipped": "stop here"}  # a failed key step never costs the rest of the calibration
    want = (0.2, 3.0) if strategy == "finetune" else (opt.key_fit.lam, opt.key_fit.blank_offset)
    assert (seen["cfg"].lam, seen["cfg"].blank_offset) == want
