"""Simulated datasets on disk, the realism report and the speed benchmark (smoke-sized runs)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from emgkey import charset
from emgkey.cli import main as emgkey_main
from emgkey.errors import ConfigError
from emgkey.firmware_sim.dataset import simulate_dataset, split_counts
from emgkey.firmware_sim.simulate import simulate_session
from emgkey.profiles import ARMBAND8
from emgkey.session import SessionFile
from emgkey.splits import load_split, read_metadata_csv, session_path


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("simds")
    summary = simulate_dataset(out, "armband8", n_users=3, sessions_per_user=3, minutes=0.15, seed=5, progress=False)
    return out, summary


def test_dataset_files_and_metadata(dataset):
    out, summary = dataset
    names = sorted(p.stem for p in out.glob("*.hdf5"))
    assert names == [f"sim-u{u:03d}-s{s:02d}-armband8" for u in range(3) for s in range(3)]
    infos = read_metadata_csv(out / "metadata.csv")
    assert [i.session for i in infos] == names
    assert all(i.profile == "armband8" and i.sample_rate_hz == 200.0 and i.channels_per_band == 8 for i in infos)
    assert len(summary.test_users) == 1 and summary.test_users[0] in {i.user for i in infos}
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["simulated"] is True and "SIMULATED DATA" in meta["note"]
    assert meta["seed"] == 5 and meta["profile"]["name"] == "armband8" and meta["n_users"] == 3
    assert {s["session"] for s in meta["sessions"]} == set(names)
    assert "first_user" not in meta  # datasets of the first users keep the dataset.json they always had


def test_session_files_read_back(dataset):
    out, summary = dataset
    with SessionFile(out / "sim-u001-s01-armband8.hdf5") as f:
        f.validate()
        assert f.profile.name == "armband8" and f.user == "sim-user-001"
        emg = f.read()
        assert emg.shape == (f.n_samples, 2, 8) and emg.dtype == np.float32
        assert "SIMULATED DATA" in f.metadata["simulated_note"]
        labels = f.ground_truth().label_str
        keystrokes, timestamps = f.keystrokes, f.timestamps
    # The file holds exactly what simulate_session produces for these ids (held-out users aside, same prompts).
    if "sim-user-001" not in summary.test_users:
        sim = simulate_session(ARMBAND8, 1, 1, 0.15, 5)
        assert sim.n_samples == len(emg) and np.array_equal(sim.timestamps, timestamps)
        assert len(sim.keystrokes) > 0 and len(keystrokes) > 0
    typed = charset.apply_backspaces(labels)
    assert typed.endswith(charset.ENTER)


def test_split_yamls(dataset):
    out, summary = dataset
    generic = load_split(out / "splits" / "generic.yaml")
    personal = load_split(out / "splits" / "user0.yaml")
    held_out = summary.test_users[0]
    assert {r.user for r in generic["test"]} == {held_out}
    assert held_out not in {r.user for r in generic["train"] + generic["val"]}
    n_val, n_test = split_counts(3)
    assert len(personal["test"]) == n_test and len(personal["val"]) == n_val and len(personal["train"]) == 1
    for split in (generic, personal):
        for refs in split.values():
            for ref in refs:
                assert session_path(out, ref).is_file()
    # Held-out users type held-out prompts; nobody else does.
    meta = json.loads((out / "dataset.json").read_text())
    pools = {s["user"]: s["prompt_pool"] for s in meta["sessions"]}
    assert pools[held_out] == "heldout" and sum(p == "heldout" for p in pools.values()) == 1


def test_cli_dataset_and_bad_arguments(tmp_path, capsys):
    args = ["sim", "dataset", "--profile", "emg2qwerty", "--users", "2", "--sessions-per-user", "2"]
    rc = emgkey_main([*args, "--minutes", "0.05", "--seed", "1", "--out", str(tmp_path / "ds"), "--workers", "2"])
    assert rc == 0
    assert "SIMULATED DATA" in capsys.readouterr().out
    assert len(list((tmp_path / "ds").glob("*.hdf5"))) == 4
    assert (tmp_path / "ds" / "splits" / "user0.yaml").is_file()
    with pytest.raises(ConfigError):
        simulate_dataset(tmp_path / "bad", "armband8", n_users=2, sessions_per_user=1, minutes=0.05, seed=0)
    assert simulate_dataset(tmp_path / "one", "armband8", 2, 1, 0.05, 0, test_users=0, progress=False).test_users == []


def test_first_user_picks_other_people_of_the_same_population(tmp_path):
    """``--first-user 3000``: the population's users 3000.., each session the one simulate_session gives for that
    id (timing; the dataset draws its prompts from the training pool), so that a key prior can come from people
    no model was trained on and none of the benchmark's users."""
    out = tmp_path / "later"
    args = ["sim", "dataset", "--profile", "armband8", "--users", "2", "--sessions-per-user", "1", "--minutes", "0.05"]
    assert emgkey_main([*args, "--seed", "5", "--test-users", "0", "--first-user", "3000", "--out", str(out)]) == 0
    names = sorted(p.stem for p in out.glob("*.hdf5"))
    assert names == ["sim-u3000-s00-armband8", "sim-u3001-s00-armband8"]
    assert {r.user for r in load_split(out / "splits" / "generic.yaml")["train"]} == {"sim-user-3000", "sim-user-3001"}
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["first_user"] == 3000 and meta["n_users"] == 2
    with SessionFile(out / "sim-u3001-s00-armband8.hdf5") as f:
        assert f.user == "sim-user-3001" and f.metadata["sim_user_id"] == 3001
        timestamps = f.timestamps
    sim = simulate_session(ARMBAND8, 3001, 0, 0.05, 5)
    assert np.array_equal(sim.timestamps, timestamps)
    with pytest.raises(ConfigError, match="first user"):
        simulate_dataset(tmp_path / "neg", "armband8", 1, 1, 0.05, 0, test_users=0, first_user=-1)
