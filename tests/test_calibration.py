"""Calibration, torch-free parts: CTC scoring, prompt targets, data checks, the input map, strategy 1.

Strategy 1 is checked on a hand-made case where the answer is known: a toy model (a linear map from
features to 99 classes, ``benchmarks.runtime_bench.ToyModel``) reads features built so that it spells
given keys; the "new user" wears the bands rotated by known electrode shifts, with a known gain and
offset per electrode. Strategy 1 must find the shifts and undo the levels.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("onnx", reason="toy bundles are built with onnx.helper")
pytest.importorskip("onnxruntime", reason="the calibration scores through the ONNX engine")

from emgkey import charset
from emgkey.benchmarks.toy_bundle import ToyModel, build_toy_bundle
from emgkey.bundle import load_bundle, read_manifest, sha256_file, write_manifest
from emgkey.edge_runtime.calib_ctc import ctc_log_likelihood, ctc_log_likelihood_batch, nll_per_char
from emgkey.edge_runtime.calib_data import (
    CalibrationDataError,
    CalibrationRecording,
    CalibrationSet,
    DataLimits,
    PromptChoice,
    PromptSpan,
    Segment,
    prompt_keys,
    prompt_targets,
)
from emgkey.edge_runtime.calibrate import (
    Acceptance,
    PopulationStats,
    StatsConfig,
    adabn_normalization,
    estimate_stats,
)
from emgkey.edge_runtime.recognizer import FeatureNormalization, Recognizer, decode_samples, roll_channels
from emgkey.errors import ConfigError
from emgkey.features import FeatureConfig, compute_features
from emgkey.profiles import ARMBAND8

BLANK = charset.BLANK


# ---------------------------------------------------------------------------------------------------------------------
# Shared helpers (also used by tests/test_calibration_store.py and tests/test_calibration_cli.py)


def toy_of(bundle_dir: Path) -> ToyModel:
    m = read_manifest(bundle_dir)
    c = m.model["config"]
    return ToyModel(
        m.profile.n_bands,
        m.profile.channels_per_band,
        m.features.n_freq,
        kernel=c["kernel"],
        seed=c["seed"],
        weight_scale=c["weight_scale"],
    )


def add_reference(bundle_dir: Path, frames: np.ndarray, windows: int = 4) -> None:
    """Give a toy bundle a verification reference (``reference.npz``) holding ``frames`` (F, nb, C, nf)."""
    from emgkey.export.verify import REFERENCE_NAME, Reference

    toy = toy_of(bundle_dir)
    feats = [x[:, None].astype(np.float32) for x in np.array_split(frames, windows)]
    ref = Reference(
        features=feats, targets=[np.zeros(0, np.int64)] * windows, streaming=[toy.reference(x) for x in feats]
    )
    path = bundle_dir / REFERENCE_NAME
    ref.save(path)
    m = read_manifest(bundle_dir)
    m.accuracy["verification"] = {
        "reference": {"path": REFERENCE_NAME, "sha256": sha256_file(path), "windows": windows}
    }
    write_manifest(bundle_dir, m)


def sim_features(seconds: float = 20.0, users: tuple[int, ...] = (900, 901)) -> np.ndarray:
    """Features of simulated armband8 users typing (population statistics for toy bundles)."""
    from emgkey.firmware_sim.simulate import simulate_session

    cfg = FeatureConfig.for_profile(ARMBAND8)
    return np.concatenate(
        [compute_features(simulate_session(ARMBAND8, u, 0, seconds / 60, 0).emg_uv(), cfg) for u in users]
    )


def coded_features(
    toy: ToyModel, keys: list[np.ndarray], rng: np.random.Generator, amp: float = 1.0
) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Features the toy reads as ``keys`` (one list per segment): (F, nb, C, nf) and each segment's frames.

    A key's frames point along the toy's weight column of that key, pauses along the blank's column, so
    the toy's logits favour the intended class by ~``amp * |w|^2`` (about 13 nats at amp 1).
    """
    w, _ = toy.weights()
    cols = w[-1]  # (D, V): the kernel tap that reads the current frame
    shape = (toy.n_bands, toy.channels, toy.n_freq)
    frames: list[np.ndarray] = []
    spans = []
    for seg in keys:
        start = len(frames)
        for k in [*(int(x) for x in seg)]:
            frames += [amp * cols[:, BLANK].reshape(shape)] * 2 + [amp * cols[:, k].reshape(shape)] * 2
        frames += [amp * cols[:, BLANK].reshape(shape)] * 3
        spans.append((start, len(frames)))
    x = np.stack(frames) + 0.05 * rng.standard_normal((len(frames), *shape))
    return x.astype(np.float32), spans


@pytest.fixture(scope="module")
def toy_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_toy_bundle(tmp_path_factory.mktemp("toy") / "bundle", "armband8", chunk_frames=4, kernel=2)


# ---------------------------------------------------------------------------------------------------------------------
# CTC scoring


def _brute_force(lp: np.ndarray, y: list[int]) -> float:
    """log p(y | lp) by enumerating every frame labelling (tiny T and K only)."""
    total = -np.inf
    for path in itertools.product(range(lp.shape[1]), repeat=len(lp)):
        collapsed = [p for i, p in enumerate(path) if p != BLANK_SMALL and (i == 0 or path[i - 1] != p)]
        if collapsed == y:
            total = np.logaddexp(total, sum(lp[t, p] for t, p in enumerate(path)))
    return float(total)


BLANK_SMALL = 2  # the blank of the tiny alphabets below


@settings(max_examples=40, deadline=None)
@given(
    T=st.integers(1, 5),
    y=st.lists(st.integers(0, 1), max_size=3),
    seed=st.integers(0, 2**16),
)
def test_ctc_likelihood_equals_brute_force(T: int, y: list[int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(T, 3))
    lp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    got = ctc_log_likelihood(lp, np.array(y, dtype=np.int64), blank=BLANK_SMALL)
    want = _brute_force(lp, y)
    if np.isinf(want):
        assert np.isinf(got) and got < 0
    else:
        assert got == pytest.approx(want, abs=1e-9)


def test_ctc_batch_equals_one_by_one_and_handles_edges() -> None:
    rng = np.random.default_rng(0)
    items = []
    for T, L in [(30, 5), (1, 0), (1, 1), (7, 7), (4, 3), (50, 0)]:
        logits = rng.normal(size=(T, 99))
        lp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        y = rng.integers(0, 98, size=L)
        items.append((lp, y))
    items.append((items[0][0], np.array([5, 5, 5, 5], dtype=np.int64)))  # repeats need blanks between them
    batch = ctc_log_likelihood_batch(items)
    single = [ctc_log_likelihood(lp, y) for lp, y in items]
    np.testing.assert_allclose(batch, single)
    # An empty target is explained by blanks only; one key in one frame by that frame's probability.
    assert batch[1] == pytest.approx(items[1][0][0, BLANK])
    assert batch[2] == pytest.approx(items[2][0][0, items[2][1][0]])
    # 7 frames for 7 keys works only if no two neighbours are equal; 3 keys with a repeat need 4 frames.
    assert np.isfinite(batch[3]) == bool(np.all(np.diff(items[3][1]) != 0))


def test_nll_per_char_prefers_emissions_that_spell_the_target() -> None:
    y = np.array(charset.str_to_labels("cat"), dtype=np.int64)
    good = np.full((9, 99), -20.0)
    good[:, BLANK] = 0.0
    for t, k in zip((1, 4, 7), y):
        good[t] = -20.0
        good[t, k] = 0.0
    wrong = np.roll(good, 1, axis=1)  # every frame's best class is another one
    assert nll_per_char([(good, y)]) < 1e-3 < nll_per_char([(wrong, y)])
    # A segment that cannot be explained (too few frames) costs `impossible` nats per key, not inf.
    assert nll_per_char([(good[:2], y)], impossible=50.0) == pytest.approx(50.0)


# ---------------------------------------------------------------------------------------------------------------------
# Prompts


def test_prompt_keys_are_what_the_simulated_typist_presses() -> None:
    """Without typos, the simulated typist presses exactly prompt_keys(prompt) (runs of one shifted key)."""
    from emgkey.firmware_sim.typist import TypingStyle, type_prompts

    style = TypingStyle(typo_rate=0.0)
    prompts = [p for _, p in PromptChoice(seed=3).choose(25)]
    checked = 0
    for text in prompts:
        if any(
            a in 'ABCDEFGHIJKLMNOPQRSTUVWXYZ!?:"()' and b in 'ABCDEFGHIJKLMNOPQRSTUVWXYZ!?:"()'
            for a, b in itertools.pairwise(text)
        ):
            continue  # two shifted keys in a row may need two Shift presses (one per hand)
        timeline = type_prompts([text], style, np.random.default_rng(0), 60.0)
        assert timeline.typed_text() == prompt_keys(text), text
        checked += 1
    assert checked >= 15
    assert prompt_keys("Hi there.") == "⇧Hi there.⏎"
    np.testing.assert_array_equal(prompt_targets("ab"), charset.str_to_labels("ab⏎"))


def test_prompts_come_from_the_prompt_corpus_and_are_deterministic() -> None:
    from emgkey.corpus import load_prompts

    a = PromptChoice(seed=1).choose(10, salt="alice")
    assert a == PromptChoice(seed=1).choose(10, salt="alice")
    assert a != PromptChoice(seed=1).choose(10, salt="bob")
    corpus = load_prompts()
    for pid, text in a:
        assert corpus[pid] == text and PromptChoice.min_chars <= len(text) <= PromptChoice.max_chars
        assert "|" not in text


@pytest.mark.parametrize("user", [1000, 1003, 1007])
def test_half_a_minute_of_simulated_typing_holds_a_fit_and_a_held_out_prompt(user: int) -> None:
    # Prompts are short enough that the simulator's slower typists (2-3 keys/s with reading and Enter) finish
    # two or more in 30 s; with 12-35 character prompts, user 1007 finished only one and was refused.
    from emgkey.edge_runtime.calib_record import simulated_recording

    choice = PromptChoice()
    rec = simulated_recording(ARMBAND8, user, 30.0, choice.choose(choice.enough_for(30.0), salt=f"user{user}"))
    cal = CalibrationSet.from_recording(rec, FeatureConfig.for_profile(ARMBAND8), DataLimits(min_fit_s=4.0))
    assert len(cal.fit) >= 1 and len(cal.heldout) >= 1, cal.summary()


def test_short_sessions_show_leading_phrases_of_corpus_sentences() -> None:
    from emgkey.corpus import load_prompts

    assert PromptChoice.for_session(30.0) == PromptChoice() == PromptChoice.for_session(60.0)
    choice = PromptChoice.for_session(15.0, seed=2)
    assert choice.phrases and choice.seed == 2
    got = choice.choose(choice.enough_for(15.0), salt="alice")
    assert len(got) == choice.enough_for(15.0) == len({t for _, t in got})
    corpus = load_prompts()
    for pid, text in got:
        whole = corpus[pid]
        assert whole.startswith(text) and (len(whole) == len(text) or whole[len(text)] in " ,;:"), (whole, text)
        assert choice.min_chars <= len(text) <= choice.max_chars and text[-1] not in ",;:"
    # hand-made cases: words up to max_chars, cut at a space, trailing punctuation dropped
    short = PromptChoice(min_chars=4, max_chars=10, phrases=True)
    assert short.candidate("It is like a dream.") == "It is like"
    assert short.candidate("Yes, my dear, said he.") == "Yes, my"
    assert short.candidate("Extraordinarily so.") is None  # the first word alone is too long
    assert short.candidate("Oh a|b c") is None


@pytest.mark.parametrize("user", [1000, 1004])
def test_fifteen_seconds_of_phrases_hold_a_fit_and_a_held_out_prompt(user: int) -> None:
    # 15 s of sentences hold one finished prompt (refused: nothing to hold out); of phrases, two or three.
    from emgkey.edge_runtime.calib_record import simulated_recording

    choice = PromptChoice.for_session(15.0)
    rec = simulated_recording(ARMBAND8, user, 15.0, choice.choose(choice.enough_for(15.0), salt=f"user{user}"))
    cal = CalibrationSet.from_recording(rec, FeatureConfig.for_profile(ARMBAND8), DataLimits())
    assert len(cal.fit) >= 1 and len(cal.heldout) >= 1, cal.summary()


# ---------------------------------------------------------------------------------------------------------------------
# The input map the runtime applies


def test_channel_shift_and_mix_in_the_manifest_form() -> None:
    rng = np.random.default_rng(0)
    frames = rng.normal(size=(5, 2, 8, 9)).astype(np.float32)
    rolled = roll_channels(frames, (1, -2))
    np.testing.assert_array_equal(rolled[:, 0], np.roll(frames[:, 0], 1, axis=1))
    np.testing.assert_array_equal(rolled[:, 1], np.roll(frames[:, 1], -2, axis=1))
    mix = rng.normal(size=(2, 8, 8)).astype(np.float32)
    scale, offset = rng.uniform(0.5, 2, size=(2, 8, 1)), rng.normal(size=(2, 8, 9))
    norm = FeatureNormalization(
        scale=scale.astype(np.float32), offset=offset.astype(np.float32), channel_shift=(1, -2), channel_mix=mix
    )
    want = np.einsum("bcd,kbdf->kbcf", mix, rolled) * scale + offset
    np.testing.assert_allclose(norm(frames), want, rtol=1e-5, atol=1e-5)
    back = FeatureNormalization.from_manifest(json.loads(json.dumps(norm.to_manifest())), (2, 8, 9))
    np.testing.assert_allclose(back(frames), norm(frames), rtol=1e-6, atol=1e-6)
    with pytest.raises(ConfigError, match="channel_shift"):
        FeatureNormalization.from_manifest({"channel_shift": [1]}, (2, 8, 9))
    with pytest.raises(ConfigError, match="channel_mix"):
        FeatureNormalization.from_manifest({"channel_mix": np.eye(8).tolist()}, (2, 8, 9))
    assert FeatureNormalization.from_manifest({"channel_shift": [0, 3]}, (2, 8, 9)).channel_shift == (0, 3)


def test_recognizer_applies_a_profile_normalization(toy_bundle: Path) -> None:
    """Streaming with a profile's map equals the toy's offline output on the mapped features."""
    bundle = load_bundle(toy_bundle)
    p = ARMBAND8
    rng = np.random.default_rng(1)
    emg = (rng.standard_normal((1200, p.n_bands, p.channels_per_band)) * 20).astype(np.float32)
    norm = {"kind": "affine", "scale": 0.5, "offset": [[[0.1]] * 8] * 2, "channel_shift": [1, -1]}
    rec = Recognizer.from_bundle(bundle, precision="fp32", normalization=norm)
    emissions, _ = decode_samples(rec, emg, [37, 100, 3])
    feats = compute_features(emg, bundle.manifest.features)
    mapped = FeatureNormalization.from_manifest(norm, feats.shape[1:])(feats)
    np.testing.assert_allclose(emissions, toy_of(toy_bundle).reference(mapped[:, None]), atol=1e-4)
    plain, _ = decode_samples(Recognizer.from_bundle(bundle, precision="fp32"), emg)
    assert np.abs(plain - emissions).max() > 0.1  # the map really changed what the model saw


# ---------------------------------------------------------------------------------------------------------------------
# Strategy 1 on a hand-made case


def _hand_made(toy_bundle: Path, shift: tuple[int, int], seed: int = 0):
    toy = toy_of(toy_bundle)
    rng = np.random.default_rng(seed)
    keys = [rng.integers(0, 80, size=n) for n in (6, 8, 5, 7, 6, 7)]
    clean, spans = coded_features(toy, keys, rng)
    population, _ = coded_features(toy, [rng.integers(0, 80, size=60)], rng)
    # The new user: bands rotated (the model's electrode c is this arm's c - shift), levels per electrode.
    gain = rng.uniform(0.6, 1.7, size=(2, 8, 1)).astype(np.float32)
    offset = rng.normal(0.0, 0.5, size=(2, 8, 1)).astype(np.float32)
    user = roll_channels(clean, tuple(-s for s in shift)) * gain + offset
    segments = [Segment("", a, b, np.asarray(k, dtype=np.int64)) for (a, b), k in zip(spans, keys)]
    cfg = FeatureConfig.for_profile(ARMBAND8)
    return CalibrationSet(user, segments, 4, cfg), clean, PopulationStats.from_features(population, "hand-made")


@pytest.mark.parametrize("shift", [(1, 0), (0, -1), (-1, 1)])
def test_strategy1_recovers_a_known_rotation_and_levels(toy_bundle: Path, shift: tuple[int, int]) -> None:
    bundle = load_bundle(toy_bundle)
    cal, clean, population = _hand_made(toy_bundle, shift)
    res = estimate_stats(bundle, cal, StatsConfig(modes=("channel", "none")), population)
    assert res.shift == shift
    assert res.mode == "channel"
    recovered = res.normalization(cal.features)
    # Levels undone up to the population's sampling noise (a few % of the feature range).
    assert np.abs(recovered - clean).mean() < 0.05 * np.abs(clean).mean()
    # Scored through the model: close to the clean data, far better than the uncalibrated user.
    clean_set = CalibrationSet(clean, cal.segments, cal.n_fit, cal.feature_config)
    from emgkey.edge_runtime.calibrate import Scorer

    none = FeatureNormalization()
    nll_clean = Scorer(bundle, clean_set.features).score(none, cal.fit)["nll"]
    nll_user = Scorer(bundle, cal.features).score(none, cal.fit)["nll"]
    assert res.fit["nll"] < nll_clean + 0.2 < nll_user
    assert res.seconds < 10.0
    assert len(res.trials) == 1 + 2 * 2 + 1  # coordinate search over 2 bands x 2 other shifts, then one more mode


def test_strategy1_needs_no_shift_when_the_bands_sit_as_trained(toy_bundle: Path) -> None:
    bundle = load_bundle(toy_bundle)
    cal, _, population = _hand_made(toy_bundle, (0, 0), seed=5)
    res = estimate_stats(bundle, cal, StatsConfig(), population)
    assert res.shift == (0, 0) and res.mode in ("channel", "channel_freq")


def test_adabn_map_matches_population_statistics() -> None:
    rng = np.random.default_rng(2)
    pop = PopulationStats.from_features(rng.normal(3.0, 2.0, size=(500, 2, 8, 9)), "test")
    user = rng.normal(-1.0, 0.5, size=(400, 2, 8, 9)).astype(np.float32)
    for mode, axes in (("channel", (0, 3)), ("channel_freq", (0,))):
        out = adabn_normalization(user, (2, 0), mode, pop)(user)
        np.testing.assert_allclose(
            out.mean(axis=axes), pop.channel_mean[..., 0] if mode == "channel" else pop.bin_mean, atol=1e-4
        )
    # A silent electrode is not amplified without bound.
    user[:, 0, 3] = 1.0
    assert adabn_normalization(user, (0, 0), "channel", pop).scale.max() <= 10.0


def test_acceptance_rule() -> None:
    rule = Acceptance()
    assert rule.judge({"nll": 2.0, "cer": 50.0}, {"nll": 2.5, "cer": 50.2})[0]
    assert not rule.judge({"nll": 2.499, "cer": 50.0}, {"nll": 2.5, "cer": 50.0})[0]  # gain below 0.5%
    assert not rule.judge({"nll": 2.0, "cer": 52.0}, {"nll": 2.5, "cer": 50.0})[0]  # CER rose
    assert not rule.judge({"nll": float("inf"), "cer": 50.0}, {"nll": 2.5, "cer": 50.0})[0]
    # key rescoring changes the text, not the NLL: a CER gain of a point or more decides, if the NLL holds
    assert rule.judge({"nll": 2.5, "cer": 48.0}, {"nll": 2.5, "cer": 50.0}, keys=True)[0]
    assert not rule.judge({"nll": 2.5, "cer": 48.0}, {"nll": 2.5, "cer": 50.0})[0]  # without keys: NLL decides
    assert not rule.judge({"nll": 2.5, "cer": 49.5}, {"nll": 2.5, "cer": 50.0}, keys=True)[0]  # gain too small
    assert not rule.judge({"nll": 2.6, "cer": 40.0}, {"nll": 2.5, "cer": 50.0}, keys=True)[0]  # NLL 4% worse


# ---------------------------------------------------------------------------------------------------------------------
# Data checks


def _recording(seconds: float = 40.0, n_prompts: int = 8, seed: int = 0) -> CalibrationRecording:
    p = ARMBAND8
    rng = np.random.default_rng(seed)
    n = int(seconds * p.sample_rate_hz)
    x = (rng.standard_normal((n, p.n_bands, p.channels_per_band)) * 20).astype(np.float32)
    edges = np.linspace(0, n, n_prompts + 1).astype(int)
    texts = [t for _, t in PromptChoice().choose(n_prompts)]
    spans = [PromptSpan(t, int(a), int(b)) for t, a, b in zip(texts, edges[:-1], edges[1:])]
    return CalibrationRecording(p, x, spans, "test")


def test_calibration_set_splits_prompts_in_time() -> None:
    cal = CalibrationSet.from_recording(_recording(), FeatureConfig.for_profile(ARMBAND8))
    assert (len(cal.fit), len(cal.heldout)) == (6, 2)
    assert cal.fit_stop <= cal.heldout[0].start  # fit statistics never see held-out frames
    assert all(a.stop <= b.start for a, b in zip(cal.segments, cal.segments[1:]))


@pytest.mark.parametrize(
    ("damage", "code"),
    [
        ("nan", "non_finite"),
        ("channels", "wrong_channels"),
        ("flat", "flat_channel"),
        ("short", "too_little_data"),
        ("gaps", "too_many_gaps"),
        ("no_prompts", "too_little_data"),
    ],
)
def test_bad_calibration_data_is_refused_with_a_clear_error(damage: str, code: str) -> None:
    rec = _recording()
    if damage == "nan":
        rec.samples[123, 1, 4] = np.nan
    elif damage == "channels":
        rec.samples = rec.samples[:, :, :6]
    elif damage == "flat":
        rec.samples[:, 0, 2] = 7.0
    elif damage == "short":
        rec = rec.head(9.0)
    elif damage == "gaps":
        rec.missing = [(0, len(rec.samples) // 5)]
    elif damage == "no_prompts":
        rec.spans = []
    with pytest.raises(CalibrationDataError) as err:
        CalibrationSet.from_recording(rec, FeatureConfig.for_profile(ARMBAND8), DataLimits())
    assert err.value.code == code
    assert f"[{code}]" in str(err.value)


def test_recording_round_trip_and_head(tmp_path: Path) -> None:
    rec = _recording(seconds=20.0, n_prompts=4)
    rec.missing = [(100, 10)]
    back = CalibrationRecording.load(rec.save(tmp_path / "rec.npz"))
    np.testing.assert_array_equal(back.samples, rec.samples)
    assert back.spans == rec.spans and back.missing == rec.missing and back.profile.name == "armband8"
    head = rec.head(10.0)
    assert head.seconds == pytest.approx(10.0) and all(s.stop <= len(head.samples) for s in head.spans)
    assert len(head.spans) == 2


def test_terminal_prompter_paces_prompts_by_time_and_keeps_only_finished_ones() -> None:
    from emgkey.edge_runtime.calib_record import TerminalPrompter

    prompts = [(1, "ab"), (2, "cde"), (3, "fghij")]
    tp = TerminalPrompter(prompts, 100.0, interactive=False, seconds_per_key=1.0, pause_s=1.0)
    n, target = 0, 700  # 7 s wanted; the loop is calib_record.record's
    shown = [(n, t) for t in tp.update(n)]
    while not tp.finished(n, target) and n < 2000:
        n += 10
        shown += [(n, t) for t in tp.update(n)]
    # "ab" + ⏎ = 3 keys: 1 + 3 s on screen; "cde" + ⏎: 1 + 4 s; then time is up, "fghij" never appears.
    assert shown == [(0, "ab"), (400, "cde")]
    assert n == 900  # the prompt on screen was finished before stopping
    spans = tp.spans(n)
    assert [(s.text, s.start, s.stop, s.prompt_id) for s in spans] == [("ab", 0, 400, 1), ("cde", 400, 900, 2)]
    # Stopped while a prompt is still on screen: that prompt is incomplete and left out.
    tp2 = TerminalPrompter(prompts, 100.0, interactive=False, seconds_per_key=1.0, pause_s=1.0)
    tp2.update(0)
    tp2.update(450)
    assert [s.text for s in tp2.spans(600)] == ["ab"]
