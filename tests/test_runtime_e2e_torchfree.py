"""The device side end to end, without torch: the proof issue 5 asks for.

A fresh virtual environment gets only ``emgkey[device]`` (built from this working tree, not linked to it) and
must not be able to import torch. A real bundle is exported in this process (an untrained GRU through
``emgkey.export.bundle_writer``, which needs torch). Then, both from the torch-free environment, ``emgkey sim
stream`` runs the simulated armband's firmware on a pseudo-terminal and ``emgkey run --source serial://PTY``
decodes it. What it decodes must equal the same bundle run in this process over the same simulated samples
(armband8 sends int16 counts, so the pty carries them exactly), and the counters must add up. A second run is
stopped with SIGTERM mid-stream: exit 0, the last segment finalised, every output flushed.

The environment is cached under pytest's cache folder, keyed by the dependencies in ``pyproject.toml`` and the
Python version; emgkey itself is reinstalled from the working tree on every run. A clean checkout builds it
(about 30 s with pip's cache warm; PyPI or a mirror must be reachable for onnxruntime and ai-edge-litert).
"""

from __future__ import annotations

import hashlib
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="the bundle is exported in this process (emgkey[export])")
pytest.importorskip("onnxruntime", reason="the reference decode runs the bundle with onnxruntime")

from emgkey.benchmarks.runtime_bench import build_student_bundles, run_emgkey
from emgkey.bundle import load_bundle
from emgkey.edge_runtime.recognizer import Recognizer, decode_samples
from emgkey.firmware_sim.simulate import simulate_session
from emgkey.profiles import ARMBAND8

pytestmark = [pytest.mark.slow, pytest.mark.pty]

REPO = Path(__file__).resolve().parents[1]
NETWORK_TROUBLE = ("NewConnectionError", "Temporary failure in name resolution", "No matching distribution found")


def _source_tree(dst: Path) -> Path:
    """A copy of the working tree's package sources (what git would ship, uncommitted edits included)."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True, check=True
        ).stdout.split(b"\0")
        files = [REPO / f.decode() for f in listed if f]
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: everything but caches and runs
        skip = {".venv", "runs", ".git", "__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache", "build"}
        files = [p for p in REPO.rglob("*") if p.is_file() and not skip & set(p.relative_to(REPO).parts)]
    for f in files:
        if f.is_file() and "egg-info" not in str(f):
            target = dst / f.relative_to(REPO)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, target)
    return dst


def _pip(python: Path, *args: str) -> None:
    proc = subprocess.run([str(python), "-m", "pip", "install", "-q", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        out = proc.stdout + proc.stderr
        if any(s in out for s in NETWORK_TROUBLE):
            pytest.skip(f"cannot install emgkey[device] here (no package index?): {out[-500:]}")
        raise AssertionError(f"pip install {' '.join(args)} failed:\n{out[-3000:]}")


@pytest.fixture(scope="module")
def venv(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """bin/ of a torch-free environment holding emgkey[device] from this working tree."""
    key = hashlib.sha256((REPO / "pyproject.toml").read_bytes() + sys.version.encode()).hexdigest()[:12]
    cache = getattr(request.config, "cache", None)
    root = (cache.mkdir("emgkey-torchfree-venv") if cache is not None else tmp_path_factory.mktemp("venv")) / key
    python = root / "bin" / "python"
    src = _source_tree(tmp_path_factory.mktemp("src"))
    ready = root / ".deps-installed"
    if not ready.exists():
        shutil.rmtree(root, ignore_errors=True)
        # The base interpreter, not this venv's site-packages: torch must not leak in.
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(root)], check=True)
        _pip(python, f"{src}[device]")
        ready.touch()
    else:  # dependencies are there: only this working tree's emgkey, freshly built
        _pip(python, "--no-deps", "--force-reinstall", str(src))
    return root / "bin"


def _in_venv(bin_dir: Path, code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    # cwd away from the repository: `python -c` puts the current folder first on sys.path.
    return subprocess.run([str(bin_dir / "python"), "-c", code], capture_output=True, text=True, cwd=cwd)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_student_bundles(tmp_path_factory.mktemp("bundles"), ["gru"])["gru"]


class SimStream:
    """``emgkey sim stream`` (from the torch-free venv) on a pty; ``path`` once the link is up."""

    def __init__(self, bin_dir: Path, tmp: Path, minutes: float, realtime: bool) -> None:
        self.link_file = tmp / "armband.path"
        self.link_file.unlink(missing_ok=True)
        args = ["sim", "stream", "--profile", "armband8", "--user", "0", "--minutes", str(minutes)]
        args += ["--realtime" if realtime else "--no-realtime", "--link-file", str(self.link_file)]
        self.log = open(tmp / f"sim_{time.monotonic_ns()}.log", "w+")
        self.proc = subprocess.Popen([str(bin_dir / "emgkey"), *args], stdout=self.log, stderr=self.log, cwd=tmp)
        deadline = time.monotonic() + 60
        while not self.link_file.exists():
            assert self.proc.poll() is None, f"emgkey sim stream died: {self._log()}"
            assert time.monotonic() < deadline, "emgkey sim stream did not open its pty in 60 s"
            time.sleep(0.05)
        self.path = self.link_file.read_text().strip()

    def _log(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()[-3000:]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        rc = self.proc.wait(timeout=30)
        self.log.close()
        return rc


def test_device_install_has_no_torch(venv: Path, tmp_path: Path) -> None:
    no_torch = _in_venv(venv, "import torch", tmp_path)
    assert no_torch.returncode != 0 and "No module named 'torch'" in no_torch.stderr
    where = _in_venv(
        venv,
        "import emgkey, onnxruntime, ai_edge_litert, serial; import emgkey.edge_runtime.cli, "
        "emgkey.firmware_sim.link; print(emgkey.__file__)",
        tmp_path,
    )
    assert where.returncode == 0, where.stderr[-2000:]
    installed = Path(where.stdout.strip()).resolve()
    assert installed.is_relative_to(venv.parent.resolve()) and "site-packages" in installed.parts, (
        f"emgkey must be the copy installed in the venv, not the repository: {installed}"
    )


def test_serial_stream_decodes_like_the_bundle_in_process(venv: Path, bundle: Path, tmp_path: Path) -> None:
    minutes = 0.5
    session = simulate_session(ARMBAND8, user_id=0, session_idx=0, minutes=minutes, seed=0)  # what sim stream sends
    recognizer = Recognizer.from_bundle(load_bundle(bundle), precision="fp32")
    _, expect = decode_samples(recognizer, session.emg_uv(), [7, 23])
    assert len(expect.labels) > 20, "the untrained bundle should emit keys (garbage), or equality proves nothing"

    sim = SimStream(venv, tmp_path, minutes, realtime=False)
    events = tmp_path / "events.jsonl"
    source = f"serial://{sim.path}?buffer_s=120&stall_s=5"
    args = ["run", "--bundle", str(bundle), "--source", source, "--precision", "fp32", "--jsonl", str(events)]
    run = run_emgkey([*args, "--no-endpoint", "--status", "log"], command=[str(venv / "emgkey")], jsonl=events,
                     timeout_s=180, cwd=tmp_path)  # fmt: skip
    assert sim.stop() == 0
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.torch_loaded is False, "a torch library was mapped into the device process"

    finals = run.of_type("final")
    assert [e["raw"] for e in finals] == [expect.raw], "over the pty, the device decodes what the bundle decodes"
    assert finals[0]["label_times_s"] == pytest.approx(expect.timestamps, abs=1e-3)
    assert run.stdout == finals[0]["text"] + "\n"
    st = run.final_status
    assert st is not None
    n = session.n_samples
    feats = load_bundle(bundle).manifest.features  # the bundle's own front end (armband8: n_fft 16, hop 4)
    frames = 1 + (n - feats.n_fft) // feats.hop
    assert (st["samples"], st["stream_time_s"], st["frames"], st["emissions"]) == (n, n / 200.0, frames, frames)
    assert st["chunks"] == -(-frames // load_bundle(bundle).manifest.streaming.chunk_frames)
    assert st["gaps"] == st["dropped_packets"] == st["crc_errors"] == st["samples_missing"] == 0
    assert st["buffer_dropped"] == st["reconnects"] == 0
    assert st["model_ms_p50"] > 0 and st["e2e_ms_p99"] >= st["model_ms_p99"]
    assert "Traceback" not in run.stderr


def test_sigterm_mid_stream_finalises_and_flushes(venv: Path, bundle: Path, tmp_path: Path) -> None:
    sim = SimStream(venv, tmp_path, minutes=1.0, realtime=True)
    events = tmp_path / "events.jsonl"
    args = ["run", "--bundle", str(bundle), "--source", f"serial://{sim.path}", "--precision", "fp32"]
    args += ["--jsonl", str(events), "--status", "off", "--no-endpoint"]
    sent: list[float] = []

    def stop_after_some_text(proc: subprocess.Popen[bytes], elapsed: float) -> None:
        if not sent and events.exists() and events.read_text().count('"partial"') >= 3:
            proc.send_signal(signal.SIGTERM)
            sent.append(elapsed)

    run = run_emgkey(args, command=[str(venv / "emgkey")], jsonl=events, timeout_s=120, on_tick=stop_after_some_text,
                     sample_every_s=0.1, cwd=tmp_path)  # fmt: skip
    assert sim.stop() == 0
    assert sent, "no partial text arrived to stop on"
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.wall_s - sent[0] < 10, "it stopped promptly on the signal"
    last = run.events[-1]
    assert last["type"] == "status" and last["final"] is True, "the final status line was flushed last"
    assert 0 < last["stream_time_s"] < 50, "stopped by the signal, not by the end of the recording"
    finals = run.of_type("final")
    assert len(finals) == 1 and finals[0]["text"], "the open segment was finalised"
    partials = run.of_type("partial")
    assert finals[0]["text"].startswith(partials[-1]["text"]), "greedy text only grows; queued frames were decoded"
    assert run.stdout == finals[0]["text"] + "\n", "stdout got the final text before exit"
    assert "Traceback" not in run.stderr
    assert events.read_text().endswith("\n"), "the JSON-lines file ends with a complete line"


def test_device_cli_help(venv: Path, tmp_path: Path) -> None:
    out = subprocess.run([str(venv / "emgkey"), "--help"], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    for cmd in ("run", "sim", "lm", "verify"):
        assert cmd in out.stdout
    h = subprocess.run([str(venv / "emgkey"), "run", "--help"], capture_output=True, text=True, cwd=tmp_path)
    assert h.returncode == 0 and "--source" in h.stdout
