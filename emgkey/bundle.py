"""Model bundles: the folder a device trusts, described by ``manifest.json``.

A bundle is written by ``emgkey export`` (with torch) and read by the edge
runtime (without it), so this module is the contract between the two and
imports nothing heavy. The manifest says everything the runtime needs and
nothing is hard-coded on the device: feature configuration, device profile and
channel map, charset, streaming signature (chunk, look-ahead, state names and
shapes), input normalisation, every model file with its sha256, quantization
recipe, which runtimes were verified against the fp32 reference, and the
accuracy measured at export. See docs/bundle.md.

Loading checks the schema version, each file's hash, the device profile and
that the chosen runtime was verified for the chosen file; any mismatch is a
``BundleError`` with a code and a message that says what to do.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from emgkey import __version__
from emgkey.atomic import atomic_write_text
from emgkey.errors import EmgkeyError
from emgkey.features import FeatureConfig
from emgkey.profiles import DeviceProfile

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"


class BundleError(EmgkeyError):
    """A bundle cannot be trusted or used. ``code`` is stable for programs to branch on."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(f"[{code}] {message}")


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TensorSpec:
        return cls(name=d["name"], shape=tuple(int(x) for x in d["shape"]), dtype=d.get("dtype", "float32"))


@dataclass(frozen=True)
class StreamingSignature:
    """How to call a streaming graph: ``(features, *states) -> (log_probs, *states_out)``.

    ``features`` is ``(chunk_frames, 1, n_bands, C, n_freq)``; state ``s`` has a matching
    output ``s + "_out"`` that is fed back as ``s`` on the next call. Emissions lag the
    input by ``output_delay_frames`` (look-ahead), declared rather than assumed.
    """

    chunk_frames: int
    lookahead_frames: int
    output_delay_frames: int
    features: TensorSpec
    states: tuple[TensorSpec, ...]
    log_probs: TensorSpec

    def __post_init__(self) -> None:
        assert self.chunk_frames > 0, "chunk_frames must be positive"
        assert self.lookahead_frames >= 0 and self.output_delay_frames >= 0, "delays cannot be negative"

    @property
    def state_output_names(self) -> tuple[str, ...]:
        return tuple(f"{s.name}_out" for s in self.states)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StreamingSignature:
        return cls(
            chunk_frames=int(d["chunk_frames"]),
            lookahead_frames=int(d["lookahead_frames"]),
            output_delay_frames=int(d["output_delay_frames"]),
            features=TensorSpec.from_dict(d["features"]),
            states=tuple(TensorSpec.from_dict(s) for s in d["states"]),
            log_probs=TensorSpec.from_dict(d["log_probs"]),
        )


@dataclass
class RuntimeCheck:
    """One model file run on one runtime against the fp32 reference on held-out windows."""

    runtime: str  # "onnxruntime" | "ai-edge-litert" | "tflite-runtime"
    version: str
    supported: bool
    max_abs_logprob_diff: float | None = None
    argmax_agreement: float | None = None
    cer_delta: float | None = None
    note: str = ""

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RuntimeCheck:
        return cls(**d)


@dataclass
class ModelFile:
    path: str  # relative to the bundle folder
    sha256: str
    bytes: int
    format: str  # "onnx" | "tflite"
    precision: str  # "fp32" | "int8"
    graph: str  # "streaming" | "offline"
    quantization: dict[str, Any] = field(default_factory=dict)
    runtimes: list[RuntimeCheck] = field(default_factory=list)

    def supported_on(self, runtime: str) -> bool:
        return any(r.runtime == runtime and r.supported for r in self.runtimes)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelFile:
        d = dict(d)
        d["runtimes"] = [RuntimeCheck.from_dict(r) for r in d.get("runtimes", [])]
        return cls(**d)


@dataclass
class Manifest:
    model: dict[str, Any]  # {"name", "config", "params", "macs_per_s", "checkpoint_sha256"}
    profile: DeviceProfile
    features: FeatureConfig
    streaming: StreamingSignature
    files: list[ModelFile]
    charset: dict[str, Any]  # {"num_classes", "blank", "keys"}
    normalization: dict[str, Any] = field(default_factory=dict)
    accuracy: dict[str, Any] = field(default_factory=dict)  # says "data": "simulated" | "emg2qwerty"
    tool: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    emgkey_version: str = __version__

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "emgkey_version": self.emgkey_version,
            "model": self.model,
            "profile": self.profile.to_dict(),
            "features": self.features.to_dict(),
            "streaming": self.streaming.to_dict(),
            "charset": self.charset,
            "normalization": self.normalization,
            "files": [asdict(f) for f in self.files],
            "accuracy": self.accuracy,
            "tool": self.tool,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Manifest:
        version = d.get("schema_version")
        if version != SCHEMA_VERSION:
            raise BundleError(
                "schema_version",
                f"manifest schema version {version!r}, this emgkey reads version {SCHEMA_VERSION}; "
                "re-export the bundle with a matching emgkey",
            )
        try:
            return cls(
                schema_version=version,
                emgkey_version=str(d["emgkey_version"]),
                model=dict(d["model"]),
                profile=DeviceProfile.from_dict(d["profile"]),
                features=FeatureConfig.from_dict(d["features"]),
                streaming=StreamingSignature.from_dict(d["streaming"]),
                charset=dict(d["charset"]),
                normalization=dict(d.get("normalization", {})),
                files=[ModelFile.from_dict(f) for f in d["files"]],
                accuracy=dict(d.get("accuracy", {})),
                tool=dict(d.get("tool", {})),
            )
        except (KeyError, TypeError, ValueError, AssertionError) as exc:
            raise BundleError("malformed", f"manifest is malformed: {exc!r}") from exc

    def file(self, *, format: str, precision: str, graph: str = "streaming") -> ModelFile:
        for f in self.files:
            if (f.format, f.precision, f.graph) == (format, precision, graph):
                return f
        have = [(f.format, f.precision, f.graph) for f in self.files]
        raise BundleError("no_such_file", f"bundle has no {graph} {format} {precision} model; it has {have}")


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_manifest(bundle_dir: str | Path, manifest: Manifest) -> Path:
    """Atomically (re)write ``manifest.json``; the manifest is written last, so a bundle
    whose export died midway has no manifest and is never loaded."""
    path = Path(bundle_dir) / MANIFEST_NAME
    atomic_write_text(path, json.dumps(manifest.to_dict(), indent=2, sort_keys=False) + "\n")
    return path


def read_manifest(bundle_dir: str | Path) -> Manifest:
    path = Path(bundle_dir) / MANIFEST_NAME
    if not path.is_file():
        raise BundleError("no_manifest", f"{path} does not exist: not a bundle, or its export did not finish")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise BundleError("malformed", f"{path} is not valid JSON: {exc}") from exc
    return Manifest.from_dict(data)


@dataclass
class Bundle:
    root: Path
    manifest: Manifest

    def path_of(self, f: ModelFile) -> Path:
        return self.root / f.path


def load_bundle(
    bundle_dir: str | Path,
    *,
    expect_profile: str | None = None,
    verify_hashes: bool = True,
) -> Bundle:
    """Open a bundle after checking schema, file hashes and (optionally) the device profile."""
    root = Path(bundle_dir)
    manifest = read_manifest(root)
    if expect_profile is not None and manifest.profile.name != expect_profile:
        raise BundleError(
            "profile_mismatch",
            f"bundle is for device profile {manifest.profile.name!r}, this device is {expect_profile!r}",
        )
    if verify_hashes:
        for f in manifest.files:
            p = root / f.path
            if not p.is_file():
                raise BundleError("missing_file", f"{p} is listed in the manifest but missing")
            digest = sha256_file(p)
            if digest != f.sha256:
                raise BundleError(
                    "hash_mismatch",
                    f"{p}: sha256 {digest[:12]}... does not match the manifest's {f.sha256[:12]}...; "
                    "the file was modified or corrupted: re-copy the bundle",
                )
    return Bundle(root=root, manifest=manifest)


def require_runtime(f: ModelFile, runtime: str) -> None:
    """Refuse a (file, runtime) pair that verification did not pass."""
    if not f.supported_on(runtime):
        checks = {r.runtime: (r.supported, r.note) for r in f.runtimes}
        raise BundleError(
            "runtime_unsupported",
            f"{f.path} was not verified on {runtime} (verification results: {checks}); "
            "use a verified runtime or run `emgkey verify` on this device",
        )
