"""Split files, emg2qwerty's split scheme, and metadata.csv."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from emgkey.errors import ConfigError, SessionFileError
from emgkey.profiles import ARMBAND8
from emgkey.session import write_session
from emgkey.splits import (
    METADATA_COLUMNS,
    SessionInfo,
    SessionRef,
    Split,
    load_split,
    make_splits,
    read_metadata_csv,
    session_path,
    write_metadata_csv,
    write_split_yaml,
    write_splits,
)


def info(user: str, session: str, tags: tuple[str, ...] = ()) -> SessionInfo:
    return SessionInfo(session, user, "on_keyboard", 1.0, 100, 10, "armband8", 200.0, 8, tags)


def population(counts: dict[str, int], tagged: frozenset[str] = frozenset()) -> list[SessionInfo]:
    return [
        info(user, f"{user}-s{j}", ("bad_emg",) if user in tagged and j == 0 else ())
        for user, n in counts.items()
        for j in range(n)
    ]


def refs(split: Split) -> list[SessionRef]:
    return [r for name in ("train", "val", "test") for r in split[name]]


# ---- split files ---------------------------------------------------------------------------------

EMG2QWERTY_STYLE = """# @package _global_
user: generic
dataset:
  train:
  - user: 71409769
    session: 2020-08-13-1597363426-keystrokes-71409769
  - user: 9456349
    session: 2020-08-13-1597354281-keystrokes
  val:
  - user: 9456349
    session: 2020-08-17-1597699312-keystrokes-09456349
  test: []
"""


def test_reads_emg2qwerty_split_file(tmp_path: Path) -> None:
    path = tmp_path / "generic.yaml"
    path.write_text(EMG2QWERTY_STYLE)
    split = load_split(path)
    assert split["train"][0] == SessionRef("71409769", "2020-08-13-1597363426-keystrokes-71409769")
    assert isinstance(split["train"][1].user, str)  # numeric ids stay names
    assert len(split["val"]) == 1 and split["test"] == []


def test_write_then_load_round_trip_and_form(tmp_path: Path) -> None:
    train = [SessionRef("u1", "s1"), SessionRef("u2", "s2")]
    val = [SessionRef("u1", "s3")]
    test = [SessionRef("u9", "s9")]
    path = write_split_yaml(tmp_path / "generic.yaml", train, val, test, user="generic")
    text = path.read_text()
    assert text.startswith("# @package _global_\nuser: generic\ndataset:\n  train:\n  - user: u1\n    session: s1\n")
    assert load_split(path) == {"train": train, "val": val, "test": test}
    personal = write_split_yaml(tmp_path / "user0.yaml", train, [], test)
    assert "user:" not in personal.read_text().split("dataset:")[0]
    assert yaml.safe_load(personal.read_text())["dataset"]["val"] == []


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("dataset: {train: [], val: [], test: []}\n", "must start with"),
        ("# @package _global_\n[1, 2]\n", "expected a mapping"),
        ("# @package _global_\nuser: generic\nmodel: x\ndataset: {train: [], val: [], test: []}\n", "'model'"),
        ("# @package _global_\ndataset: {train: [], val: []}\n", r"missing \['test'\]"),
        ("# @package _global_\ndataset: {train: [], val: [], test: [], extra: []}\n", r"unknown key\(s\) \['extra'\]"),
        ("# @package _global_\ndataset: {train: [], val:, test: []}\n", "must be a list"),
        ("# @package _global_\ndataset: {train: [{user: a}], val: [], test: []}\n", "exactly 'user' and 'session'"),
        (
            "# @package _global_\ndataset: {train: [{user: a, session: s, day: 1}], val: [], test: []}\n",
            "exactly 'user' and 'session'",
        ),
        (
            "# @package _global_\ndataset: {train: [{user: a, session: s}], val: [], test: [{user: a, session: s}]}\n",
            "listed in both train and test",
        ),
        ("# @package _global_\ndataset: {train: [\n", "not valid YAML"),
        ("# @package _global_\nuser: generic\n", "'dataset' must be a mapping"),
    ],
)
def test_bad_split_files(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_split(path)


def test_missing_split_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_split(tmp_path / "none.yaml")


def test_writer_refuses_leaky_split(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="both train and val"):
        write_split_yaml(tmp_path / "x.yaml", [SessionRef("u", "s")], [SessionRef("u", "s")], [])
    assert not (tmp_path / "x.yaml").exists()


def test_session_path(tmp_path: Path) -> None:
    ref = SessionRef("u", "2021-01-01-sess")
    with pytest.raises(SessionFileError, match="missing from the dataset") as exc:
        session_path(tmp_path, ref)
    assert exc.value.path == tmp_path / "2021-01-01-sess.hdf5"
    (tmp_path / "2021-01-01-sess.hdf5").touch()
    assert session_path(tmp_path, ref) == tmp_path / "2021-01-01-sess.hdf5"


# ---- make_splits ---------------------------------------------------------------------------------


def test_emg2qwerty_scheme_on_a_hand_built_population() -> None:
    counts = {"ann": 6, "bob": 6, "cid": 5, "dee": 3, "eve": 2, "fay": 1, "gus": 7}
    sessions = population(counts, tagged=frozenset({"gus"}))  # most sessions, but quality-tagged
    generic, personal = make_splits(
        sessions, n_test_users=2, n_val_sessions_per_user=1, n_test_sessions_per_user=2, seed=0
    )

    # Held out: the clean users with the most sessions, never the tagged one.
    assert list(personal) in (["ann", "bob"], ["bob", "ann"])
    for user, split in personal.items():
        assert [len(split[n]) for n in ("train", "val", "test")] == [3, 1, 2]
        assert {r.user for r in refs(split)} == {user}
        assert sorted(r.session for r in refs(split)) == [f"{user}-s{j}" for j in range(6)]

    # Generic test = the held-out users' test sessions; train/val never see those users.
    assert generic["test"] == [r for split in personal.values() for r in split["test"]]
    seen = {r.user for r in generic["train"] + generic["val"]}
    assert seen == {"cid", "dee", "eve", "gus"}  # fay (1 session < 1 val + 1 train) is left out
    for user in seen:
        assert sum(r.user == user for r in generic["val"]) == 1
    assert len(generic["train"]) == (5 - 1) + (3 - 1) + (2 - 1) + (7 - 1)


def test_deterministic_by_seed_and_input_order() -> None:
    counts = {f"u{i}": 4 for i in range(8)}
    sessions = population(counts)
    a = make_splits(sessions, 3, 1, 1, seed=11)
    b = make_splits(list(reversed(sessions)), 3, 1, 1, seed=11)
    assert a == b
    others = [make_splits(sessions, 3, 1, 1, seed=s) for s in range(5)]
    assert any(o != a for o in others)  # all users tie on count: the seed decides


def test_errors() -> None:
    sessions = population({"a": 4, "b": 2})
    with pytest.raises(ConfigError, match="3 test users"):
        make_splits(sessions, 3, 1, 1, seed=0)
    with pytest.raises(ConfigError, match="held-out user 'b' has 2 sessions, needs 3"):
        make_splits(sessions, 2, 1, 1, seed=0)
    with pytest.raises(ConfigError, match="duplicate"):
        make_splits(sessions + sessions[:1], 1, 1, 1, seed=0)


@settings(max_examples=60, deadline=None)
@given(
    counts=st.lists(st.integers(1, 7), min_size=1, max_size=9),
    n_test_users=st.integers(0, 3),
    n_val=st.integers(0, 2),
    n_test=st.integers(0, 2),
    seed=st.integers(0, 2**16),
)
def test_split_invariants(counts: list[int], n_test_users: int, n_val: int, n_test: int, seed: int) -> None:
    sessions = population({f"user{i}": n for i, n in enumerate(counts)})
    try:
        generic, personal = make_splits(sessions, n_test_users, n_val, n_test, seed)
    except ConfigError:
        return  # too few users or sessions for the ask; covered by test_errors
    held_out = set(personal)
    assert len(held_out) == n_test_users
    every = [r for split in personal.values() for r in refs(split)] + generic["train"] + generic["val"]
    assert len(every) == len(set(every))  # no session twice anywhere
    assert {r.user for r in generic["train"] + generic["val"]}.isdisjoint(held_out)
    assert set(generic["test"]) == {r for split in personal.values() for r in split["test"]}
    by_count = sorted(counts, reverse=True)
    assert sorted((c for i, c in enumerate(counts) if f"user{i}" in held_out), reverse=True) == by_count[:n_test_users]
    for user in held_out:
        assert len(personal[user]["val"]) == n_val and len(personal[user]["test"]) == n_test
        assert len(refs(personal[user])) == counts[int(user[4:])]


def test_write_splits_files(tmp_path: Path) -> None:
    generic, personal = make_splits(population({"a": 4, "b": 4, "c": 3}), 2, 1, 1, seed=3)
    paths = write_splits(tmp_path, generic, personal)
    assert [p.relative_to(tmp_path).as_posix() for p in paths] == [
        "splits/generic.yaml",
        "splits/user0.yaml",
        "splits/user1.yaml",
    ]
    assert load_split(paths[0]) == generic
    assert yaml.safe_load(paths[0].read_text())["user"] == "generic"
    for path, split in zip(paths[1:], personal.values(), strict=True):
        assert load_split(path) == split


# ---- metadata.csv --------------------------------------------------------------------------------


def test_metadata_round_trip(tmp_path: Path) -> None:
    infos = [info("u1", "s1"), info("u2", "s2", ("bad_emg", "short"))]
    path = write_metadata_csv(tmp_path / "metadata.csv", infos)
    header = path.read_text().splitlines()[0].split(",")
    assert header == list(METADATA_COLUMNS)
    assert header[:4] == ["session", "user", "condition", "duration_mins"]
    assert '"[""bad_emg"", ""short""]"' in path.read_text()
    assert read_metadata_csv(path) == infos


def test_reads_emg2qwerty_style_metadata(tmp_path: Path) -> None:
    # emg2qwerty's own table: no device columns, extra columns, Python-style tag lists, numeric user ids.
    path = tmp_path / "metadata.csv"
    path.write_text(
        "user,session,start,end,duration_mins,num_keystrokes,num_prompts,condition,quality_check_tags\n"
        "71409769,2020-08-13-x,1597363426.1,1597364000.2,9.57,2512,71,on_keyboard,[]\n"
        "9456349,2020-08-14-y,1,2,12.0,3000.0,80,on_keyboard,\"['bad_emg']\"\n"
    )
    a, b = read_metadata_csv(path)
    assert a.user == "71409769" and a.profile == "emg2qwerty" and a.sample_rate_hz == 2000.0
    assert a.channels_per_band == 16 and a.quality_check_tags == ()
    assert b.num_keystrokes == 3000 and b.quality_check_tags == ("bad_emg",)


@pytest.mark.parametrize(
    ("row", "match"),
    [
        ("s,u,on_keyboard,x,1,1,armband8,200,8,[]", "could not convert"),
        ("s,u,on_keyboard,1,1.5,1,armband8,200,8,[]", "non-negative integer"),
        ("s,u,on_keyboard,nan,1,1,armband8,200,8,[]", "finite"),
        ("s,u,on_keyboard,1,1,1,armband8,200,8,{a: 1}", "list of strings"),
    ],
)
def test_bad_metadata_rows(tmp_path: Path, row: str, match: str) -> None:
    path = tmp_path / "m.csv"
    path.write_text(",".join(METADATA_COLUMNS) + "\n" + row.replace("{a: 1}", '"{a: 1}"') + "\n")
    with pytest.raises(ConfigError, match=f"m.csv:2: bad metadata row: .*{match}"):
        read_metadata_csv(path)


def test_missing_metadata_column(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text("session,user,condition\n")
    with pytest.raises(ConfigError, match="missing column"):
        read_metadata_csv(path)


def test_session_info_from_a_session_file(tmp_path: Path) -> None:
    n = 400
    t0 = 1_600_000_000.0
    path = write_session(
        tmp_path / "sess-1.hdf5",
        profile=ARMBAND8,
        timestamps=t0 + np.arange(n) / 200.0,
        emg=np.zeros((n, 2, 8), np.int16),
        keystrokes=[{"key": "a", "start": t0 + 0.5, "end": t0 + 0.6}],
        prompts=[
            {"start": t0, "end": t0 + 1, "payload": {"text": "a"}},
            {"start": t0 + 1, "end": t0 + 2, "payload": None},
        ],
        session_name="sess-1",
        user="u3",
    )
    got = SessionInfo.from_path(path, quality_check_tags=["short"])
    assert got == SessionInfo("sess-1", "u3", "on_keyboard", got.duration_mins, 1, 2, "armband8", 200.0, 8, ("short",))
    assert got.duration_mins == pytest.approx((n - 1) / 200.0 / 60.0)
    assert got.ref == SessionRef("u3", "sess-1")
