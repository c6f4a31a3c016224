"""Dataset splits and metadata, in emg2qwerty's file forms.

Split files are Hydra configs, as emg2qwerty ships them in ``config/user/``::

    # @package _global_
    user: generic            # only in the generic file
    dataset:
      train:
      - user: <user id>
        session: <session name>   # the file <dataset root>/<session name>.hdf5
      val: [...]
      test: [...]

``make_splits`` follows emg2qwerty's scheme: hold out the users with the most
sessions (ties broken by the seed; users with quality-check tags are never held
out); split each held-out user's sessions into train/val/test for its own
personalized config ``user{i}.yaml``; build the generic config's train and val
from everyone else, and its test split from the held-out users' test sessions,
so generic models are always tested on people they never saw.

``metadata.csv`` has one row per session (see ``METADATA_COLUMNS``);
``quality_check_tags`` is a list written as a JSON string, which YAML (what
emg2qwerty's split script parses it with) reads too.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from emgkey.atomic import atomic_write_text
from emgkey.errors import ConfigError, SessionFileError
from emgkey.profiles import EMG2QWERTY
from emgkey.session import SessionFile

log = logging.getLogger(__name__)

SPLIT_HEADER = "# @package _global_"
SPLIT_NAMES: tuple[str, ...] = ("train", "val", "test")
GENERIC_USER = "generic"

Split = dict[str, list["SessionRef"]]  # {"train": [...], "val": [...], "test": [...]}


@dataclass(frozen=True, order=True)
class SessionRef:
    """One entry of a split: which user, which session file."""

    user: str
    session: str


@dataclass(frozen=True)
class SessionInfo:
    """One row of ``metadata.csv``: what a split needs to know about a session without opening it."""

    session: str
    user: str
    condition: str
    duration_mins: float
    num_keystrokes: int
    num_prompts: int
    profile: str
    sample_rate_hz: float
    channels_per_band: int
    quality_check_tags: tuple[str, ...] = ()

    @property
    def ref(self) -> SessionRef:
        return SessionRef(self.user, self.session)

    @classmethod
    def from_session(cls, session: SessionFile, quality_check_tags: Sequence[str] = ()) -> SessionInfo:
        p = session.profile
        return cls(
            session=session.session_name,
            user=session.user,
            condition=session.condition,
            duration_mins=session.duration_mins,
            num_keystrokes=len(session.keystrokes),
            num_prompts=len(session.prompts),
            profile=p.name,
            sample_rate_hz=p.sample_rate_hz,
            channels_per_band=p.channels_per_band,
            quality_check_tags=tuple(quality_check_tags),
        )

    @classmethod
    def from_path(cls, path: str | Path, quality_check_tags: Sequence[str] = ()) -> SessionInfo:
        with SessionFile(path) as session:
            return cls.from_session(session, quality_check_tags)


METADATA_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(SessionInfo))
# Columns a published emg2qwerty metadata.csv lacks; absent, they take the emg2qwerty profile's values.
_OPTIONAL_COLUMNS: dict[str, str] = {
    "profile": EMG2QWERTY.name,
    "sample_rate_hz": repr(EMG2QWERTY.sample_rate_hz),
    "channels_per_band": str(EMG2QWERTY.channels_per_band),
    "quality_check_tags": "[]",
}


# ---- split files ---------------------------------------------------------------------------------


def write_split_yaml(
    path: str | Path,
    train: Iterable[SessionRef],
    val: Iterable[SessionRef],
    test: Iterable[SessionRef],
    user: str | None = None,
) -> Path:
    """Write one split config (atomically); ``user`` adds the top-level ``user:`` key (``generic``)."""
    split: Split = {name: list(part) for name, part in zip(SPLIT_NAMES, (train, val, test), strict=True)}
    _check_disjoint(split, str(path))
    body: dict[str, Any] = {} if user is None else {"user": user}
    body["dataset"] = {name: [{"user": r.user, "session": r.session} for r in split[name]] for name in SPLIT_NAMES}
    return atomic_write_text(path, SPLIT_HEADER + "\n" + yaml.safe_dump(body, sort_keys=False))


def load_split(path: str | Path) -> Split:
    """Read a split config; anything but the documented keys, or any missing part, is a ``ConfigError``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read split file: {exc}") from exc
    if not text.startswith(SPLIT_HEADER):
        raise ConfigError(f"{path}: a split file must start with {SPLIT_HEADER!r} (Hydra global package)")
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: expected a mapping with a 'dataset' key, got {type(doc).__name__}")
    unknown = sorted(set(doc) - {"dataset", "user"})
    if unknown:
        raise ConfigError(f"{path}: unknown top-level key(s) {unknown}; allowed: 'dataset', 'user'")
    dataset = doc.get("dataset")
    if not isinstance(dataset, dict):
        raise ConfigError(f"{path}: 'dataset' must be a mapping with {list(SPLIT_NAMES)}")
    unknown = sorted(set(dataset) - set(SPLIT_NAMES))
    missing = [n for n in SPLIT_NAMES if n not in dataset]
    if unknown or missing:
        raise ConfigError(f"{path}: 'dataset' has unknown key(s) {unknown} / missing {missing}")
    split: Split = {}
    for name in SPLIT_NAMES:
        entries = dataset[name]
        if not isinstance(entries, list):
            raise ConfigError(f"{path}: dataset.{name} must be a list (use [] for none), got {entries!r}")
        refs = []
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict) or set(entry) != {"user", "session"}:
                raise ConfigError(f"{path}: dataset.{name}[{i}] must have exactly 'user' and 'session', got {entry!r}")
            # emg2qwerty's numeric user ids load as YAML ints; ids are names, so keep them as strings.
            refs.append(SessionRef(user=str(entry["user"]), session=str(entry["session"])))
        split[name] = refs
    _check_disjoint(split, str(path))
    return split


def _check_disjoint(split: Mapping[str, Sequence[SessionRef]], where: str) -> None:
    """A session listed twice (within a split or across splits) is a leak or a typo."""
    seen: dict[str, str] = {}
    for name in SPLIT_NAMES:
        for ref in split[name]:
            if ref.session in seen:
                raise ConfigError(f"{where}: session {ref.session!r} is listed in both {seen[ref.session]} and {name}")
            seen[ref.session] = name


def session_path(dataset_root: str | Path, ref: SessionRef) -> Path:
    """``<root>/<session>.hdf5`` (emg2qwerty's flat layout); ``SessionFileError`` if it is not there."""
    path = Path(dataset_root) / f"{ref.session}.hdf5"
    if not path.is_file():
        raise SessionFileError(path, f"session of user {ref.user!r} listed in the split is missing from the dataset")
    return path


# ---- making splits -------------------------------------------------------------------------------


def make_splits(
    sessions: Sequence[SessionInfo],
    n_test_users: int,
    n_val_sessions_per_user: int,
    n_test_sessions_per_user: int,
    seed: int,
    min_train_sessions_per_user: int = 1,
) -> tuple[Split, dict[str, Split]]:
    """Generic and per-user splits, emg2qwerty's way; deterministic given ``seed``.

    Returns ``(generic, personalized)`` where ``personalized`` maps each
    held-out user to its split, in ``user{i}`` order. A held-out user without
    enough sessions for train/val/test is a ``ConfigError``; a generic user
    without enough for val plus ``min_train_sessions_per_user`` is left out of
    the generic split (as in emg2qwerty) with a warning.
    """
    assert n_test_users >= 0 and n_val_sessions_per_user >= 0 and n_test_sessions_per_user >= 0, "counts must be >= 0"
    assert min_train_sessions_per_user >= 0, "min_train_sessions_per_user must be >= 0"
    names = [s.session for s in sessions]
    if len(set(names)) != len(names):
        raise ConfigError("make_splits: duplicate session names")
    rng = np.random.default_rng(seed)
    by_user: dict[str, list[SessionInfo]] = {}
    for s in sorted(sessions, key=lambda s: (s.user, s.session)):  # input order must not matter
        by_user.setdefault(s.user, []).append(s)

    test_users = _pick_test_users(by_user, n_test_users, rng)
    need_personal = min_train_sessions_per_user + n_val_sessions_per_user + n_test_sessions_per_user
    personalized: dict[str, Split] = {}
    for user in test_users:
        if len(by_user[user]) < need_personal:
            raise ConfigError(
                f"make_splits: held-out user {user!r} has {len(by_user[user])} sessions, needs {need_personal} "
                f"({min_train_sessions_per_user} train + {n_val_sessions_per_user} val + "
                f"{n_test_sessions_per_user} test)"
            )
        personalized[user] = _split_user(by_user[user], n_val_sessions_per_user, n_test_sessions_per_user, rng)

    generic: Split = {"train": [], "val": [], "test": []}
    need_generic = min_train_sessions_per_user + n_val_sessions_per_user
    for user, infos in by_user.items():
        if user in personalized:
            continue
        if len(infos) < need_generic:
            log.warning("make_splits: user %r has %d sessions (< %d); left out", user, len(infos), need_generic)
            continue
        part = _split_user(infos, n_val_sessions_per_user, 0, rng)
        generic["train"] += part["train"]
        generic["val"] += part["val"]
    for user in test_users:
        generic["test"] += personalized[user]["test"]
    return generic, personalized


def _pick_test_users(by_user: Mapping[str, list[SessionInfo]], n: int, rng: np.random.Generator) -> list[str]:
    """Users with the most sessions first (more data to personalize on); seeded draw within ties."""
    clean = {u: len(v) for u, v in by_user.items() if not any(s.quality_check_tags for s in v)}
    if n > len(clean):
        raise ConfigError(f"make_splits: {n} test users asked for, only {len(clean)} users without quality tags")
    picked: list[str] = []
    for count in sorted(set(clean.values()), reverse=True):
        remaining = n - len(picked)
        if remaining <= 0:
            break
        tied = sorted(u for u, c in clean.items() if c == count)
        if len(tied) > remaining:
            tied = [tied[i] for i in rng.choice(len(tied), size=remaining, replace=False)]
        picked += tied
    return picked


def _split_user(infos: Sequence[SessionInfo], n_val: int, n_test: int, rng: np.random.Generator) -> Split:
    """Draw test sessions, then val from the rest; whatever remains trains (order kept by name)."""
    order = rng.permutation(len(infos))
    test_idx = set(order[:n_test].tolist())
    val_idx = set(order[n_test : n_test + n_val].tolist())
    out: Split = {"train": [], "val": [], "test": []}
    for i, info in enumerate(infos):
        name = "test" if i in test_idx else "val" if i in val_idx else "train"
        out[name].append(info.ref)
    return out


def write_splits(out_dir: str | Path, generic: Split, personalized: Mapping[str, Split]) -> list[Path]:
    """Write ``<out_dir>/splits/generic.yaml`` and ``user{i}.yaml`` per held-out user (in mapping order)."""
    split_dir = Path(out_dir) / "splits"
    paths = [
        write_split_yaml(split_dir / "generic.yaml", generic["train"], generic["val"], generic["test"], GENERIC_USER)
    ]
    for i, split in enumerate(personalized.values()):
        paths.append(write_split_yaml(split_dir / f"user{i}.yaml", split["train"], split["val"], split["test"]))
    return paths


# ---- metadata.csv --------------------------------------------------------------------------------


def write_metadata_csv(path: str | Path, infos: Iterable[SessionInfo]) -> Path:
    """One row per session, columns ``METADATA_COLUMNS``; written atomically."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(METADATA_COLUMNS)
    for info in infos:
        row = [getattr(info, c) for c in METADATA_COLUMNS]
        row[METADATA_COLUMNS.index("quality_check_tags")] = json.dumps(list(info.quality_check_tags))
        writer.writerow(row)
    return atomic_write_text(path, buf.getvalue())


def read_metadata_csv(path: str | Path) -> list[SessionInfo]:
    """Read ``metadata.csv`` (ours, or emg2qwerty's, whose device columns default to its profile)."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            header = list(reader.fieldnames or [])
            rows = list(reader)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read metadata: {exc}") from exc
    missing = [c for c in METADATA_COLUMNS if c not in header and c not in _OPTIONAL_COLUMNS]
    if missing:
        raise ConfigError(f"{path}: missing column(s) {missing} (have {header})")
    infos = []
    for line, row in enumerate(rows, start=2):
        cells = {c: row.get(c) or _OPTIONAL_COLUMNS.get(c, "") for c in METADATA_COLUMNS}
        try:
            tags = yaml.safe_load(cells["quality_check_tags"]) or []
            if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
                raise ValueError(f"quality_check_tags must be a list of strings, got {tags!r}")
            infos.append(
                SessionInfo(
                    session=cells["session"],
                    user=cells["user"],
                    condition=cells["condition"],
                    duration_mins=_finite(cells["duration_mins"]),
                    num_keystrokes=_count(cells["num_keystrokes"]),
                    num_prompts=_count(cells["num_prompts"]),
                    profile=cells["profile"],
                    sample_rate_hz=_finite(cells["sample_rate_hz"]),
                    channels_per_band=_count(cells["channels_per_band"]),
                    quality_check_tags=tuple(tags),
                )
            )
        except (ValueError, yaml.YAMLError) as exc:
            raise ConfigError(f"{path}:{line}: bad metadata row: {exc}") from exc
    return infos


def _finite(cell: str) -> float:
    x = float(cell)
    if not math.isfinite(x):
        raise ValueError(f"expected a finite number, got {cell!r}")
    return x


def _count(cell: str) -> int:
    """A non-negative integer; ``12.0`` is accepted (spreadsheets and pandas write counts that way)."""
    x = float(cell)
    if not x.is_integer() or x < 0:
        raise ValueError(f"expected a non-negative integer, got {cell!r}")
    return int(x)
