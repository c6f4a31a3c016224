"""``emgkey bundle --target {rpi,jetson}``: one archive to copy onto a device and install without torch.

    emgkey bundle --target rpi --bundle runs/bundles/gru_a8 --out emgkey-rpi.tar.gz [--lm lm5.arpa]

The archive (``emgkey-<target>-<model>/`` inside) holds:

- ``bundle/``: the verified model bundle (manifest, model files, reference windows, key prior), checked after copying;
- ``wheels/emgkey-*.whl``: the edge runtime, built from this source tree (``pip wheel --no-deps``), and with
  ``--wheelhouse`` every dependency's aarch64 wheel for the device's Python (offline install);
- ``requirements-device.txt``: the base + ``[device]`` dependencies pinned, with their own dependencies. When
  the device's Python is this machine's, the pins are the versions installed (and verified) here; otherwise
  pip resolves them for aarch64 and that Python (network needed here, not on the device);
- ``install.sh``: checks SHA256SUMS, the CPU (64-bit) and Python, makes a venv, installs the pins and the
  wheel (never torch), copies the bundle, checks torch does not import, runs ``emgkey verify`` on this
  device's runtime; with ``--systemd`` installs and enables the unit;
- ``emgkey.service``: a systemd unit running ``emgkey run`` on the armband's serial port;
- ``README.md`` (for the device), ``target.json`` (what was packed, from what), ``SHA256SUMS`` (every file).

Nothing here imports torch; the wheel build runs pip in a subprocess on a copy of the source tree.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from emgkey import __version__
from emgkey.bundle import MANIFEST_NAME, load_bundle, sha256_file
from emgkey.errors import ConfigError

log = logging.getLogger(__name__)

DEVICE_RUNTIMES = ("onnxruntime", "ai-edge-litert", "tflite-runtime")
SUMS_NAME = "SHA256SUMS"
# glibc-based aarch64 wheel tags pip may take for the devices (glibc 2.35 on JetPack 6, 2.36 on bookworm).
AARCH64_PLATFORMS = (
    *(f"manylinux_2_{g}_aarch64" for g in (17, 24, 26, 27, 28, 31, 34, 35)),
    "manylinux2014_aarch64",
    "linux_aarch64",
)


@dataclass(frozen=True)
class Target:
    name: str
    title: str
    python: str  # the OS's python3
    serial_port: str
    notes: tuple[str, ...]


TARGETS: dict[str, Target] = {
    "rpi": Target(
        name="rpi",
        title="Raspberry Pi 4 / 5, Raspberry Pi OS (64-bit) bookworm",
        python="3.11",
        serial_port="/dev/ttyUSB0",
        notes=(
            "Needs the 64-bit OS (`uname -m` = aarch64): onnxruntime and ai-edge-litert publish no 32-bit ARM "
            "(armv7l) wheels.",
            "`sudo apt install python3-venv` if `python3 -m venv` is missing.",
            "A USB serial dongle appears as /dev/ttyUSB0 (or /dev/ttyACM0); the GPIO UART is /dev/ttyAMA0 "
            "(disable the serial console with raspi-config first). A udev rule giving the armband a stable "
            "name (/dev/emgkey-armband) is more robust than a ttyUSB number.",
            "The service user needs the `dialout` group for the serial port (the unit adds it).",
        ),
    ),
    "jetson": Target(
        name="jetson",
        title="NVIDIA Jetson (Orin), JetPack 6 / Ubuntu 22.04",
        python="3.10",
        serial_port="/dev/ttyUSB0",
        notes=(
            "The runtime uses the CPU (onnxruntime's aarch64 wheel from PyPI, ai-edge-litert); these "
            "models are small and per-chunk CPU latency is below a millisecond, so no CUDA build is needed.",
            "JetPack 5 ships Python 3.8, which emgkey does not support (3.10+); use JetPack 6 or install a "
            "newer Python and rebuild the archive with --device-python.",
            "The 40-pin header UART is /dev/ttyTHS1 (Orin: /dev/ttyTHS0 on some carriers); a USB dongle is "
            "/dev/ttyUSB0. For benchmarks, fix the clocks first: `sudo nvpmodel -m 0 && sudo jetson_clocks`.",
            "The service user needs the `dialout` group for the serial port (the unit adds it).",
        ),
    ),
}


@dataclass
class DeviceBundleOptions:
    target: str = "rpi"
    device_python: str | None = None  # default: the target's
    serial_port: str | None = None
    format: str | None = None  # model file the service runs; default: the best verified one
    precision: str | None = None
    lm: str | None = None  # ARPA LM shipped; the service then decodes with beam + LM
    wheel: str | None = None  # a prebuilt emgkey wheel; default: build one from the source tree
    wheelhouse: bool = False  # download the dependencies' wheels for the device (offline install)
    force: bool = False
    requirements: dict[str, str] = field(default_factory=dict)  # pins given explicitly (tests, air-gapped builds)


# ---------------------------------------------------------------------------------------------------------------------
# Requirements
# ---------------------------------------------------------------------------------------------------------------------

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def device_requirements() -> list[str]:
    """The base install's and the ``[device]`` extra's requirement strings (from emgkey's metadata)."""
    try:
        reqs = importlib.metadata.requires("emgkey") or []
    except importlib.metadata.PackageNotFoundError:
        reqs = []
    out = []
    for r in reqs:
        spec, _, marker = r.partition(";")
        if "extra" in marker and '"device"' not in marker and "'device'" not in marker:
            continue
        out.append(spec.strip())
    if not out:
        raise ConfigError("emgkey's package metadata lists no requirements: install emgkey (pip install -e .) first")
    return out


def _marker_env(python: str) -> dict[str, str]:
    return {
        "python_version": python,
        "python_full_version": f"{python}.0",
        "platform_machine": "aarch64",
        "sys_platform": "linux",
        "platform_system": "Linux",
        "os_name": "posix",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "extra": "",
    }


def installed_pins(requirements: Sequence[str], python: str) -> dict[str, str]:
    """Versions installed here of ``requirements`` and (when ``packaging`` is available) everything they need
    on an aarch64 Linux device with ``python``: the set this machine ran and verified."""
    pins: dict[str, str] = {}
    todo = [r for r in requirements]
    try:
        from packaging.requirements import Requirement
    except ImportError:  # top-level pins only; pip resolves the rest on the device
        Requirement = None  # type: ignore[assignment,misc]
    env = _marker_env(python)
    while todo:
        req = todo.pop()
        if Requirement is not None:
            r = Requirement(req)
            if r.marker is not None and not r.marker.evaluate(env):
                continue
            name = r.name
        else:
            m = _NAME.match(req)
            if not m:
                continue
            name = m.group(1)
        key = canonical(name)
        if key in pins:
            continue
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            if req in requirements:
                raise ConfigError(
                    f"{name} is a device requirement but is not installed here; install emgkey[device]"
                ) from None
            continue
        pins[key] = dist.version
        if Requirement is not None:
            todo.extend(x for x in (dist.requires or []) if "extra ==" not in x)
    return dict(sorted(pins.items()))


def pip_platform_args(python: str) -> list[str]:
    args = ["--only-binary=:all:", "--implementation", "cp", "--python-version", python]
    for p in AARCH64_PLATFORMS:
        args += ["--platform", p]
    return args


def resolve_pins(requirements: Sequence[str], python: str) -> dict[str, str]:
    """Let pip resolve ``requirements`` for aarch64 Linux and ``python`` (wheels only); needs the package index."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--dry-run",
            "--ignore-installed",
            "--quiet",
            "--disable-pip-version-check",
            "--report",
            str(report),
            "--target",
            str(Path(tmp) / "t"),
            *pip_platform_args(python),
            *requirements,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not report.is_file():
            raise ConfigError(
                f"pip could not resolve aarch64 wheels for Python {python}: {proc.stderr.strip()[-600:]}\n"
                "(this needs the package index; or build with --device-python matching this machine's Python)"
            )
        data = json.loads(report.read_text())
    return dict(sorted((canonical(i["metadata"]["name"]), i["metadata"]["version"]) for i in data["install"]))


def requirements_text(pins: dict[str, str], how: str, python: str, target: Target) -> str:
    lines = [
        f"# emgkey {__version__} device requirements for {target.title} (Python {python}, aarch64).",
        f"# Pins: {how}.",
        "# Every one of these publishes aarch64 (manylinux) wheels for that Python; none is torch.",
        "# onnxruntime / ai-edge-litert have no 32-bit ARM wheels: a 64-bit OS is required.",
        "",
    ]
    lines += [f"{name}=={version}" for name, version in pins.items()]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------------------------
# The wheel
# ---------------------------------------------------------------------------------------------------------------------


def source_tree() -> Path:
    """The repository this emgkey runs from (an editable install); a wheel install has none."""
    import emgkey

    root = Path(emgkey.__file__).resolve().parent.parent
    if not (root / "pyproject.toml").is_file():
        raise ConfigError(f"no source tree at {root} (emgkey is installed from a wheel): pass --wheel WHEEL")
    return root


def _package_folders(root: Path) -> list[str]:
    try:
        import tomllib
    except ImportError:  # Python 3.10: every top-level folder with an __init__.py
        return sorted(p.parent.name for p in root.glob("*/__init__.py"))
    cfg = tomllib.loads((root / "pyproject.toml").read_text())
    return sorted(set(cfg["tool"]["setuptools"]["package-dir"].values()))


def build_wheel(out_dir: Path, root: Path | None = None) -> Path:
    """``pip wheel --no-deps`` on a clean copy of the source tree (nothing is written into the repository)."""
    root = root or source_tree()
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="emgkey-wheel-") as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        for name in ("pyproject.toml", "README.md", "LICENSE", "setup.cfg", "MANIFEST.in"):
            if (root / name).is_file():
                shutil.copy2(root / name, src / name)
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", ".*")
        for folder in _package_folders(root):
            shutil.copytree(root / folder, src / folder, ignore=ignore)
        base = [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--disable-pip-version-check",
            "-q",
            "-w",
            str(out_dir),
        ]
        have_setuptools = importlib.util.find_spec("setuptools") is not None
        cmd = base + (["--no-build-isolation"] if have_setuptools else []) + [str(src)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise ConfigError(f"building the emgkey wheel failed: {proc.stderr.strip()[-800:]}")
    wheels = sorted(out_dir.glob("emgkey-*.whl"))
    if not wheels:
        raise ConfigError(f"pip wheel wrote no emgkey wheel into {out_dir}")
    return wheels[-1]


# ---------------------------------------------------------------------------------------------------------------------
# Files of the archive
# ---------------------------------------------------------------------------------------------------------------------


def pick_service_file(bundle_dir: Path, format: str | None, precision: str | None) -> tuple[str, str, str]:
    """(format, precision, runtime) the service runs: the given ones, else int8 before fp32, ONNX before TFLite,
    among the streaming files verified on a device runtime."""
    b = load_bundle(bundle_dir)
    prefs = [(f, p) for p in ("int8", "fp32") for f in ("onnx", "tflite")]
    prefs = [(f, p) for f, p in prefs if (format in (None, f)) and (precision in (None, p))]
    for fmt, prec in prefs:
        for mf in b.manifest.files:
            if (mf.format, mf.precision, mf.graph) != (fmt, prec, "streaming"):
                continue
            ok = [r.runtime for r in mf.runtimes if r.supported and r.runtime in DEVICE_RUNTIMES]
            if ok:
                return fmt, prec, ok[0]
    have = [
        (f.path, [(r.runtime, r.supported) for r in f.runtimes]) for f in b.manifest.files if f.graph == "streaming"
    ]
    raise ConfigError(
        f"{bundle_dir}: no streaming file{'' if format is None else ' ' + format}"
        f"{'' if precision is None else ' ' + precision} is verified on a device runtime ({have}); "
        "run `emgkey verify` on it first"
    )


def copy_bundle(src: Path, dst: Path) -> list[str]:
    """Copy the manifest, every file it lists, its reference and its key prior; check the copy's hashes."""
    b = load_bundle(src)
    names = [MANIFEST_NAME, *(f.path for f in b.manifest.files)]
    extras = []  # (path, manifest sha256) of the files the manifest names outside `files`
    ref = b.manifest.accuracy.get("verification", {}).get("reference", {})
    prior = b.manifest.model.get("key_prior") or {}
    for entry in (ref, prior):
        if entry.get("path"):
            names.append(entry["path"])
            extras.append((entry["path"], entry.get("sha256")))
    dst.mkdir(parents=True)
    for n in names:
        (dst / n).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / n, dst / n)
    copied = load_bundle(dst)  # every hash again, on the copy
    for n, digest in extras:
        if sha256_file(dst / n) != digest:
            raise ConfigError(f"{src / n}: does not match the manifest's sha256")
    del copied
    return names


def service_unit(target: Target, serial_port: str, baud: int, fmt: str, precision: str, lm: str | None) -> str:
    decoder = f" --decoder beam --lm @PREFIX@/lm/{lm}" if lm else ""
    return f"""# emgkey: decode the armband on {serial_port} to text ({target.title}).
# Installed by install.sh --systemd as /etc/systemd/system/emgkey.service; override the source or the
# options in /etc/default/emgkey (EMGKEY_SOURCE=..., EMGKEY_ARGS=...), then `systemctl restart emgkey`.
[Unit]
Description=emgkey sEMG keystroke decoder (armband on {serial_port})
Documentation=file://@PREFIX@/README.md
After=network.target

[Service]
Type=simple
Environment=EMGKEY_SOURCE=serial://{serial_port}?baud={baud}
Environment="EMGKEY_ARGS=--format {fmt} --precision {precision} --threads 1{decoder} --status log"
EnvironmentFile=-/etc/default/emgkey
ExecStart=@PREFIX@/venv/bin/emgkey run --bundle @PREFIX@/bundle --source ${{EMGKEY_SOURCE}} $EMGKEY_ARGS \\
    --jsonl /var/lib/emgkey/events.jsonl
# emgkey run finalises the last segment and flushes its outputs on SIGTERM.
KillSignal=SIGTERM
TimeoutStopSec=15
Restart=on-failure
RestartSec=3
DynamicUser=yes
SupplementaryGroups=dialout
StateDirectory=emgkey
Environment=OMP_NUM_THREADS=1
Nice=-5

[Install]
WantedBy=multi-user.target
"""


INSTALL_SH = r"""#!/bin/sh
# emgkey device install: venv without torch, pinned requirements, the runtime wheel, the model bundle.
#   sh install.sh [--prefix DIR] [--python PYTHON] [--systemd] [--no-verify] [--any-python]
# --prefix     where to install (default /opt/emgkey; needs root there, or pick a folder you own)
# --systemd    install /etc/systemd/system/emgkey.service and enable it (root)
# --no-verify  skip `emgkey verify` of the bundle on this device's runtime
# --any-python install on a Python other than the one the pins are for (the pins are dropped:
#              pip resolves emgkey[device]'s ranges; not what was verified)
# EMGKEY_PIP_ARGS adds options to every pip install (e.g. a proxy or a local index).
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
PREFIX=/opt/emgkey
PYTHON=python3
SYSTEMD=0
VERIFY=1
ANY_PYTHON=0
PINNED_PY="@PYTHON@"
SERVICE_RUNTIME="@RUNTIME@"
while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) PREFIX=$2; shift 2 ;;
        --python) PYTHON=$2; shift 2 ;;
        --systemd) SYSTEMD=1; shift ;;
        --no-verify) VERIFY=0; shift ;;
        --any-python) ANY_PYTHON=1; shift ;;
        -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
        *) echo "install.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
say() { echo "emgkey install: $*"; }
die() { echo "emgkey install: error: $*" >&2; exit 1; }

cd "$HERE"
say "checking SHA256SUMS"
if command -v sha256sum >/dev/null 2>&1; then
    sha256sum -c --quiet SHA256SUMS || die "checksum mismatch: the archive is corrupt or was modified"
else
    "$PYTHON" - <<'EOF' || die "checksum mismatch: the archive is corrupt or was modified"
import hashlib, sys
bad = [p for h, p in (l.rstrip("\n").split("  ", 1) for l in open("SHA256SUMS"))
       if hashlib.sha256(open(p, "rb").read()).hexdigest() != h]
sys.exit(1 if bad else 0)
EOF
fi

ARCH=$(uname -m)
case "$ARCH" in
    aarch64|arm64|x86_64) ;;
    armv6l|armv7l) die "32-bit ARM ($ARCH): onnxruntime and ai-edge-litert have no wheels for it;" \
        "install the 64-bit OS" ;;
    *) say "warning: untested architecture $ARCH" ;;
esac
command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found"
PY=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if [ "$PY" != "$PINNED_PY" ] && [ "$ANY_PYTHON" = 0 ]; then
    die "this archive is pinned for Python $PINNED_PY, $PYTHON is $PY:" \
        "rebuild it with --device-python $PY, or pass --any-python"
fi

say "creating $PREFIX/venv (Python $PY, $ARCH)"
mkdir -p "$PREFIX"
"$PYTHON" -m venv "$PREFIX/venv" || die "python3 -m venv failed (Debian/Ubuntu: sudo apt install python3-venv)"
PIP="$PREFIX/venv/bin/python -m pip --disable-pip-version-check"
FIND=""
if ls wheels/*.whl 2>/dev/null | grep -qv '/emgkey-'; then
    FIND="--no-index --find-links $HERE/wheels"
    say "installing from the archive's wheels (offline)"
fi
WHEEL=$(ls wheels/emgkey-*.whl | head -n 1)
if [ "$ANY_PYTHON" = 1 ] && [ "$PY" != "$PINNED_PY" ]; then
    # shellcheck disable=SC2086
    $PIP install ${EMGKEY_PIP_ARGS:-} $FIND "$WHEEL[device]"
else
    # shellcheck disable=SC2086
    $PIP install ${EMGKEY_PIP_ARGS:-} $FIND -r requirements-device.txt
    # shellcheck disable=SC2086
    $PIP install ${EMGKEY_PIP_ARGS:-} --no-deps "$WHEEL"
fi

say "installing the model bundle"
rm -rf "$PREFIX/bundle.new"
cp -R bundle "$PREFIX/bundle.new"
rm -rf "$PREFIX/bundle"
mv "$PREFIX/bundle.new" "$PREFIX/bundle"
if [ -d lm ]; then rm -rf "$PREFIX/lm"; cp -R lm "$PREFIX/lm"; fi
cp README.md target.json "$PREFIX/"
sed "s#@PREFIX@#$PREFIX#g" emgkey.service > "$PREFIX/emgkey.service"

if "$PREFIX/venv/bin/python" -c "import torch" >/dev/null 2>&1; then
    die "torch is importable in $PREFIX/venv: the device install must not contain it"
fi
"$PREFIX/venv/bin/emgkey" --version
if [ "$VERIFY" = 1 ]; then
    say "verifying the bundle on this device's runtimes (emgkey verify)"
    # Every file is checked and recorded in the manifest; the install needs the service's file to pass.
    "$PREFIX/venv/bin/emgkey" verify "$PREFIX/bundle" || say "warning: some files do not verify here (see above)"
    CHECK="import sys; from emgkey.bundle import load_bundle; from emgkey.edge_runtime.engines import open_engine
open_engine(load_bundle(sys.argv[1]), format=sys.argv[2], precision=sys.argv[3])"
    "$PREFIX/venv/bin/python" -c "$CHECK" \
        "$PREFIX/bundle" "@FORMAT@" "@PRECISION@" \
        || die "the service's model file (@FORMAT@ @PRECISION@) does not verify on this device (--no-verify to skip)"
fi

if [ "$SYSTEMD" = 1 ]; then
    [ "$(id -u)" = 0 ] || die "--systemd needs root"
    cp "$PREFIX/emgkey.service" /etc/systemd/system/emgkey.service
    if [ ! -f /etc/default/emgkey ]; then
        echo "# EMGKEY_SOURCE=serial:///dev/ttyUSB0?baud=115200" > /etc/default/emgkey
        echo "# EMGKEY_ARGS=--format onnx --precision int8 --threads 1 --status log" >> /etc/default/emgkey
    fi
    systemctl daemon-reload
    systemctl enable --now emgkey.service
    say "service enabled: journalctl -u emgkey -f"
fi
say "done. Try: $PREFIX/venv/bin/emgkey run --bundle $PREFIX/bundle --source \"sim://?minutes=0.2&speed=max\""
say "the service runs its model on $SERVICE_RUNTIME. Benchmark this device:"
say "  $PREFIX/venv/bin/emgkey bench --bundle $PREFIX/bundle --out ~/emgkey-bench"
"""


def device_readme(target: Target, info: dict[str, Any]) -> str:
    svc = info["service"]
    m = info["model"]
    data = info["model"].get("data", "unknown")
    lines = [
        f"# emgkey for {target.title}",
        "",
        f"Model `{m['name']}` ({m.get('params') or '?'} parameters, profile `{m['profile']}`), "
        f"emgkey {__version__}. The service runs the {svc['format']} {svc['precision']} file "
        f"(verified on {svc['runtime']}) with {'beam search + LM' if svc['lm'] else 'greedy decoding'}, "
        f"1 thread, reading `{svc['serial_port']}` at {svc['baud']} baud.",
        "",
    ]
    if data == "simulated":
        lines += ["> The accuracy recorded in `bundle/manifest.json` was measured on **simulated** data.", ""]
    lines += [
        "## Install",
        "",
        "```sh",
        f"tar xzf {info['archive_name']} && cd {info['root']}",
        "sudo sh install.sh --systemd            # /opt/emgkey, service enabled",
        "sh install.sh --prefix ~/emgkey          # or: no root, no service",
        "```",
        "",
        "`install.sh` checks `SHA256SUMS`, the CPU (64-bit) and Python "
        f"({info['python']}: the pins in `requirements-device.txt` are for it), creates a venv, installs "
        "the pinned requirements and `wheels/emgkey-*.whl` (never torch), copies `bundle/`, checks that torch "
        "does not import and runs `emgkey verify` on this device's runtime (a file that does not compute what "
        "was evaluated is refused by `emgkey run`).",
        "",
        "## Run",
        "",
        "```sh",
        "journalctl -u emgkey -f                  # the service's status lines",
        "tail -f /var/lib/emgkey/events.jsonl     # decoded text as JSON lines",
        f"/opt/emgkey/venv/bin/emgkey run --bundle /opt/emgkey/bundle --source serial://{svc['serial_port']}",
        '/opt/emgkey/venv/bin/emgkey run --bundle /opt/emgkey/bundle --source "replay://session.hdf5?speed=max"',
        "```",
        "",
        "Change the port or options in `/etc/default/emgkey` (`EMGKEY_SOURCE=serial:///dev/ttyACM0?baud=115200`, "
        "`EMGKEY_ARGS=...`), then `sudo systemctl restart emgkey`.",
        "",
        "## Benchmark this device",
        "",
        "```sh",
        "/opt/emgkey/venv/bin/emgkey bench --bundle /opt/emgkey/bundle --out ~/bench --device-label 'my pi'",
        "```",
        "",
        "writes `~/bench/results.json` and a report; copy the JSON back and merge it with other devices' "
        "(`emgkey report a.json b.json --out report/`). Measured numbers replace the report's Pi 4 estimates.",
        "",
        "## Notes",
        "",
        *[f"- {n}" for n in target.notes],
        f"- Requirements: {info['pins_how']}.",
        "- The beam decoder is pure Python (~1-2.5 ms per frame on x86 with flat emissions, several times more "
        "on a Pi): keep greedy decoding unless `emgkey bench` on this device shows room for it.",
        "",
        "## Files",
        "",
        "`bundle/` model bundle · `wheels/` emgkey (+ dependencies with --wheelhouse) · "
        "`requirements-device.txt` · `install.sh` · `emgkey.service` · `target.json` · `SHA256SUMS`",
    ]
    return "\n".join(lines) + "\n"


def write_sums(root: Path) -> Path:
    lines = []
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != SUMS_NAME:
            lines.append(f"{sha256_file(p)}  {p.relative_to(root).as_posix()}")
    path = root / SUMS_NAME
    path.write_text("\n".join(lines) + "\n")
    return path


def check_sums(root: Path) -> list[str]:
    """Files whose sha256 differs from SHA256SUMS, or that it lists but are missing."""
    bad = []
    for line in (root / SUMS_NAME).read_text().splitlines():
        digest, rel = line.split("  ", 1)
        p = root / rel
        if not p.is_file() or sha256_file(p) != digest:
            bad.append(rel)
    return bad


def _tar(src: Path, archive: Path) -> None:
    def clean(ti: tarfile.TarInfo) -> tarfile.TarInfo:
        ti.uid = ti.gid = 0
        ti.uname = ti.gname = "root"
        return ti

    tmp = archive.with_name(f".{archive.name}.{os.getpid()}.tmp")
    try:
        with tarfile.open(tmp, "w:gz") as tf:
            tf.add(src, arcname=src.name, recursive=False, filter=clean)
            for p in sorted(src.rglob("*")):
                tf.add(p, arcname=f"{src.name}/{p.relative_to(src).as_posix()}", recursive=False, filter=clean)
        os.replace(tmp, archive)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def download_wheelhouse(requirements: Path, dest: Path, python: str) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--disable-pip-version-check",
        "-q",
        "--no-deps",
        "-d",
        str(dest),
        *pip_platform_args(python),
        "-r",
        str(requirements),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ConfigError(f"downloading aarch64 wheels failed: {proc.stderr.strip()[-800:]}")
    return sorted(p.name for p in dest.glob("*.whl"))


def build_device_bundle(
    bundle: str | Path, out: str | Path, options: DeviceBundleOptions | None = None
) -> dict[str, Any]:
    """Write the archive; returns what ``target.json`` records plus the archive's size and file list."""
    opt = options or DeviceBundleOptions()
    if opt.target not in TARGETS:
        raise ConfigError(f"unknown target {opt.target!r}: {sorted(TARGETS)}")
    target = TARGETS[opt.target]
    bundle, out = Path(bundle), Path(out)
    if out.exists() and not opt.force:
        raise ConfigError(f"{out} exists; pass --force to replace it")
    if not out.name.endswith((".tar.gz", ".tgz")):
        raise ConfigError(f"{out}: the archive name must end in .tar.gz")
    python = opt.device_python or target.python
    if not re.fullmatch(r"3\.\d+", python):
        raise ConfigError(f"--device-python {python!r}: give X.Y, e.g. 3.11")
    b = load_bundle(bundle)
    m = b.manifest
    fmt, prec, runtime = pick_service_file(bundle, opt.format, opt.precision)
    serial_port = opt.serial_port or target.serial_port
    here = f"{sys.version_info.major}.{sys.version_info.minor}"

    reqs = device_requirements()
    if opt.requirements:
        pins, how = dict(opt.requirements), "given to the builder"
    elif python == here:
        pins, how = (
            installed_pins(reqs, python),
            f"the versions installed and verified on the build machine (Python {here})",
        )
    else:
        pins, how = (
            resolve_pins(reqs, python),
            f"resolved by pip for aarch64 / Python {python} (not run on the build machine)",
        )
    for torchy in ("torch", "torchvision", "torchaudio"):
        if torchy in pins:
            raise ConfigError(f"{torchy} ended up in the device requirements: {reqs}")

    model_key = re.sub(r"[^A-Za-z0-9_.-]+", "-", bundle.resolve().name)
    root_name = f"emgkey-{target.name}-{model_key}"
    with tempfile.TemporaryDirectory(
        prefix="emgkey-devbundle-", dir=out.parent if out.parent.exists() else None
    ) as tmp:
        root = Path(tmp) / root_name
        root.mkdir()
        copy_bundle(bundle, root / "bundle")
        wheels = root / "wheels"
        wheels.mkdir()
        if opt.wheel:
            wheel = Path(shutil.copy2(opt.wheel, wheels / Path(opt.wheel).name))
        else:
            wheel = build_wheel(wheels)
        lm_name = None
        if opt.lm:
            (root / "lm").mkdir()
            lm_name = Path(opt.lm).name
            shutil.copy2(opt.lm, root / "lm" / lm_name)
        req_path = root / "requirements-device.txt"
        req_path.write_text(requirements_text(pins, how, python, target))
        deps = download_wheelhouse(req_path, wheels, python) if opt.wheelhouse else []
        baud = int(m.profile.serial_baud)
        (root / "emgkey.service").write_text(service_unit(target, serial_port, baud, fmt, prec, lm_name))
        install = (
            INSTALL_SH.replace("@PYTHON@", python)
            .replace("@RUNTIME@", runtime)
            .replace("@FORMAT@", fmt)
            .replace("@PRECISION@", prec)
        )
        (root / "install.sh").write_text(install)
        (root / "install.sh").chmod(0o755)
        info: dict[str, Any] = {
            "emgkey_version": __version__,
            "created_unix": round(time.time()),
            "target": asdict(target),
            "python": python,
            "pins_how": how,
            "requirements": pins,
            "wheel": wheel.name,
            "wheelhouse": deps,
            "model": {
                "name": m.model.get("name"),
                "params": m.model.get("params"),
                "profile": m.profile.name,
                "data": m.accuracy.get("data", "unknown"),
                "bundle_source": str(bundle),
                "manifest_sha256": sha256_file(bundle / MANIFEST_NAME),
            },
            "service": {
                "format": fmt,
                "precision": prec,
                "runtime": runtime,
                "serial_port": serial_port,
                "baud": baud,
                "lm": lm_name,
            },
            "archive_name": out.name,
            "root": root_name,
        }
        (root / "target.json").write_text(json.dumps(info, indent=2) + "\n")
        (root / "README.md").write_text(device_readme(target, info))
        write_sums(root)
        files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
        out.parent.mkdir(parents=True, exist_ok=True)
        _tar(root, out)
    return {**info, "files": files, "archive_bytes": out.stat().st_size}


def unpack(archive: str | Path, dest: str | Path) -> Path:
    """Extract an archive built here (safe members only) and return its root folder."""
    dest = Path(dest)
    with tarfile.open(archive, "r:gz") as tf:
        names = tf.getnames()
        for n in names:
            if n.startswith("/") or ".." in Path(n).parts:
                raise ConfigError(f"{archive}: unsafe member {n!r}")
        if hasattr(tarfile, "data_filter"):
            tf.extractall(dest, filter="data")
        else:  # Python < 3.11.4; the members were checked above
            tf.extractall(dest)
    roots = {Path(n).parts[0] for n in names}
    if len(roots) != 1:
        raise ConfigError(f"{archive}: expected one top folder, got {sorted(roots)}")
    return dest / roots.pop()


def archive_members(archive: str | Path) -> Iterable[str]:
    with tarfile.open(archive, "r:gz") as tf:
        return tf.getnames()
