"""``emgkey bundle --target {rpi,jetson}``: the flashing archive, and (slow) installing it torch-free.

The slow test does what a user does on the device: unpack, ``sh install.sh`` into a fresh venv (no torch),
decode a replayed session with ``emgkey run`` and benchmark with ``emgkey bench --bundle``, all from the
installed copy. It needs the package index (or a warm pip cache) for the pinned requirements.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import pytest

from emgkey.errors import ConfigError
from emgkey.export import device_bundle as D

toy = pytest.importorskip("emgkey.benchmarks.toy_bundle")
pytest.importorskip("onnxruntime")

from test_bench import keyed_session, make_bundle  # noqa: E402


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("devb") / "oracle", oracle=True, windows=1, seconds=4.0)


def fake_wheel(tmp: Path) -> Path:
    w = tmp / "emgkey-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(w, "w") as z:
        z.writestr("emgkey/__init__.py", "")
    return w


def build(bundle: Path, tmp: Path, **kw: Any) -> tuple[Path, dict[str, Any]]:
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    kw.setdefault("wheel", str(fake_wheel(tmp)))
    opt = D.DeviceBundleOptions(device_python=here, **kw)
    out = tmp / f"emgkey-{opt.target}.tar.gz"
    return out, D.build_device_bundle(bundle, out, opt)


def test_a_key_prior_travels_with_the_bundle_and_is_hash_checked(bundle: Path, tmp_path: Path) -> None:
    import shutil

    import numpy as np

    from emgkey.bundle import read_manifest
    from emgkey.edge_runtime.keyproto import KeyFeatureSpec, KeyPrior
    from emgkey.export.key_prior import add_key_prior

    b = tmp_path / "oracle"
    shutil.copytree(bundle, b)
    m = read_manifest(b)
    shape = (m.profile.n_bands, m.profile.channels_per_band, m.features.n_freq)
    spec = KeyFeatureSpec()
    d = spec.dim(shape)
    prior = KeyPrior(np.array([4, 5]), np.zeros((2, d)), np.eye(d), np.array([20, 20]), spec,
                     m.features.frame_rate_hz, shape)  # fmt: skip
    add_key_prior(b, prior)
    root = D.unpack(build(b, tmp_path, target="rpi")[0], tmp_path / "x")
    assert (root / "bundle" / "keyprior.npz").read_bytes() == (b / "keyprior.npz").read_bytes()
    (b / "keyprior.npz").write_bytes(b"tampered")
    (tmp_path / "again").mkdir()
    with pytest.raises(ConfigError, match=r"keyprior\.npz: does not match"):
        build(b, tmp_path / "again", target="rpi")


def test_archive_holds_everything_checksummed(bundle: Path, tmp_path: Path) -> None:
    out, _ = build(bundle, tmp_path, target="rpi")
    root = D.unpack(out, tmp_path / "x")
    assert root.name == "emgkey-rpi-oracle"
    names = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    assert {
        "install.sh",
        "emgkey.service",
        "README.md",
        "requirements-device.txt",
        "target.json",
        "SHA256SUMS",
    } <= names
    assert "wheels/emgkey-0.1.0-py3-none-any.whl" in names and "bundle/manifest.json" in names
    assert "bundle/reference.npz" in names
    # every file but the sums themselves is listed, and all match
    listed = {line.split("  ", 1)[1] for line in (root / "SHA256SUMS").read_text().splitlines()}
    assert listed == names - {"SHA256SUMS"}
    assert D.check_sums(root) == []
    (root / "bundle" / "toy_fp32.onnx").write_bytes(b"tampered")
    assert D.check_sums(root) == ["bundle/toy_fp32.onnx"]
    # the bundle copy is complete and hash-checked
    from emgkey.bundle import load_bundle

    (root / "bundle" / "toy_fp32.onnx").unlink()
    with pytest.raises(Exception, match="missing"):
        load_bundle(root / "bundle")
    with tarfile.open(out) as tf:
        mode = tf.getmember("emgkey-rpi-oracle/install.sh").mode
    assert mode & 0o111, "install.sh must be executable"


def test_requirements_are_pinned_device_side_only(bundle: Path, tmp_path: Path) -> None:
    import importlib.metadata as md

    out, info = build(bundle, tmp_path, target="rpi")
    root = D.unpack(out, tmp_path / "x")
    pins = dict(
        line.split("==") for line in (root / "requirements-device.txt").read_text().splitlines() if "==" in line
    )
    for dist in ("numpy", "scipy", "h5py", "pyserial", "onnxruntime", "ai-edge-litert"):
        assert pins[dist] == md.version(dist), dist
    assert not {"torch", "onnx", "nncf", "litert-torch", "matplotlib"} & set(pins)
    assert info["requirements"] == pins and "installed and verified" in info["pins_how"]


def test_service_unit_and_target_record(bundle: Path, tmp_path: Path) -> None:
    out, _ = build(bundle, tmp_path, target="jetson", serial_port="/dev/ttyTHS1", format="onnx", precision="fp32")
    root = D.unpack(out, tmp_path / "x")
    unit = (root / "emgkey.service").read_text()
    exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    assert "@PREFIX@/venv/bin/emgkey run --bundle @PREFIX@/bundle --source ${EMGKEY_SOURCE}" in exec_start
    assert "Environment=EMGKEY_SOURCE=serial:///dev/ttyTHS1?baud=115200" in unit
    assert "--format onnx --precision fp32 --threads 1" in unit and "SupplementaryGroups=dialout" in unit
    t = json.loads((root / "target.json").read_text())
    assert t["target"]["name"] == "jetson" and t["service"]["runtime"] == "onnxruntime"
    assert t["model"]["data"] == "simulated"
    readme = (root / "README.md").read_text()
    assert "JetPack" in readme and "simulated" in readme and "install.sh" in readme
    install = (root / "install.sh").read_text()
    assert f'PINNED_PY="{sys.version_info.major}.{sys.version_info.minor}"' in install and "@" not in install.replace(
        "@PREFIX@", ""
    )


def test_install_refuses_a_tampered_archive_before_doing_anything(bundle: Path, tmp_path: Path) -> None:
    out, _ = build(bundle, tmp_path, target="rpi")
    root = D.unpack(out, tmp_path / "x")
    (root / "requirements-device.txt").write_text("torch==2.13.0\n")
    proc = subprocess.run(
        ["sh", "install.sh", "--prefix", str(tmp_path / "p"), "--python", sys.executable],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0 and "checksum mismatch" in proc.stderr
    assert not (tmp_path / "p").exists()


def test_a_bundle_with_nothing_verified_is_refused(tmp_path: Path) -> None:
    b = toy.build_toy_bundle(tmp_path / "bad", "armband8", runtimes_ok=False)
    with pytest.raises(ConfigError, match="verified on a device runtime"):
        build(b, tmp_path, target="rpi")


def test_pins_for_another_python_come_from_pip(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    def fake_run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess:
        seen["cmd"] = cmd
        report = Path(cmd[cmd.index("--report") + 1])
        items = [("NumPy", "2.2.6"), ("onnxruntime", "1.23.2"), ("backports.strenum", "1.3.1")]
        report.write_text(json.dumps({"install": [{"metadata": {"name": n, "version": v}} for n, v in items]}))
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(D.subprocess, "run", fake_run)
    pins = D.resolve_pins(["numpy>=1.24", "onnxruntime>=1.17"], "3.10")
    assert pins == {"backports-strenum": "1.3.1", "numpy": "2.2.6", "onnxruntime": "1.23.2"}
    cmd = seen["cmd"]
    assert cmd[cmd.index("--python-version") + 1] == "3.10" and "--only-binary=:all:" in cmd
    assert "manylinux_2_28_aarch64" in cmd and "--dry-run" in cmd


# ---------------------------------------------------------------------------------------------------------------------
# The device, simulated: install into a fresh venv without torch, decode, benchmark
# ---------------------------------------------------------------------------------------------------------------------


RUN_OPTS = ("--precision", "fp32", "--no-endpoint", "--status", "off", "--jsonl")
BENCH_OPTS = (
    "--repeats",
    "1",
    "--calls",
    "10",
    "--threads",
    "1",
    "--decoders",
    "greedy",
    "--device-label",
    "installed copy",
)


@pytest.mark.slow
def test_archive_installs_torch_free_decodes_and_benchmarks(bundle: Path, tmp_path: Path) -> None:
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    out = tmp_path / "emgkey-rpi.tar.gz"
    D.build_device_bundle(bundle, out, D.DeviceBundleOptions(target="rpi", device_python=here))  # real wheel build
    root = D.unpack(out, tmp_path / "unpacked")
    prefix = tmp_path / "opt-emgkey"
    proc = subprocess.run(
        ["sh", "install.sh", "--prefix", str(prefix), "--python", sys.executable],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    py, emgkey = prefix / "venv" / "bin" / "python", prefix / "venv" / "bin" / "emgkey"
    # run from outside the repository, so the source tree is not on sys.path
    no_torch = subprocess.run([py, "-c", "import torch"], capture_output=True, text=True, cwd=tmp_path)
    assert no_torch.returncode != 0 and "No module named 'torch'" in no_torch.stderr
    where = subprocess.run(
        [py, "-c", "import emgkey; print(emgkey.__file__)"], capture_output=True, text=True, cwd=tmp_path
    )
    assert str(prefix) in where.stdout, "emgkey must come from the installed wheel, not the source tree"

    # decode a replayed session with the installed runtime: the oracle types what was typed
    session, typed = keyed_session(tmp_path / "keyed.hdf5")
    jsonl = tmp_path / "events.jsonl"
    run = subprocess.run(
        [emgkey, "run", "--bundle", prefix / "bundle", "--source", f"replay://{session}?speed=max", *RUN_OPTS, jsonl],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    finals = [e for e in map(json.loads, jsonl.read_text().splitlines()) if e["type"] == "final"]
    decoded = "".join(e["raw"] for e in finals)
    from emgkey.metrics import cer

    assert len(typed) > 5 and cer(decoded, typed) < 25.0, (decoded, typed)

    # benchmark from the installed copy, torch-free
    bench_out = tmp_path / "bench"
    b = subprocess.run(
        [emgkey, "bench", "--bundle", prefix / "bundle", "--out", bench_out, *BENCH_OPTS],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert b.returncode == 0, b.stderr[-3000:]
    doc = json.loads((bench_out / "results.json").read_text())
    assert "torch" not in doc["device"]["versions"] and doc["settings"]["torch_available"] is False
    cells = {(c["runtime"], c["precision"]): c for c in doc["cells"]}
    assert cells[("onnxruntime", "fp32")]["status"] == "ok" and cells[("ai-edge-litert", "fp32")]["status"] == "ok"
    assert cells[("torch", "fp32")]["status"] == "skipped"
    assert all(c.get("torch_imported") in (None, False) for c in doc["cells"])
    assert (bench_out / "report.md").read_text().count("installed copy") >= 1
