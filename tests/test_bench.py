"""``emgkey bench`` / ``emgkey report``: the matrix on real (toy) bundles, the numbers checked independently.

The bundles are torch-free toys (``emgkey.benchmarks.toy_bundle``): a keyed *oracle* whose greedy output is the
keys typed into a keyed test signal, and a random-weight model that emits noise. Each gets held-out reference
windows like an export writes (``reference.npz``) and is verified on the installed runtimes for real, so the
benchmark measures what ``emgkey run`` would execute.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from emgkey import charset
from emgkey.benchmarks import bench as B
from emgkey.benchmarks import report as R
from emgkey.bundle import read_manifest, sha256_file, write_manifest
from emgkey.decoding import greedy_decode
from emgkey.errors import ConfigError
from emgkey.metrics import EditCounts, edit_counts

toy = pytest.importorskip("emgkey.benchmarks.toy_bundle")
pytest.importorskip("onnxruntime")

PROFILE = "armband8"


# ---------------------------------------------------------------------------------------------------------------------
# Fixtures: toy bundles with held-out reference windows, verified on the installed runtimes
# ---------------------------------------------------------------------------------------------------------------------


def keyed_windows(n: int, seconds: float, seed: int) -> list[Any]:
    return [toy.keyed_emg(PROFILE, seconds, seed=seed + i) for i in range(n)]


def make_bundle(
    out: Path, *, oracle: bool, windows: int = 2, seconds: float = 6.0, tflite: bool = True, data: str = "simulated"
) -> Path:
    """A toy bundle + ``reference.npz`` (keyed windows, the toy's numpy forward as the fp32 reference),
    then ``emgkey verify`` on every installed runtime."""
    from emgkey.export.verify import REFERENCE_NAME, Reference, Tolerances, verify_bundle
    from emgkey.features import FeatureConfig, compute_features
    from emgkey.profiles import get_profile

    prof = get_profile(PROFILE)
    fc = FeatureConfig.for_profile(prof)
    model = (
        toy.KeyedToyModel(prof.n_bands, prof.channels_per_band, fc.n_freq)
        if oracle
        else toy.ToyModel(prof.n_bands, prof.channels_per_band, fc.n_freq, seed=3, weight_scale=0.3)
    )
    toy.build_toy_bundle(out, PROFILE, chunk_frames=4, tflite=tflite, model=model)
    recs = keyed_windows(windows, seconds, seed=10)
    feats = [Reference.round_features(compute_features(r.emg, fc)[:, None]) for r in recs]
    outs = [model.reference(x) for x in feats]
    ref = Reference(
        features=feats,
        targets=[np.array(charset.str_to_labels(r.target)) for r in recs],
        streaming=outs,
        offline=outs,
    )
    ref.save(out / REFERENCE_NAME)
    m = read_manifest(out)
    m.accuracy = {
        "data": data,
        "verification": {
            "reference": {"path": REFERENCE_NAME, "sha256": sha256_file(out / REFERENCE_NAME), "subset": "test"},
            "tolerances": Tolerances().to_dict(),
        },
    }
    write_manifest(out, m)
    verify_bundle(out)
    return out


def keyed_session(path: Path, seconds: float = 8.0, *, simulated: bool = True, seed: int = 42) -> tuple[Path, str]:
    """A keyed recording as an emg2qwerty-format session file (int16 counts), each burst a keystroke."""
    from emgkey.profiles import get_profile
    from emgkey.session import write_session

    prof = get_profile(PROFILE)
    rec = toy.keyed_emg(prof, seconds, seed=seed)
    rate = prof.sample_rate_hz
    t0 = 1.7e9
    ts = t0 + np.arange(len(rec.emg), dtype=np.float64) / rate
    keys = [{"key": k, "start": t0 + a / rate, "end": t0 + b / rate} for k, a, b in rec.keys]
    write_session(
        path,
        profile=prof,
        timestamps=ts,
        emg=rec.counts(prof.adc_scale_uv_per_count),
        keystrokes=keys,
        prompts=[],
        session_name=path.stem,
        user="keyed",
        extra_attrs={"simulated": True} if simulated else None,
    )
    return path, rec.target


def greedy_cer(model: Any, features: list[np.ndarray], targets: list[str]) -> float:
    counts = EditCounts()
    for x, t in zip(features, targets, strict=True):
        counts = counts + edit_counts(charset.labels_to_str(greedy_decode(model.reference(x))), t)
    return counts.cer


def independent_greedy_cer(bundle: Path) -> float:
    """CER of the toy's own numpy forward, greedy: what the ORT fp32 cell must report."""
    from emgkey.export.verify import Reference

    ref = Reference.load(bundle / "reference.npz")
    counts = EditCounts()
    for x, y in zip(ref.features, ref.targets, strict=True):
        m = toy.toy_model_of(read_manifest(bundle))
        pred = charset.labels_to_str(greedy_decode(m.reference(x)))
        counts = counts + edit_counts(pred, charset.labels_to_str(y.tolist()))
    return counts.cer


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bench_bundles")
    return {"oracle": make_bundle(root / "oracle", oracle=True), "noise": make_bundle(root / "noise", oracle=False)}


@pytest.fixture(scope="module")
def results(bundles: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One real run: two models x (ORT fp32, ORT int8, LiteRT fp32) at 1 thread, two interleaved runs."""
    work = tmp_path_factory.mktemp("bench_work")
    cfg = B.BenchConfig(
        threads=(1,),
        runtimes=("onnxruntime", "litert"),
        warmup=2,
        calls=15,
        repeats=2,
        decoders=("greedy", "beam"),
        lm=None,
        beam_size=4,
    )
    models = B.collect_models([str(bundles["oracle"]), str(bundles["noise"])], [], out=work)
    return B.run(models, cfg, work)


def cells_of(results: dict[str, Any], model: str) -> dict[tuple[str, str, int], dict[str, Any]]:
    return {(c["runtime"], c["precision"], c["threads"]): c for c in results["cells"] if c["model"] == model}


# ---------------------------------------------------------------------------------------------------------------------
# The matrix
# ---------------------------------------------------------------------------------------------------------------------


def test_results_document_records_the_machine_and_the_settings(results: dict[str, Any]) -> None:
    assert results["schema"] == B.SCHEMA and results["schema_version"] == B.SCHEMA_VERSION
    dev = results["device"]
    assert dev["cores_logical"] >= 1 and dev["cpu_model"] and dev["arch"]
    assert dev["python"].startswith(f"{sys.version_info.major}.{sys.version_info.minor}.")
    assert "onnxruntime" in dev["versions"] and "numpy" in dev["versions"]
    assert results["settings"]["repeats"] == 2 and results["settings"]["calls"] == 15
    assert json.loads(json.dumps(results)) == results  # plain JSON all the way down


def test_every_cell_is_measured_or_says_why_not(results: dict[str, Any]) -> None:
    for model in ("oracle", "noise"):
        cells = cells_of(results, model)
        assert set(cells) == {
            ("onnxruntime", "fp32", 1),
            ("onnxruntime", "int8", 1),
            ("ai-edge-litert", "fp32", 1),
            ("ai-edge-litert", "int8", 1),
        }
        skipped = cells[("ai-edge-litert", "int8", 1)]
        assert skipped["status"] == "skipped" and "no tflite int8 file" in skipped["reason"]
        for key in [("onnxruntime", "fp32", 1), ("onnxruntime", "int8", 1), ("ai-edge-litert", "fp32", 1)]:
            c = cells[key]
            assert c["status"] == "ok", c
            lat = c["latency_ms"]
            assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"]
            assert c["runs"] == 2 and len(c["latency_runs_ms"]) == 2
            assert c["cdf_ms"] == sorted(c["cdf_ms"]) and len(c["cdf_ms"]) == 101
            rss = c["rss_mb"]
            assert 0 < rss["baseline"] <= rss["loaded"] <= rss["peak"] + 1e-6
            assert c["torch_imported"] is False
            m = read_manifest(results["models"][0]["bundle"])
            assert c["rtf"] == pytest.approx(
                lat["mean"] / (1e3 * 4 * m.features.hop / m.features.sample_rate_hz), rel=1e-2
            )
            assert c["artifact_bytes"] == Path(c["artifact"]).stat().st_size


def test_cer_is_the_models_own_on_the_held_out_windows(results: dict[str, Any], bundles: dict[str, Path]) -> None:
    oracle = cells_of(results, "oracle")
    noise = cells_of(results, "noise")
    want = independent_greedy_cer(bundles["oracle"])
    assert oracle[("onnxruntime", "fp32", 1)]["cer"]["greedy"]["cer"] == pytest.approx(want, abs=1e-3)
    assert oracle[("ai-edge-litert", "fp32", 1)]["cer"]["greedy"]["cer"] == pytest.approx(want, abs=1e-3)
    assert want < 25.0  # the oracle types what was typed
    assert noise[("onnxruntime", "fp32", 1)]["cer"]["greedy"]["cer"] == pytest.approx(
        independent_greedy_cer(bundles["noise"]), rel=1e-5
    )
    assert noise[("onnxruntime", "fp32", 1)]["cer"]["greedy"]["cer"] > want + 20
    # On a peaky model, beam search without an LM finds what greedy does.
    assert oracle[("onnxruntime", "fp32", 1)]["cer"]["beam"]["cer"] == pytest.approx(want, abs=5.0)
    for m in results["models"]:
        assert m["data"]["kind"] == "simulated" and m["data"]["windows"] == 2 and m["data"]["characters"] > 5


def test_eval_data_sessions_are_featurized_like_the_device(bundles: dict[str, Path], tmp_path: Path) -> None:
    path, _ = keyed_session(tmp_path / "sim" / "k.hdf5", seconds=6.0)
    real, _ = keyed_session(tmp_path / "rec" / "r.hdf5", seconds=3.0, simulated=False, seed=7)
    m = read_manifest(bundles["oracle"])
    model = toy.toy_model_of(m)
    whole = B.eval_from_sessions(m, [str(tmp_path / "sim")])
    assert whole.data["kind"] == "simulated" and len(whole.features) == 1 and len(whole.targets[0]) > 5
    assert greedy_cer(model, whole.features, whole.targets) < 25.0  # targets and features line up
    cut = B.eval_from_sessions(m, [str(path)], window_s=2.0)
    assert len(cut.features) == 3 and "".join(cut.targets) == whole.targets[0]
    assert B.eval_from_sessions(m, [str(real)]).data["kind"] == "real"
    assert B.eval_from_sessions(m, [str(path), str(real)]).data["kind"] == "simulated"  # mixed: the weaker claim
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"no \.hdf5 session files"):
        B.eval_from_sessions(m, [str(tmp_path / "empty")])
    # the matrix on --eval-data: the cell's CER is the model's on those sessions
    cfg = B.BenchConfig(
        threads=(1,), precisions=("fp32",), runtimes=("onnxruntime",), warmup=1, calls=5, repeats=1,
        decoders=("greedy",), eval_data=(str(tmp_path / "sim"),),
    )  # fmt: skip
    res = B.run(B.collect_models([str(bundles["oracle"])], [], out=tmp_path), cfg, tmp_path / "w")
    cell = next(c for c in res["cells"] if c["runtime"] == "onnxruntime")
    assert cell["cer"]["greedy"]["cer"] == pytest.approx(greedy_cer(model, whole.features, whole.targets), rel=1e-5)
    assert res["models"][0]["data"]["kind"] == "simulated" and "1 session file" in res["models"][0]["data"]["source"]


def test_ratios_pair_cells_of_the_same_round(results: dict[str, Any]) -> None:
    rs = [r for r in results["ratios"] if r["model"] == "oracle"]
    kinds = {(r["cell"], r["versus"]) for r in rs}
    assert ("onnxruntime int8", "onnxruntime fp32") in kinds  # baseline: ORT fp32 when torch is not measured
    assert ("ai-edge-litert fp32", "onnxruntime fp32") in kinds
    for r in rs:
        assert r["paired_runs"] == 2 and r["speedup_p50"] > 0
    c = cells_of(results, "oracle")
    r = next(x for x in rs if x["cell"] == "onnxruntime int8")
    assert r["size_ratio"] == pytest.approx(
        c[("onnxruntime", "int8", 1)]["artifact_bytes"] / c[("onnxruntime", "fp32", 1)]["artifact_bytes"], rel=1e-3
    )


def test_algorithmic_latency_is_chunk_wait_plus_lookahead(results: dict[str, Any]) -> None:
    m = results["models"][0]
    hop_ms = 1e3 * m["hop"] / m["sample_rate_hz"]
    assert m["chunk_wait_ms"] == pytest.approx(3 * hop_ms + 1e3 * m["n_fft"] / m["sample_rate_hz"])
    assert m["algorithmic_ms"] == pytest.approx(m["chunk_wait_ms"] + m["output_delay_frames"] * hop_ms)


def test_board_is_recognised_from_the_device_tree() -> None:
    assert B.board_of("", "Raspberry Pi 4 Model B Rev 1.4", "aarch64") == "rpi4"
    assert B.board_of("Cortex-A76", "Raspberry Pi 5 Model B Rev 1.0", "aarch64") == "rpi5"
    assert B.board_of("ARMv8 Processor rev 1 (v8l)", "NVIDIA Jetson Orin Nano Developer Kit", "aarch64") == "jetson"
    assert B.board_of("Intel(R) Xeon(R) Processor", "", "x86_64") == "generic-x86_64"


def test_threads_are_resolved_and_deduplicated() -> None:
    assert B.parse_threads("1,all") == (1, 0)
    assert B.resolve_threads((1, 0), cores=4) == (1, 4)
    assert B.resolve_threads((1, 0), cores=1) == (1,)
    with pytest.raises(ConfigError):
        B.parse_threads("")


def test_a_refused_file_is_skipped_with_the_verification_note(tmp_path: Path) -> None:
    b = toy.build_toy_bundle(tmp_path / "bad", PROFILE, runtimes_ok=False)
    models = B.collect_models([str(b)], [], out=tmp_path)
    cells = B.plan_cells(models, B.BenchConfig(threads=(1,)), {"onnxruntime": "x"}, (1,), has_torch=False)
    ort = [c for c in cells if c.runtime == "onnxruntime"]
    assert ort and all("not verified on onnxruntime" in c.skip for c in ort)
    tor = [c for c in cells if c.runtime == "torch"]
    assert tor and all(c.skip for c in tor)


def test_checkpoint_names_come_from_the_run_not_the_split() -> None:
    assert B.checkpoint_name(Path("runs/tb/runs/armband8/tds_conv/generic/best.pt")) == "tds_conv"
    assert B.checkpoint_name(Path("runs/teacher_tds_conv/best.pt")) == "teacher_tds_conv"
    assert B.checkpoint_name(Path("runs/tds/last.pt")) == "tds"
    assert B.checkpoint_name(Path("ckpts/my_teacher.pt")) == "my_teacher"


def test_model_keys_stay_short_and_unique() -> None:
    keys = B.model_keys([Path("/r/a/b/gru"), Path("/r/a2/b/gru"), Path("/r/a/b/tcn")], ["gru", "gru", "tcn"])
    assert keys == ["a/gru", "a2/gru", "tcn"]


def test_bench_cli_runs_with_torch_blocked(bundles: dict[str, Path], tmp_path: Path) -> None:
    """``emgkey bench --bundle`` on a device: no torch anywhere, the torch cells say why they are missing."""
    code = (
        "import importlib.abc, sys\n"
        "class _NoTorch(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torch' or name.startswith('torch.'):\n"
        "            raise ImportError('torch is blocked')\n"
        "sys.meta_path.insert(0, _NoTorch())\n"
        "from emgkey.cli import main\n"
        "rc = main(sys.argv[1:])\n"
        "assert 'torch' not in sys.modules\n"
        "sys.exit(rc)\n"
    )
    out = tmp_path / "b"
    args = ["--bundle", str(bundles["oracle"]), "--out", str(out), "--repeats", "1", "--calls", "5", "--warmup", "1"]
    args += ["--threads", "1", "--decoders", "greedy", "--precisions", "fp32", "--runtimes", "torch,onnxruntime"]
    proc = subprocess.run([sys.executable, "-c", code, "bench", *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads((out / "results.json").read_text())
    cells = {c["runtime"]: c for c in doc["cells"]}
    assert cells["torch"]["status"] == "skipped" and "torch is not installed" in cells["torch"]["reason"]
    assert cells["onnxruntime"]["status"] == "ok"
    assert (out / "report.md").is_file() and "Pick for a Raspberry Pi 4" in proc.stdout


# ---------------------------------------------------------------------------------------------------------------------
# Report and recommendation
# ---------------------------------------------------------------------------------------------------------------------


def _doc(results: dict[str, Any], label: str, board: str, scale: float = 1.0) -> dict[str, Any]:
    d = copy.deepcopy(results)
    d["device"].update(label=label, board=board)
    for c in d["cells"]:
        if c["status"] == "ok":
            c["latency_ms"] = {k: v * scale for k, v in c["latency_ms"].items()}
            c["cdf_ms"] = [v * scale for v in c["cdf_ms"]]
            c["rtf"] *= scale
    return d


def test_recommendation_picks_the_lowest_cer_that_fits(results: dict[str, Any]) -> None:
    d = _doc(results, "box", "generic-x86_64")
    d["_label"], d["_path"] = "box", "x"
    rec = R.recommend([d], R.PI4)
    assert rec["pick"]["model"] == "oracle"
    assert rec["factor"] == R.PI4.factor and "estimate" in rec["method"]
    assert "estimate" in rec["text"] and "simulated" in rec["text"] and "not real-data CER" in rec["text"]
    # The same numbers measured on a Pi 4: no estimate, factor 1.
    pi = _doc(results, "my pi", "rpi4", scale=3.0)
    pi["_label"], pi["_path"] = "my pi", "y"
    rec = R.recommend([d, pi], R.PI4)
    assert rec["factor"] == 1.0 and rec["method"] == "measured on my pi" and "(estimate)" not in rec["text"]


def test_recommendation_rejects_what_does_not_fit(results: dict[str, Any]) -> None:
    d = _doc(results, "box", "generic-x86_64")
    d["_label"], d["_path"] = "box", "x"
    for c in d["cells"]:
        if c["model"] == "oracle" and c["status"] == "ok":
            c["rss_mb"]["peak"] = 10_000.0  # the oracle no longer fits in memory
    rec = R.recommend([d], R.PI4)
    assert rec["pick"]["model"] == "noise"
    assert any("peak RSS" in " ".join(why) for _, why in rec["rejected"])
    # A budget nothing meets: no pick, and the text says why.
    from dataclasses import replace

    rec = R.recommend([d], replace(R.PI4, max_rtf=1e-9))
    assert rec["pick"] is None and "No measured configuration fits" in rec["text"]


def test_uninformative_cer_falls_back_to_size(results: dict[str, Any]) -> None:
    d = _doc(results, "box", "generic-x86_64")
    d["_label"], d["_path"] = "box", "x"
    for c in d["cells"]:
        for dec in (c.get("cer") or {}).values():
            dec["cer"] = 100.0 + (0.5 if c["runtime"] == "onnxruntime" else 0.0)
    rec = R.recommend([d], R.PI4)
    ok = [c for c in d["cells"] if c["status"] == "ok" and c["runtime"] != "torch" and c["threads"] == 1]
    assert rec["pick"]["bytes"] == min(c["artifact_bytes"] for c in ok)
    assert "not trained enough" in rec["text"]


def test_report_merges_devices_and_draws_plots(results: dict[str, Any], tmp_path: Path) -> None:
    a = tmp_path / "a.json"
    b = tmp_path / "b.json"
    a.write_text(json.dumps(_doc(results, "x86 box", "generic-x86_64")))
    b.write_text(json.dumps(_doc(results, "pi4 #7", "rpi4", scale=6.0)))
    from emgkey.cli import main

    assert main(["report", str(a), str(b), "--out", str(tmp_path / "rep")]) == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "x86 box: ms/chunk p50/p99" in md and "pi4 #7: ms/chunk p50/p99" in md
    assert "Raspberry Pi 4 RTF (measured)" in md and "measured on pi4 #7" in md
    assert "Simulated data" in md
    for png in ("latency_cdf.png", "cer_vs_size.png"):
        data = (tmp_path / "rep" / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    rec = json.loads((tmp_path / "rep" / "recommendation.json").read_text())
    assert rec["pick"]["model"] == "oracle"


def test_report_keeps_same_named_models_of_different_profiles_apart(results: dict[str, Any], tmp_path: Path) -> None:
    a, b, c = (tmp_path / f"{n}.json" for n in "abc")
    a.write_text(json.dumps(_doc(results, "box", "generic-x86_64")))
    other = _doc(results, "box", "generic-x86_64")
    for m in other["models"]:
        m["profile"] = "emg2qwerty"  # same keys, other models
    b.write_text(json.dumps(other))
    c.write_text(json.dumps(_doc(results, "pi", "rpi4", scale=3.0)))  # the first file's models on another device
    docs = R.load_results([a, b, c])
    keys = [[m["key"] for m in d["models"]] for d in docs]
    assert keys[0] == keys[2], "the same model on another device shares its row"
    assert keys[1] == [f"{k}@emg2qwerty" for k in keys[0]]
    assert {cell["model"] for cell in docs[1]["cells"]} <= set(keys[1]), "cells follow their model's new key"
    assert all(r["model"] in keys[1] for r in docs[1]["ratios"])


def test_report_refuses_foreign_or_newer_files(results: dict[str, Any], tmp_path: Path) -> None:
    p = tmp_path / "x.json"
    p.write_text(json.dumps({"schema": "something else"}))
    with pytest.raises(ConfigError, match="not an emgkey bench result"):
        R.load_results([p])
    d = copy.deepcopy(results)
    d["schema_version"] = B.SCHEMA_VERSION + 1
    p.write_text(json.dumps(d))
    with pytest.raises(ConfigError, match="schema version"):
        R.load_results([p])


def test_pareto_front_keeps_points_no_other_beats() -> None:
    rng = np.random.default_rng(0)
    pts = [(float(a), float(b)) for a, b in rng.uniform(1, 100, size=(40, 2))]
    front = R.pareto_front(pts)
    for p in pts:
        dominated = any(q[0] <= p[0] and q[1] <= p[1] and q != p for q in pts)
        assert (p in front) == (not dominated)
    assert [p[0] for p in front] == sorted(p[0] for p in front)


def test_calibration_results_are_normalized_and_plotted(results: dict[str, Any], tmp_path: Path) -> None:
    cal = tmp_path / "cal.json"
    cal.write_text(
        json.dumps(
            {
                "data": "simulated",
                "cer_before": 40.0,
                "points": [
                    {"seconds": 30, "cer": 35.0, "user": 1},
                    {"seconds": 30, "cer": 33.0, "user": 2},
                    {"seconds": 60, "cer_after": 30.0, "user": 1},
                ],
            }
        )
    )
    c = B.load_calibration(cal)
    assert c["data"]["kind"] == "simulated"
    assert [(p["seconds"], p["cer_after"], p["gain_points"], p["n"]) for p in c["curve"]] == [
        (30.0, 34.0, 6.0, 2),
        (60.0, 30.0, 10.0, 1),
    ]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"points": [{"seconds": 30}]}))
    with pytest.raises(ConfigError, match="CER after"):
        B.load_calibration(bad)
    # benchmarks/calibration_bench.py's file: a summary per student, strategy and seconds
    bench = tmp_path / "calibration_bench.json"
    summary = [
        {"student": "toy", "strategy": "stats", "seconds": 60, "cer_before": 50.0, "cer_after": 45.0},
        {"student": "toy", "strategy": "finetune", "seconds": 60, "cer_before": 50.0, "cer_after": 38.0},
        {"student": "toy", "strategy": "finetune", "seconds": 15, "cer_before": 50.0, "cer_after": None},
    ]
    bench.write_text(json.dumps({"data": "simulated", "summary": summary, "rows": [{"before": {"cer": 1}}]}))
    c = B.load_calibration(bench)
    assert [(p["model"], p["gain_points"]) for p in c["curve"]] == [("toy / finetune", 12.0), ("toy / stats", 5.0)]
    assert c["points_without_cer"] == 1
    d = _doc(results, "box", "generic-x86_64")
    d["calibration"] = c
    out = R.write_report([d], tmp_path / "rep")
    md = out.read_text()
    assert "## Calibration" in md and (tmp_path / "rep" / "cer_vs_calibration.png").is_file()
    assert "-12.0 pt @ 60 s (finetune)" in md  # the headline's calibration column, for the toy models


def test_report_takes_a_calibration_file_once(
    results: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from emgkey.cli import main

    summary = [{"student": "toy", "strategy": "finetune", "seconds": 60, "cer_before": 50.0, "cer_after": 38.0}]
    cal = tmp_path / "calibration_bench.json"
    cal.write_text(json.dumps({"data": "simulated", "summary": summary}))
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(_doc(results, "x86 box", "generic-x86_64")))
    b.write_text(json.dumps(_doc(results, "pi", "rpi4", scale=3.0)))
    assert main(["report", str(a), str(b), "--out", str(tmp_path / "rep"), "--calibration", str(cal)]) == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    assert md.count("| toy / finetune |") == 1, "one calibration table, not one per device"
    # calibration_bench's "KEY (ARCH)" label names one model: its row gets the gain, no other row does
    d = _doc(results, "x86 box", "generic-x86_64")
    first = d["models"][0]
    d["calibration"] = {"curve": [{"model": f"{first['key']} ({first['name']}) / finetune", "seconds": 60.0,
                                   "gain_points": 12.0, "cer_after": 38.0, "cer_before": 50.0, "n": 1}]}  # fmt: skip
    assert R.calibration_gain([d], first) == "-12.0 pt @ 60 s (finetune)"
    others = [m for m in d["models"][1:] if m["key"] != first["key"]]
    assert others and all(R.calibration_gain([d], m) == "-" for m in others)
    with_cal = json.loads(a.read_text()) | {"calibration": B.load_calibration(cal)}
    a.write_text(json.dumps(with_cal))
    capsys.readouterr()
    assert main(["report", str(a), "--out", str(tmp_path / "rep2"), "--calibration", str(cal)]) != 0
    assert "already carry calibration results" in capsys.readouterr().err


def test_plotted_cer_is_clipped_at_the_axis_top_and_counted() -> None:
    from emgkey.benchmarks.report import CER_AXIS_MAX, clip_cer

    assert clip_cer([30.0, 289.0, CER_AXIS_MAX]) == ([30.0, CER_AXIS_MAX, CER_AXIS_MAX], 1)
