"""Per-user calibration profiles, stored next to the bundle they calibrate.

Layout::

    BUNDLE/profiles/<user>/
        active.json                 {"active": "<id>" | null, "stack": [earlier active ids]}   (atomic)
        history.jsonl               one line per event: calibrated, activated, rolled back, rejected
        20251122T071502Z/           one profile (the id is its UTC creation time)
            profile.json            written last: a profile folder without it is not a profile
            recording.npz           the calibration data (optional, for inspection and re-runs)
            keys.npz                the user's key prototypes (when the bundle has a key prior)
            bundle/                 strategy 2 with re-exported layers: a verified bundle of its own
        .20251122T071502Z.partial/  a profile being written (never read; removed when found stale)

Writes are crash-safe: a profile is assembled in a ``.partial`` folder, ``profile.json`` is written
(atomically) last, and the folder is renamed into place; only then may ``active.json`` point at it,
and ``active.json`` itself is replaced atomically. A crash at any point leaves the previously active
profile active and intact. Mutations of one user's profiles hold an exclusive ``flock`` on
``<user>/.lock``.

A profile that did not beat the model that was active when it was made (``accepted: false``) is kept
for inspection but can never be activated. Rollback re-activates the profile that was active before
the current one (or the plain bundle, when there was none). A profile belongs to one bundle: it
records the bundle's model fingerprint (the hashes of its model files, which ``emgkey verify`` never
changes) and is refused for any other.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from emgkey.atomic import atomic_write_text, fsync_dir
from emgkey.bundle import Bundle, Manifest, load_bundle
from emgkey.errors import EmgkeyError

PROFILES_DIR = "profiles"
PROFILE_JSON = "profile.json"
ACTIVE_JSON = "active.json"
HISTORY = "history.jsonl"
LOCK = ".lock"
FORMAT = "emgkey-calibration-profile"
FORMAT_VERSION = 2  # 2: optional key prototypes (``keys``)

_USER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_ID = re.compile(r"^\d{8}T\d{6}Z(-\d+)?$")


class ProfileError(EmgkeyError):
    """A profile cannot be stored, found or used; ``code`` is stable for programs to branch on."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(f"[{code}] {message}")


def model_fingerprint(manifest: Manifest) -> str:
    """sha256 over the model files' hashes: what a profile was calibrated for (manifest rewrites do not change it)."""
    digests = sorted(f"{f.path}:{f.sha256}" for f in manifest.files)
    return hashlib.sha256("\n".join(digests).encode()).hexdigest()


@dataclass
class Profile:
    """One calibration of one user for one bundle (``profile.json``)."""

    id: str
    user: str
    created_unix: float
    strategy: str  # "stats" | "finetune" | "keys" (the base model with key rescoring only)
    base_fingerprint: str
    normalization: dict[str, Any]  # the input map in manifest form (FeatureNormalization.from_manifest)
    accepted: bool
    reason: str
    bundle: str | None = None  # relative folder of a re-exported bundle (strategy 2), else the base bundle
    keys: dict[str, Any] | None = None  # key prototypes: {"path", "sha256", "enabled", "heldout", ...} (calib_keys)
    metrics: dict[str, Any] = field(default_factory=dict)
    format: str = FORMAT
    format_version: int = FORMAT_VERSION
    path: Path | None = field(default=None, compare=False)  # the profile folder (not stored)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("path")
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], path: Path | None = None) -> Profile:
        if d.get("format") != FORMAT or int(d.get("format_version", 0)) > FORMAT_VERSION:
            raise ProfileError("malformed", f"{path}: not an emgkey calibration profile of a version this reads")
        known = set(cls.__dataclass_fields__) - {"path"}
        unknown = set(d) - known
        if unknown:
            raise ProfileError("malformed", f"{path}: unknown profile fields {sorted(unknown)}")
        try:
            return cls(**d, path=path)
        except TypeError as exc:
            raise ProfileError("malformed", f"{path}: {exc}") from exc

    def bundle_dir(self, base: Path) -> Path:
        """The bundle this profile runs: its own re-exported one, or the base bundle."""
        if self.bundle is None:
            return base
        assert self.path is not None, "an unsaved profile has no folder"
        return self.path / self.bundle


class ProfileStore:
    """The profiles of one user of one bundle (see the module docstring for the layout and guarantees)."""

    def __init__(self, bundle_dir: str | Path, user: str, *, manifest: Manifest | None = None) -> None:
        if not _USER.match(user):
            raise ProfileError("bad_user", f"user name {user!r}: 1-64 of letters, digits, '_', '.', '-'")
        self.bundle_dir = Path(bundle_dir)
        self.user = user
        self.root = self.bundle_dir / PROFILES_DIR / user
        self._manifest = manifest

    @property
    def fingerprint(self) -> str:
        if self._manifest is None:
            self._manifest = load_bundle(self.bundle_dir, verify_hashes=False).manifest
        return model_fingerprint(self._manifest)

    # -- locking and events ------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Exclusive lock on this user's profiles (another calibration of the same user waits)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / LOCK, "a") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    def _event(self, event: str, **info: Any) -> None:
        line = json.dumps({"time_unix": round(time.time(), 3), "event": event, **info}, sort_keys=True)
        with open(self.root / HISTORY, "a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())

    def history(self) -> list[dict[str, Any]]:
        """Events, oldest first; a line torn by a crash is skipped."""
        path = self.root / HISTORY
        if not path.is_file():
            return []
        out = []
        for line in path.read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                out.append(json.loads(line))
        return out

    # -- writing a profile -------------------------------------------------------------------------------------------

    def new_id(self) -> str:
        base = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        pid, n = base, 1
        while (self.root / pid).exists():
            pid, n = f"{base}-{n}", n + 1
        return pid

    @contextlib.contextmanager
    def staging(self) -> Iterator[Path]:
        """A fresh ``.partial`` folder to assemble a profile in; removed on error, never read by anyone."""
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".", suffix=".partial", dir=self.root))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; a profile is read by whoever runs the device
        try:
            yield tmp
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # after commit() it no longer exists

    def commit(self, staging: Path, profile: Profile) -> Profile:
        """Write ``profile.json`` into ``staging`` (last), rename the folder to the profile's id, log it."""
        with self.locked():
            profile.id = self.new_id()
            if profile.base_fingerprint != self.fingerprint:
                raise ProfileError("wrong_bundle", "the profile was calibrated for another bundle")
            atomic_write_text(staging / PROFILE_JSON, json.dumps(profile.to_dict(), indent=2) + "\n")
            final = self.root / profile.id
            os.rename(staging, final)
            fsync_dir(self.root)
            profile.path = final
            self._event(
                "calibrated" if profile.accepted else "rejected",
                profile=profile.id,
                strategy=profile.strategy,
                reason=profile.reason,
            )
        return profile

    def remove_stale_partials(self, older_than_s: float = 3600.0) -> list[str]:
        """Delete ``.partial`` folders left by crashed calibrations (only old ones: a live one may be writing)."""
        removed: list[str] = []
        if not self.root.is_dir():
            return removed
        now = time.time()
        for p in self.root.glob(".*.partial"):
            if p.is_dir() and now - p.stat().st_mtime > older_than_s:
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p.name)
        return removed

    # -- reading ---------------------------------------------------------------------------------------------------

    def load(self, profile_id: str) -> Profile:
        if not _ID.match(profile_id):
            raise ProfileError("no_such_profile", f"{profile_id!r} is not a profile id (e.g. 20251122T071502Z)")
        path = self.root / profile_id
        meta = path / PROFILE_JSON
        if not meta.is_file():
            raise ProfileError("no_such_profile", f"user {self.user!r} has no complete profile {profile_id!r}")
        try:
            d = json.loads(meta.read_text())
        except json.JSONDecodeError as exc:
            raise ProfileError("malformed", f"{meta}: {exc}") from exc
        return Profile.from_dict(d, path)

    def profiles(self) -> list[Profile]:
        """Every complete profile of this user, oldest first (``.partial`` folders are not profiles)."""
        if not self.root.is_dir():
            return []
        out = []
        for p in sorted(self.root.iterdir()):
            if p.is_dir() and _ID.match(p.name) and (p / PROFILE_JSON).is_file():
                out.append(self.load(p.name))
        return out

    def _pointer(self) -> dict[str, Any]:
        path = self.root / ACTIVE_JSON
        if not path.is_file():
            return {"active": None, "stack": []}
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as exc:  # atomic writes make this a foreign edit, not a crash
            raise ProfileError("malformed", f"{path}: {exc}") from exc
        return {"active": d.get("active"), "stack": list(d.get("stack", []))}

    def active_id(self) -> str | None:
        return self._pointer()["active"]

    def active(self) -> Profile | None:
        """The active profile, checked against this bundle; None when the user runs the plain bundle."""
        pid = self.active_id()
        if pid is None:
            return None
        prof = self.load(pid)
        self.check(prof)
        return prof

    def check(self, prof: Profile) -> None:
        if prof.base_fingerprint != self.fingerprint:
            raise ProfileError(
                "wrong_bundle",
                f"profile {prof.id} of user {self.user!r} was calibrated for another version of this bundle's model; "
                "calibrate again (emgkey calibrate) or roll back",
            )
        if not prof.accepted:
            raise ProfileError("not_accepted", f"profile {prof.id} did not beat the model before it: {prof.reason}")

    # -- activation ------------------------------------------------------------------------------------------------

    def _write_pointer(self, active: str | None, stack: list[str]) -> None:
        doc = {"active": active, "stack": stack[-50:], "updated_unix": round(time.time(), 3)}
        atomic_write_text(self.root / ACTIVE_JSON, json.dumps(doc, indent=2) + "\n")

    def activate(self, profile_id: str) -> Profile:
        """Make an accepted profile the active one (the previous one goes on the rollback stack)."""
        with self.locked():
            prof = self.load(profile_id)
            self.check(prof)
            ptr = self._pointer()
            if ptr["active"] == profile_id:
                return prof
            stack = ptr["stack"] + ([ptr["active"]] if ptr["active"] is not None else ["base"])
            self._write_pointer(profile_id, stack)
            self._event("activated", profile=profile_id, previous=ptr["active"])
        return prof

    def rollback(self) -> Profile | None:
        """Re-activate what was active before the current profile; returns it (None: the plain bundle)."""
        with self.locked():
            ptr = self._pointer()
            if ptr["active"] is None:
                raise ProfileError("nothing_to_roll_back", f"user {self.user!r} runs the plain bundle already")
            stack = list(ptr["stack"])
            target: Profile | None = None
            while stack:
                pid = stack.pop()
                if pid == "base":
                    break
                with contextlib.suppress(ProfileError):  # a deleted or foreign profile is skipped
                    cand = self.load(pid)
                    self.check(cand)
                    target = cand
                    break
            self._write_pointer(target.id if target is not None else None, stack)
            self._event("rolled_back", profile=ptr["active"], now_active=target.id if target is not None else None)
        return target


def load_key_profile(prof: Profile) -> Any:
    """The profile's key prototypes (``keyproto.KeyProfile``) when it has them and they are enabled, else None.

    A ``keys.npz`` that is missing or does not match the hash in ``profile.json`` is a ``ProfileError``.
    """
    k = prof.keys
    if not k or not k.get("enabled") or prof.path is None:
        return None
    from emgkey.bundle import sha256_file
    from emgkey.edge_runtime.keyproto import KeyProfile, KeyProtoError

    path = prof.path / str(k["path"])
    if not path.is_file() or sha256_file(path) != k.get("sha256"):
        raise ProfileError("keys_corrupt", f"{path} is missing or does not match profile.json's sha256")
    try:
        return KeyProfile.load(path)
    except KeyProtoError as exc:
        raise ProfileError("keys_corrupt", str(exc)) from exc


def open_for_run(bundle: Bundle, user: str, profile_id: str | None = None) -> tuple[Bundle, Profile | None]:
    """What ``emgkey run --user`` executes: (bundle to load, the profile) for the user's active profile.

    ``profile_id``: a specific accepted profile instead of the active one, or ``"base"`` for the plain bundle.
    """
    store = ProfileStore(bundle.root, user, manifest=bundle.manifest)
    if profile_id == "base":
        return bundle, None
    prof = store.load(profile_id) if profile_id is not None else store.active()
    if prof is None:
        return bundle, None
    store.check(prof)
    if prof.bundle is None:
        return bundle, prof
    own = load_bundle(prof.bundle_dir(bundle.root))
    if own.manifest.profile.name != bundle.manifest.profile.name or own.manifest.features != bundle.manifest.features:
        raise ProfileError("wrong_bundle", f"profile {prof.id}'s bundle is for another device or front end")
    return own, prof
