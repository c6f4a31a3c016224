"""Recognizer: streamed emissions equal the offline graph over offline features, whatever the blocks;
gaps, restarts, normalization, endpoints, timestamps; sinks; and ``emgkey run`` end to end."""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("onnx", reason="test bundles are built with onnx.helper")
pytest.importorskip("onnxruntime", reason="the ONNX engine needs onnxruntime")

from emgkey import charset
from emgkey.benchmarks.toy_bundle import ToyModel, build_toy_bundle
from emgkey.bundle import load_bundle
from emgkey.decoding import CTCGreedyDecoder, greedy_decode
from emgkey.edge_runtime.endpoint import EndpointConfig, EndpointDetector, EndpointRule
from emgkey.edge_runtime.engines import open_engine
from emgkey.edge_runtime.recognizer import (
    GapPolicy,
    Recognizer,
    RecognizerConfig,
    Result,
    StreamOverflowError,
    decode_samples,
)
from emgkey.edge_runtime.sinks import (
    JsonlSink,
    KeyboardSink,
    MultiSink,
    StdoutSink,
    TextTracker,
    text_edit,
)
from emgkey.errors import ConfigError
from emgkey.features import compute_features

REPO = Path(__file__).resolve().parents[1]


def _toy(bundle) -> ToyModel:
    m = bundle.manifest
    c = m.model["config"]
    return ToyModel(
        m.profile.n_bands,
        m.profile.channels_per_band,
        m.features.n_freq,
        kernel=c["kernel"],
        seed=c["seed"],
        weight_scale=c["weight_scale"],
    )


def _emg(bundle, seconds: float, seed: int = 0) -> np.ndarray:
    """(T, n_bands, C) float32 microvolts: noise with bursts, so the toy emits both keys and blanks."""
    p = bundle.manifest.profile
    T = int(seconds * p.sample_rate_hz)
    rng = np.random.default_rng(seed)
    envelope = np.repeat(rng.uniform(0.2, 30.0, size=T // 20 + 1), 20)[:T, None, None]
    return (rng.standard_normal((T, p.n_bands, p.channels_per_band)) * envelope).astype(np.float32)


def _offline(bundle, emg: np.ndarray, scale=None, offset=None) -> np.ndarray:
    feats = compute_features(emg, bundle.manifest.features)  # (F, nb, C, n_freq)
    if scale is not None:
        feats = feats * scale + offset
    return _toy(bundle).reference(feats[:, None].astype(np.float32))


def _recognizer(bundle, **cfg) -> Recognizer:
    m = bundle.manifest
    engine = open_engine(bundle, precision="fp32")
    return Recognizer(engine, m.features, CTCGreedyDecoder, m, RecognizerConfig(**cfg))


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return load_bundle(
        build_toy_bundle(tmp_path_factory.mktemp("toy"), chunk_frames=4, kernel=3, int8=False, weight_scale=0.05)
    )


def test_streamed_emissions_and_text_equal_offline(toy):
    emg = _emg(toy, 4.0)
    ref = _offline(toy, emg)
    em, final = decode_samples(_recognizer(toy), emg, [37, 5, 200, 1, 64])
    np.testing.assert_allclose(em, ref, atol=1e-4)
    assert final.is_final and final.labels == greedy_decode(ref)
    assert 3 < len(final.labels) < len(ref), "the toy should type something, but not on every frame"


@settings(max_examples=12, deadline=None)
@given(sizes=st.lists(st.integers(1, 90), min_size=1, max_size=8))
def test_any_block_sizes_give_identical_emissions_and_text(toy_bundle_for_hypothesis, sizes):
    bundle, emg, ref_em, ref_labels = toy_bundle_for_hypothesis
    em, final = decode_samples(_recognizer(bundle), emg, sizes)
    np.testing.assert_allclose(em, ref_em, atol=1e-4)
    assert final.labels == ref_labels


@pytest.fixture(scope="module")
def toy_bundle_for_hypothesis(toy):
    emg = _emg(toy, 2.0, seed=5)
    ref = _offline(toy, emg)
    return toy, emg, ref, greedy_decode(ref)


def test_fixed_chunk_graph_streams_like_offline(tmp_path):
    b = load_bundle(build_toy_bundle(tmp_path, chunk_frames=6, fixed_chunk=True, int8=False, weight_scale=0.05))
    emg = _emg(b, 2.0, seed=2)
    em, _ = decode_samples(_recognizer(b), emg, [33])
    np.testing.assert_allclose(em, _offline(b, emg), atol=1e-4)  # the padded last chunk's extra frames dropped


def test_timestamps_follow_the_declared_output_delay(tmp_path):
    b = load_bundle(build_toy_bundle(tmp_path, chunk_frames=4, output_delay_frames=3, int8=False, weight_scale=0.05))
    emg = _emg(b, 2.0, seed=3)
    ref = _offline(b, emg)
    dec = CTCGreedyDecoder()
    dec.decode(ref)  # timestamps = emission frame indices j
    _, final = decode_samples(_recognizer(b), emg, [50])
    f = b.manifest.features
    want = [(max(j - 3, 0) * f.hop + f.n_fft / 2) / f.sample_rate_hz for j in dec.timestamps]
    assert final.labels == dec.labels
    assert final.timestamps == pytest.approx(want)


def test_normalization_from_the_manifest(tmp_path):
    C, n_freq = 8, 9
    scale = np.linspace(0.5, 1.5, 2 * C).reshape(2, C, 1).astype(np.float32)
    offset = np.full((2, C, 1), -1.0, dtype=np.float32)
    norm = {"kind": "affine", "scale": scale.tolist(), "offset": offset.tolist(), "note": "per-channel calibration"}
    b = load_bundle(build_toy_bundle(tmp_path / "a", int8=False, normalization=norm, weight_scale=0.05))
    emg = _emg(b, 1.5)
    em, _ = decode_samples(_recognizer(b), emg, [40])
    np.testing.assert_allclose(em, _offline(b, emg, scale, offset), atol=1e-4)
    mean, std = np.full((1, 1, n_freq), 2.0), np.full((1, 1, n_freq), 4.0)
    std_norm = {"kind": "standardize", "mean": mean.tolist(), "std": std.tolist()}
    b2 = load_bundle(build_toy_bundle(tmp_path / "b", int8=False, normalization=std_norm, weight_scale=0.05))
    em2, _ = decode_samples(_recognizer(b2), emg, [40])
    np.testing.assert_allclose(em2, _offline(b2, emg, 1 / std, -mean / std), atol=1e-4)
    cases: list[tuple[dict, str]] = [
        ({"kind": "affine", "scale": 1.0, "ofset": 0.0}, "unknown normalization keys"),
        ({"kind": "affine", "scale": [1.0, 2.0, 3.0], "offset": 0.0}, "does not fit"),
        ({"kind": "whiten"}, "unknown normalization kind"),
        ({"raw_to_uv": 1.0}, "mis-scaled"),  # armband8 samples are 0.5 uV per count
    ]
    exporter_style = {"raw_to_uv": 0.5, "features": "log10 power", "in_graph": "BatchNorm inside the graph"}
    m = replace(b.manifest, normalization=exporter_style)
    assert Recognizer(open_engine(b, precision="fp32"), m.features, CTCGreedyDecoder, m).normalization.is_identity
    for bad, match in cases:
        m = replace(b.manifest, normalization=bad)
        with pytest.raises(ConfigError, match=match):
            Recognizer(open_engine(b, precision="fp32"), m.features, CTCGreedyDecoder, m)


def test_feature_config_must_match_the_bundle(toy):
    m = toy.manifest
    with pytest.raises(ConfigError, match="differs from the bundle"):
        Recognizer(open_engine(toy, precision="fp32"), replace(m.features, hop=m.features.hop + 1), CTCGreedyDecoder, m)


def _drain(rec: Recognizer, stream) -> None:
    while stream.ready():
        rec.step(stream)


def test_short_gaps_are_zero_filled(toy):
    rec = _recognizer(toy, gap=GapPolicy(max_pad_s=0.1))
    a, b = _emg(toy, 1.0, seed=1), _emg(toy, 1.0, seed=2)
    gap = 15  # 75 ms at 200 Hz
    emissions = []
    stream = rec.create_stream()
    tap = stream._decoder.decode

    def keep(e, t=None, finish=False):
        emissions.append(np.array(e))
        return tap(e, t, finish)

    stream._decoder.decode = keep
    stream.accept(a)
    stream.accept_gap(gap)
    stream.accept(b)
    stream.input_finished()
    _drain(rec, stream)
    joined = np.concatenate([a, np.zeros((gap, *a.shape[1:]), np.float32), b])
    np.testing.assert_allclose(np.concatenate(emissions), _offline(toy, joined), atol=1e-4)
    assert stream.stats.gaps_padded == 1 and stream.stats.samples_padded == gap
    assert stream.stats.samples == len(a) + len(b) and stream.sample_clock == len(joined)
    assert not stream.is_endpoint() or stream._endpoint.forced is False


@pytest.mark.parametrize("kind", ["gap", "restart"])
def test_long_gaps_and_restarts_start_a_new_segment(toy, kind):
    rec = _recognizer(toy, gap=GapPolicy(max_pad_s=0.1), endpoint=EndpointConfig(enabled=False))
    a, b = _emg(toy, 1.02, seed=1), _emg(toy, 1.0, seed=2)  # 204 samples: a partial frame is left over
    gap = 400 if kind == "gap" else 0
    stream = rec.create_stream()
    stream.accept(a)
    _drain(rec, stream)
    first = stream.result()
    assert first.labels == greedy_decode(_offline(toy, a))[: len(first.labels)]
    if kind == "gap":
        stream.accept_gap(gap)
    else:
        stream.accept_restart()
    stream.accept(b)
    stream.input_finished()
    finals = []
    while stream.ready():  # the loop `emgkey run` runs
        rec.step(stream)
        if stream.is_endpoint():
            finals.append(stream.finalize())
            stream.reset()
    assert len(finals) == 1, "the segment break is an endpoint (endpoint rules are off)"
    part_a = finals[0]
    assert part_a.labels == greedy_decode(_offline(toy, a))
    part_b = stream.finalize()
    ref_b = _offline(toy, b)  # the model and features restarted from zero after the break
    dec = CTCGreedyDecoder()
    dec.decode(ref_b)
    assert part_b.labels == dec.labels and part_b.segment == part_a.segment + 1
    f = toy.manifest.features
    origin = len(a) + gap
    assert part_b.timestamps == pytest.approx(
        [(origin + j * f.hop + f.n_fft / 2) / f.sample_rate_hz for j in dec.timestamps]
    )
    st_ = stream.stats
    assert (st_.gaps_reset, st_.restarts) == ((1, 0) if kind == "gap" else (0, 1))
    assert st_.samples_skipped == gap and stream.sample_clock == len(a) + gap + len(b)


def test_endpoint_rules(toy):
    silent = load_bundle(build_toy_bundle(toy.root.parent / "silent", int8=False, weight_scale=0.0))
    rule = EndpointRule(must_contain_nonsilence=False, min_trailing_silence_s=0.5, min_utterance_length_s=0.0)
    rec = _recognizer(silent, endpoint=EndpointConfig(rules=(rule,)))
    stream = rec.create_stream()
    stream.accept(_emg(silent, 0.3))
    _drain(rec, stream)
    assert not stream.is_endpoint()
    stream.accept(_emg(silent, 0.4))
    _drain(rec, stream)
    assert stream.is_endpoint()
    final = stream.finalize()
    assert final.is_final and final.labels == []
    stream.reset()
    assert not stream.is_endpoint()


def test_endpoint_detector_counts_trailing_blanks():
    blank = charset.BLANK
    det = EndpointDetector(EndpointConfig(), frame_rate_hz=100.0, blank=blank)

    def frames(labels):
        em = np.full((len(labels), 99), -10.0)
        em[np.arange(len(labels)), labels] = 0.0
        return em

    det.update(frames([blank] * 10 + [5] + [blank] * 100))
    assert det.has_nonsilence and det.trailing_blank_frames == 100 and det.utterance_length_s == pytest.approx(1.11)
    assert not det.is_endpoint()  # 1.0 s < 1.5 s
    det.update(frames([blank] * 60))
    assert det.is_endpoint()  # rule 2: typed, then 1.6 s without a key
    det.reset()
    det.update(frames([blank] * 499))
    assert not det.is_endpoint()
    det.update(frames([blank]))
    assert det.is_endpoint()  # rule 1: 5 s of nothing
    cfg = EndpointConfig.from_dict({"rules": [{"must_contain_nonsilence": True, "min_trailing_silence_s": 0.2}]})
    assert cfg.rules[0].min_utterance_length_s == 0.0
    with pytest.raises(ConfigError, match="unknown endpoint rule keys"):
        EndpointConfig.from_dict({"rules": [{"must_contain_nonsilence": True, "min_trailing_silence": 0.2}]})
    with pytest.raises(ConfigError, match="always fires"):
        EndpointRule(False, 0.0, 0.0)


def test_overflow_is_loud(toy):
    rec = _recognizer(toy, max_buffered_s=0.2)
    stream = rec.create_stream()
    with pytest.raises(StreamOverflowError, match="step"):
        stream.accept(_emg(toy, 1.0))


def test_latency_is_recorded_per_stage(toy):
    rec = _recognizer(toy)
    stream = rec.create_stream()
    for block in np.array_split(_emg(toy, 1.0), 10):
        stream.accept(block)
        _drain(rec, stream)
    d = stream.stats.as_dict()
    for stage in ("features", "model", "decode", "e2e"):
        assert d[f"{stage}_ms_p50"] >= 0 and d[f"{stage}_ms_p99"] >= d[f"{stage}_ms_p50"]
    assert d["chunks"] == d["emissions"] // 4 and d["frames"] - d["emissions"] == stream.buffered_frames < 4


# ---------------------------------------------------------------------------------------------------------------------
# Sinks
# ---------------------------------------------------------------------------------------------------------------------


def _result(text: str, final: bool = False, segment: int = 0) -> Result:
    labels = charset.str_to_labels(text)
    return Result(labels, [0.1 * i for i in range(len(labels))], final, segment)


def test_text_edits_and_tracker():
    assert text_edit("hello", "help") == (2, "p")
    assert text_edit("", "abc") == (0, "abc")
    tr = TextTracker()
    e1 = tr.update(_result("th"), 1.0)
    assert e1 is not None and (e1.kind, e1.delete, e1.insert) == ("partial", 0, "th")
    assert tr.update(_result("th"), 1.1) is None  # unchanged: nothing to say
    e2 = tr.update(_result("tg\u232bhe"), 1.2)  # backspace applied in text, kept in raw
    assert e2 is not None and e2.text == "the" and e2.raw == "tg\u232bhe" and (e2.delete, e2.insert) == (0, "e")
    e3 = tr.update(_result("the", final=True), 1.3)
    assert e3 is not None and e3.kind == "final" and (e3.delete, e3.insert) == (0, "")
    e4 = tr.update(_result("a", segment=1), 2.0)
    assert e4 is not None and (e4.delete, e4.insert, e4.segment) == (0, "a", 1)
    assert tr.update(_result("", final=True, segment=2), 3.0) is None  # an idle segment ends silently


def test_stdout_and_jsonl_sinks(tmp_path):
    out = io.StringIO()
    path = tmp_path / "events.jsonl"
    sink = MultiSink([StdoutSink(out, live=False), JsonlSink(path)])
    tr = TextTracker()
    for r in (_result("hi"), _result("hi there"), _result("hi there\u23ce", final=True)):
        ev = tr.update(r, 0.5, {"model_p50": 0.25})
        assert ev is not None
        sink.emit(ev)
    sink.status({"stream_time_s": 1.0, "samples": 200})
    sink.close()
    sink.close()
    assert out.getvalue() == "hi there\n\n"  # only the final, ⏎ shown as a newline
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [x["type"] for x in lines] == ["partial", "partial", "final", "status"]
    assert lines[1]["insert"] == " there" and lines[2]["latency_ms"] == {"model_p50": 0.25}


class _FakeUInput:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, int]] = []

    def write(self, type_: str, code: str, value: int) -> None:
        self.events.append((type_, code, value))

    def syn(self) -> None:
        pass


def test_keyboard_sink_types_edits():
    dev = _FakeUInput()
    kb = KeyboardSink(mode="partial", device=dev)
    kb._ecodes = None  # the fake device takes key names
    kb.type_edit(1, "A!")
    pressed = [(c, v) for _, c, v in dev.events]
    assert pressed == [
        ("KEY_BACKSPACE", 1),
        ("KEY_BACKSPACE", 0),
        ("KEY_LEFTSHIFT", 1),
        ("KEY_A", 1),
        ("KEY_A", 0),
        ("KEY_LEFTSHIFT", 0),
        ("KEY_LEFTSHIFT", 1),
        ("KEY_1", 1),
        ("KEY_1", 0),
        ("KEY_LEFTSHIFT", 0),
    ]
    kb.type_edit(0, "\u00e9")
    assert kb.skipped == {"\u00e9": 1}


# ---------------------------------------------------------------------------------------------------------------------
# emgkey run
# ---------------------------------------------------------------------------------------------------------------------

_RUN = """
import argparse, sys
from emgkey.edge_runtime import cli
p = argparse.ArgumentParser(); cli.register(p.add_subparsers())
a = p.parse_args(sys.argv[1:]); sys.exit(a.func(a))
"""


def _run_cli(args: list[str], **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", _RUN, "run", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
        **kw,
    )


def test_run_command_end_to_end(tmp_path):
    bundle = build_toy_bundle(tmp_path / "b", weight_scale=0.05)
    events = tmp_path / "events.jsonl"
    proc = _run_cli(
        [
            "--bundle",
            str(bundle),
            "--source",
            "sim://?minutes=0.05&speed=max",
            "--jsonl",
            str(events),
            "--status",
            "off",
        ]
    )
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    lines = [json.loads(x) for x in events.read_text().splitlines()]
    finals = [x for x in lines if x["type"] == "final"]
    status = [x for x in lines if x["type"] == "status"]
    assert finals and status[-1].get("final") is True
    assert status[-1]["samples"] == round(0.05 * 60 * 200)
    assert out == "".join(charset.to_display(x["text"]) + "\n" for x in finals if x["text"])


def test_run_stops_cleanly_on_sigint(tmp_path):
    bundle = build_toy_bundle(tmp_path / "b", weight_scale=0.05)
    events = tmp_path / "events.jsonl"
    proc = _run_cli(
        [
            "--bundle",
            str(bundle),
            "--source",
            "sim://?minutes=1&speed=1",
            "--jsonl",
            str(events),
            "--status",
            "off",
            "--no-endpoint",
        ]
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if events.exists() and events.read_text().count("\n") >= 1:
            break
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    lines = [json.loads(x) for x in events.read_text().splitlines()]
    assert lines[-1]["type"] == "status" and lines[-1]["final"] is True
    assert lines[-1]["stream_time_s"] < 30, "it stopped early, on the signal"
    assert any(x["type"] == "final" for x in lines), "the last segment was finalised and flushed"
    assert "Traceback" not in err


def test_cli_rejects_lm_with_greedy(tmp_path):
    from emgkey.edge_runtime.cli import make_decoder_factory

    with pytest.raises(ConfigError, match="--decoder beam"):
        make_decoder_factory("greedy", lm_path="x.arpa")
    beam = make_decoder_factory("beam", beam_size=4)()
    assert beam.config.beam_size == 4 and beam.config.lm_weight == 0.0


def test_register_adds_run_and_lm():
    p = argparse.ArgumentParser()
    from emgkey.edge_runtime import cli

    cli.register(p.add_subparsers())
    args = p.parse_args(["run", "--bundle", "b", "--source", "sim://", "--decoder", "beam", "--lm", "x.arpa"])
    assert args.threads == 1 and args.format == "onnx" and args.precision == "int8"


def test_benchmark_runs_on_a_toy_bundle(tmp_path):
    from emgkey.benchmarks.runtime_bench import main

    out = tmp_path / "bench.json"
    args = ["--toy", "--out", str(out), "--minutes", "0.1", "--chunks", "20", "--precision", "fp32", "--lm", "none"]
    assert main(args) == 0
    r = json.loads(out.read_text())["bundles"][0]
    # The runtime's own processes must not load torch; this pytest process may have (other tests).
    assert r["runtime"] == "onnxruntime"
    for name in ("greedy", "beam"):
        assert r["decoding"][name]["cer_gap_points"] <= 0.5  # streamed == offline for the same bundle
        assert r["runtime_process"][name]["torch_loaded"] is False
        assert r["latency"][name]["algorithmic_latency_ms"] > r["latency"][name]["chunk_wait_ms"] > 0
    assert out.with_suffix(".md").read_text().startswith("# Edge runtime benchmark")


def test_run_reports_bundle_problems_without_a_traceback(tmp_path):
    from emgkey.cli import CliError
    from emgkey.edge_runtime import cli

    p = argparse.ArgumentParser()
    cli.register(p.add_subparsers())
    args = p.parse_args(["run", "--bundle", str(tmp_path / "nowhere"), "--source", "sim://"])
    with pytest.raises(CliError, match="no_manifest"):
        args.func(args)


def test_from_bundle_builds_greedy_and_beam(toy):
    from emgkey.edge_runtime.beam import CTCBeamDecoder

    greedy = Recognizer.from_bundle(toy, precision="fp32")
    beam = Recognizer.from_bundle(toy, "beam", precision="fp32")
    emg = _emg(toy, 1.0)
    _, g = decode_samples(greedy, emg, [17])
    stream = beam.create_stream()
    assert isinstance(stream._decoder, CTCBeamDecoder)
    _, b = decode_samples(beam, emg, [17])
    assert g.labels == greedy_decode(_offline(toy, emg)) and isinstance(b.labels, list)
