"""``emgkey export reproduce``: re-measure a bundle's recorded test CER from its files on disk.

    emgkey export reproduce BUNDLE --data DIR [--split DIR/splits/generic.yaml]

The bundle is loaded as a device loads it (``load_bundle``: schema, hashes, runtime support), and
every streaming file its manifest has a test CER for is run again, through the runtime it was
scored on, over the same test windows the export used (rebuilt from the checkpoint's training
config, the manifest's split, window length and window count). The CER must come back equal
(to the 4 decimals the manifest keeps); a file whose runtime is recorded as unsupported is
reported as refused, which is what loading it on a device does. Needs torch and the dataset
(a development-machine check, not a device one).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from emgkey.bundle import BundleError, load_bundle, sha256_file
from emgkey.errors import ConfigError

TOLERANCE = 1e-3  # the manifest rounds CER to 4 decimals


def reproduce(
    bundle_dir: str | Path, data_root: str | Path, split_file: str | Path | None = None
) -> list[dict[str, Any]]:
    """One row per scored file: recorded CER, CER now, and whether they match (or why it did not run)."""
    from emgkey.edge_runtime import engines
    from emgkey.export.bundle_writer import load_windows, score
    from emgkey.train.checkpoint import load_checkpoint
    from emgkey.train.config import TrainConfig
    from emgkey.train.data import SplitPaths

    b = load_bundle(bundle_dir)
    m = b.manifest
    acc = m.accuracy
    if not acc.get("files"):
        raise ConfigError(f"{bundle_dir}: the manifest records no test CER to reproduce")
    ckpt_path = Path(str(m.model.get("checkpoint", "")))
    if not ckpt_path.is_file():
        raise ConfigError(f"{bundle_dir}: its checkpoint {ckpt_path} is not on this machine (it holds the data config)")
    if m.model.get("checkpoint_sha256") and sha256_file(ckpt_path) != m.model["checkpoint_sha256"]:
        raise ConfigError(f"{ckpt_path} is not the checkpoint this bundle was exported from (sha256 differs)")
    ckpt = load_checkpoint(ckpt_path)
    split = SplitPaths.resolve(data_root, split_file or acc["split"])
    if split.profile.name != m.profile.name:
        raise ConfigError(
            f"{bundle_dir} is a {m.profile.name!r} bundle; the split lists {split.profile.name!r} sessions"
        )
    windows = load_windows(
        split.paths[acc.get("subset", "test")],
        TrainConfig.from_dict(ckpt["train_config"]),
        m.profile,
        m.features,
        window_s=acc.get("window_s"),
        max_windows=acc.get("windows"),
        subset=acc.get("subset", "test"),
    )
    if windows.characters != acc.get("characters"):
        raise ConfigError(
            f"the rebuilt test windows hold {windows.characters} characters, the manifest {acc.get('characters')}: "
            "not the data the bundle was scored on"
        )
    rows: list[dict[str, Any]] = []
    for f in m.files:
        rec = acc["files"].get(f.path)
        if f.graph != "streaming" or rec is None:
            continue
        row: dict[str, Any] = {"file": f.path, "runtime": rec.get("runtime"), "recorded_cer": rec["cer"]}
        try:
            eng = engines.open_engine(b, precision=f.precision, format=f.format, threads=1)
        except BundleError as exc:  # refused at load (unsupported on this runtime): a device would refuse it too
            row |= {"cer": None, "match": None, "note": f"refused: {exc}"}
            rows.append(row)
            continue
        cer = score(eng, windows)["cer"]
        row |= {"cer": cer, "match": abs(cer - rec["cer"]) <= TOLERANCE, "note": ""}
        rows.append(row)
    return rows
