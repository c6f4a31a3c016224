"""Calibration profiles: history, activation, rollback, refusals, and crashes in the middle of a write."""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from pathlib import Path

import pytest

pytest.importorskip("onnx", reason="toy bundles are built with onnx.helper")

from emgkey.benchmarks.toy_bundle import build_toy_bundle
from emgkey.bundle import read_manifest
from emgkey.edge_runtime import profile_store
from emgkey.edge_runtime.profile_store import (
    ACTIVE_JSON,
    PROFILE_JSON,
    Profile,
    ProfileError,
    ProfileStore,
    model_fingerprint,
    open_for_run,
)


@pytest.fixture()
def bundle(tmp_path: Path) -> Path:
    return build_toy_bundle(tmp_path / "bundle", "armband8", int8=False)


def _profile(bundle: Path, accepted: bool = True, shift: int = 0, strategy: str = "stats") -> Profile:
    return Profile(
        id="",
        user="alice",
        created_unix=time.time(),
        strategy=strategy,
        base_fingerprint=model_fingerprint(read_manifest(bundle)),
        normalization={"kind": "identity", "channel_shift": [shift, 0]},
        accepted=accepted,
        reason="test",
    )


def _save(store: ProfileStore, prof: Profile, payload: bytes = b"data") -> Profile:
    with store.staging() as tmp:
        (tmp / "recording.npz").write_bytes(payload)
        return store.commit(tmp, prof)


def test_history_activation_and_rollback(bundle: Path) -> None:
    store = ProfileStore(bundle, "alice")
    assert store.active() is None and store.profiles() == []
    a = _save(store, _profile(bundle, shift=1))
    b = _save(store, _profile(bundle, shift=2))
    assert a.id != b.id and [p.id for p in store.profiles()] == sorted([a.id, b.id])
    store.activate(a.id)
    store.activate(b.id)
    assert store.active().normalization["channel_shift"] == [2, 0]
    assert store.rollback().id == a.id  # back to the profile active before
    assert store.active_id() == a.id
    assert store.rollback() is None  # back to the plain bundle
    assert store.active() is None
    with pytest.raises(ProfileError, match="nothing_to_roll_back"):
        store.rollback()
    events = [e["event"] for e in store.history()]
    assert events == ["calibrated", "calibrated", "activated", "activated", "rolled_back", "rolled_back"]
    # Profiles are files next to the bundle: another store object sees the same state.
    assert ProfileStore(bundle, "alice").active_id() is None
    assert ProfileStore(bundle, "bob").profiles() == []


def test_a_rejected_profile_is_kept_but_never_activated(bundle: Path) -> None:
    store = ProfileStore(bundle, "alice")
    rejected = _save(store, _profile(bundle, accepted=False))
    assert store.load(rejected.id).accepted is False and (rejected.path / "recording.npz").is_file()
    with pytest.raises(ProfileError, match="not_accepted"):
        store.activate(rejected.id)
    assert store.active_id() is None
    assert store.history()[-1]["event"] == "rejected"


def test_rollback_skips_profiles_that_disappeared(bundle: Path) -> None:
    import shutil

    store = ProfileStore(bundle, "alice")
    a, b, c = (_save(store, _profile(bundle, shift=s)) for s in (1, 2, 3))
    for p in (a, b, c):
        store.activate(p.id)
    shutil.rmtree(b.path)
    assert store.rollback().id == a.id


def test_a_profile_for_another_bundle_is_refused(bundle: Path, tmp_path: Path) -> None:
    store = ProfileStore(bundle, "alice")
    prof = _profile(bundle)
    prof.base_fingerprint = "0" * 64
    with pytest.raises(ProfileError, match="wrong_bundle"):
        _save(store, prof)
    assert store.profiles() == [] and not list(store.root.glob(".*.partial"))
    # A good profile whose bundle was later replaced by another model is refused at run time.
    good = _save(store, _profile(bundle))
    store.activate(good.id)
    other = build_toy_bundle(tmp_path / "other", "armband8", int8=False, seed=7)
    (other / "profiles").symlink_to(bundle / "profiles", target_is_directory=True)
    from emgkey.bundle import load_bundle

    with pytest.raises(ProfileError, match="wrong_bundle"):
        open_for_run(load_bundle(other), "alice")
    assert open_for_run(load_bundle(bundle), "alice")[1].id == good.id
    assert open_for_run(load_bundle(bundle), "alice", "base")[1] is None


def test_bad_user_names_and_ids(bundle: Path) -> None:
    for bad in ("", "../x", "a/b", ".hidden", "x" * 65):
        with pytest.raises(ProfileError, match="bad_user"):
            ProfileStore(bundle, bad)
    with pytest.raises(ProfileError, match="no_such_profile"):
        ProfileStore(bundle, "alice").activate("../../etc")


def test_a_write_that_fails_midway_leaves_the_active_profile_intact(bundle: Path, monkeypatch) -> None:
    store = ProfileStore(bundle, "alice")
    good = _save(store, _profile(bundle, shift=1))
    store.activate(good.id)
    before = (store.root / ACTIVE_JSON).read_bytes()

    # The profile.json write dies (disk full, power cut emulated by an exception) after half a file.
    def broken_write(path: Path, text: str) -> Path:
        Path(path).with_name(".broken.tmp").write_text(text[: len(text) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(profile_store, "atomic_write_text", broken_write)
    with pytest.raises(OSError, match="No space"):
        _save(store, _profile(bundle, shift=2))
    monkeypatch.undo()
    assert (store.root / ACTIVE_JSON).read_bytes() == before
    assert [p.id for p in store.profiles()] == [good.id]
    assert store.active().normalization["channel_shift"] == [1, 0]
    assert not list(store.root.glob(".*.partial"))  # the staging folder was removed

    # Activation dies while replacing active.json: the old pointer stays.
    newer = _save(store, _profile(bundle, shift=3))

    def broken_replace(src: str, dst: str) -> None:
        raise OSError(5, "I/O error")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        store.activate(newer.id)
    monkeypatch.undo()
    assert (store.root / ACTIVE_JSON).read_bytes() == before
    assert store.active().id == good.id


def _crash_during_commit(bundle: str, when: str) -> None:
    """Child process: start writing a profile and die (os._exit: no cleanup, no finally) at ``when``."""
    store = ProfileStore(bundle, "alice")
    prof = _profile(Path(bundle), shift=9)
    real_write = profile_store.atomic_write_text
    real_rename = os.rename

    def write(path: Path, text: str) -> Path:
        if when == "profile_json":
            Path(path).write_text(text[: len(text) // 3])  # a torn file where the final one would go
            os._exit(17)
        return real_write(path, text)

    def rename(src: str, dst: str) -> None:
        if when == "rename":
            os._exit(17)
        real_rename(src, dst)

    profile_store.atomic_write_text = write  # type: ignore[assignment]
    os.rename = rename  # type: ignore[assignment]
    with store.staging() as tmp:
        (tmp / "recording.npz").write_bytes(b"x" * 100_000)
        store.commit(tmp, prof)
    os._exit(0)


@pytest.mark.parametrize("when", ["profile_json", "rename"])
def test_a_calibration_killed_mid_write_leaves_the_active_profile_intact(bundle: Path, when: str) -> None:
    store = ProfileStore(bundle, "alice")
    good = _save(store, _profile(bundle, shift=1))
    store.activate(good.id)
    pointer = (store.root / ACTIVE_JSON).read_bytes()
    ctx = multiprocessing.get_context("fork")
    child = ctx.Process(target=_crash_during_commit, args=(str(bundle), when))
    child.start()
    child.join(30)
    assert child.exitcode == 17, "the child should have died inside the write"
    # What a crash leaves: a .partial folder (maybe holding a torn profile.json), never a profile.
    partials = list(store.root.glob(".*.partial"))
    assert len(partials) == 1
    assert (store.root / ACTIVE_JSON).read_bytes() == pointer
    assert [p.id for p in store.profiles()] == [good.id]
    assert store.active().normalization["channel_shift"] == [1, 0]
    # The next calibration cleans it up (once it is stale), and works.
    assert store.remove_stale_partials(older_than_s=0.0) == [partials[0].name]
    nxt = _save(store, _profile(bundle, shift=4))
    store.activate(nxt.id)
    assert store.active().id == nxt.id
    assert json.loads((store.root / nxt.id / PROFILE_JSON).read_text())["normalization"]["channel_shift"] == [4, 0]
