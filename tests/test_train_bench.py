"""The training benchmark's bookkeeping: confused key pairs by finger, and the fact checks (hand-made rows)."""

from __future__ import annotations

from emgkey.benchmarks.train_bench import check_facts
from emgkey.firmware_sim.report import confusion_summary


def test_confusions_fold_case_and_order_and_mark_same_finger():
    subs = [["r", "t", 3], ["T", "r", 2], ["a", "l", 1], [" ", "e", 9], ["e", "e", 4]]
    c = confusion_summary(subs)
    top = c["top"]
    assert top[0]["keys"] == ("r", "t") and top[0]["count"] == 5 and top[0]["same_finger"]  # left index
    assert top[1]["keys"] == ("a", "l") and not top[1]["same_finger"]  # left pinky vs right ring
    assert len(top) == 2, "space and identical pairs are not confusions"
    assert c["same_finger_fraction"] == 0.5
    assert 0.05 < c["chance_fraction_letters"] < 0.2
    assert c["same_hand_fraction"] == 0.5  # r/t both left; a (left) / l (right)
    assert 0.4 < c["chance_same_hand_letters"] < 0.6


def _row(profile, model, cer, role="student", **kw):
    return {
        "profile": profile,
        "model": model,
        "role": role,
        "generic_test_cer": cer,
        "confusions": confusion_summary([]),
        **kw,
    }


def test_facts_pass_and_fail_on_hand_made_rows():
    rows = [
        _row("armband8", "gru", 70.0, generic_cer_same_sessions=70.0, personalized_cer=40.0),
        _row("emg2qwerty", "gru", 60.0),
    ]
    facts = {f["fact"].split(" (")[0]: f["holds"] for f in check_facts(rows)}
    assert facts["generic model on unseen users far worse than personalized"] is True
    assert facts["armband8"] is True
    assert facts["students learn"] is True
    assert facts["teachers beat students"] is None  # not measured, not claimed

    rows = [
        _row("armband8", "gru", 85.0, generic_cer_same_sessions=70.0, personalized_cer=65.0),
        _row("emg2qwerty", "gru", 96.0, generic_cer_same_sessions=96.0, personalized_cer=10.0),
        _row("armband8", "tds_conv", 97.0, role="teacher"),
    ]
    checked = check_facts(rows)
    facts = {f["fact"].split(" (")[0]: f["holds"] for f in checked}
    # the emg2qwerty GRU did not learn (96 %): its personalization does not count, and the measure says so
    pers = next(f for f in checked if f["fact"].startswith("generic model"))
    assert "1 profile x model; left out, did not learn: emg2qwerty/gru" in pers["measured"]
    assert facts["generic model on unseen users far worse than personalized"] is False
    assert facts["armband8"] is False
    assert facts["students learn"] is False
    assert facts["teachers beat students"] is False


def test_collect_tabulates_finished_runs_and_lists_the_rest(tmp_path):
    import argparse
    import json

    import pytest

    pytest.importorskip("torch", reason="reading checkpoints needs torch")
    from emgkey.benchmarks.train_bench import collect, render
    from emgkey.profiles import ARMBAND8
    from emgkey.train.checkpoint import save_untrained_checkpoint

    gen = tmp_path / "runs" / "armband8" / "gru" / "generic"
    gen.mkdir(parents=True)
    save_untrained_checkpoint(gen / "best.pt", "gru", ARMBAND8)
    test = {"cer": 71.5, "ins": 1.0, "del": 60.0, "sub": 10.5, "substitutions": [["r", "t", 2]]}
    (gen / "results.json").write_text(json.dumps({"wall_time_s": 12.0, "test": test}))
    args = argparse.Namespace(
        out=str(tmp_path), profiles=["armband8"], models=["gru", "tds_conv"], epochs=3, data_root="d", config="demo",
        personal_epochs=2, personal_lr=1e-4, workers=1,
    )  # fmt: skip
    doc = collect(args)
    assert [(r["profile"], r["model"], r["generic_test_cer"]) for r in doc["rows"]] == [("armband8", "gru", 71.5)]
    assert doc["not_run"] == ["armband8/tds_conv"]
    assert doc["rows"][0]["params"] > 0 and doc["rows"][0]["confusions"]["top"][0]["same_finger"]
    md = render(doc)
    assert "Not run (no finished generic run): armband8/tds_conv." in md
    assert "| armband8 | gru | student |" in md


def test_transfer_jobs_start_from_the_source_profiles_generic_run(tmp_path):
    import argparse

    from emgkey.benchmarks.train_bench import plan_jobs

    args = argparse.Namespace(
        data_root=str(tmp_path / "data"), out=str(tmp_path / "tb"), profiles=["armband8"], models=["gru", "tcn"],
        personalize=[], transfer=["gru"], config="demo", epochs=3, teacher_size="small", personal_epochs=2,
        personal_lr=1e-4, train_set=["optim.align_delay_s=0.06"],
    )  # fmt: skip
    jobs = {j.name: j for j in plan_jobs(args)}
    assert set(jobs) == {"armband8/gru/generic", "armband8/tcn/generic", "armband8/gru/transfer"}
    tr = jobs["armband8/gru/transfer"]
    src = tmp_path / "tb" / "runs" / "emg2qwerty" / "gru" / "generic"
    assert tr.argv[tr.argv.index("--init-from") + 1] == str(src / "best.pt")
    assert tr.deps == ["emg2qwerty/gru/generic"], "waits for the source run when this call also trains it"
    for job in (tr, jobs["armband8/gru/generic"]):
        assert job.argv[job.argv.index("optim.align_delay_s=0.06") - 1] == "--set", "--train-set reaches the run"
    # a source run finished by an earlier call is not a dependency of this one
    src.mkdir(parents=True)
    (src / "results.json").write_text("{}")
    assert {j.name: j for j in plan_jobs(args)}["armband8/gru/transfer"].deps == []


def test_merge_fills_missing_pairs_from_an_earlier_run_of_the_same_data_only(tmp_path):
    import argparse
    import json

    import pytest

    from emgkey.benchmarks.train_bench import collect, render

    meta = {"simulated": True, "seed": 0, "n_users": 8, "sessions_per_user": 4, "minutes_per_session": 1.5}
    (tmp_path / "d" / "armband8").mkdir(parents=True)
    (tmp_path / "d" / "armband8" / "dataset.json").write_text(json.dumps(meta | {"test_users": ["u5"]}))
    conf = {"top": [], "same_finger_fraction": 0.0, "chance_fraction_letters": 0.1}
    old_row = {
        "profile": "armband8", "model": "tcn", "role": "student", "params": 10, "macs_per_s": 1e6,
        "train_wall_s": 5.0, "generic_test_cer": 64.6, "confusions": conf,
    }  # fmt: skip
    earlier = tmp_path / "earlier.json"
    earlier.write_text(json.dumps({"rows": [old_row], "data": {"armband8": meta | {"test_users": ["u5"]}}}))
    args = argparse.Namespace(
        out=str(tmp_path / "tb"), profiles=["armband8"], models=["gru", "tcn"], epochs=3,
        data_root=str(tmp_path / "d"), config="demo", personal_epochs=2, personal_lr=1e-4, workers=1,
        merge=str(earlier),
    )  # fmt: skip
    doc = collect(args)
    assert [(r["model"], r["generic_test_cer"], r["merged_from"]) for r in doc["rows"]] == [("tcn", 64.6, str(earlier))]
    assert doc["rows"][0]["frame_rate_hz"] == 50.0  # pre-feature_hop rows: the profile's default front end
    assert doc["not_run"] == ["armband8/gru"]
    md = render(doc)
    assert "| armband8 | tcn [1] | student | 50 |" in md and f"`{earlier}`" in md
    # The same users from another simulator version: refused (files without a version are version 1).
    (tmp_path / "d" / "armband8" / "dataset.json").write_text(
        json.dumps(meta | {"test_users": ["u5"], "simulator_version": 2})
    )
    with pytest.raises(SystemExit, match="not comparable"):
        collect(args)
    (tmp_path / "d" / "armband8" / "dataset.json").write_text(json.dumps(meta | {"test_users": ["u5"]}))
    # Another dataset (other held-out users): the merge is refused, not silently mixed.
    earlier.write_text(json.dumps({"rows": [old_row], "data": {"armband8": meta | {"test_users": ["u7"]}}}))
    with pytest.raises(SystemExit, match="not comparable"):
        collect(args)


def test_several_merge_files_fill_in_order_and_each_is_checked(tmp_path):
    import argparse
    import json

    import pytest

    from emgkey.benchmarks.train_bench import collect

    meta = {"simulated": True, "seed": 0, "n_users": 48, "sessions_per_user": 4, "minutes_per_session": 1.5}
    for prof in ("armband8", "emg2qwerty"):
        (tmp_path / "d" / prof).mkdir(parents=True)
        (tmp_path / "d" / prof / "dataset.json").write_text(json.dumps(meta | {"test_users": ["u5"]}))
    conf = {"top": [], "same_finger_fraction": 0.0, "chance_fraction_letters": 0.1}

    def row(profile: str, model: str, cer: float) -> dict:
        return {
            "profile": profile, "model": model, "role": "student", "params": 10, "macs_per_s": 1e6,
            "train_wall_s": 5.0, "generic_test_cer": cer, "confusions": conf, "frame_rate_hz": 50.0,
        }  # fmt: skip

    data = {p: meta | {"test_users": ["u5"]} for p in ("armband8", "emg2qwerty")}
    first, second = tmp_path / "first.json", tmp_path / "second.json"
    # the second (longer) lease trained emg2qwerty's TCN again; the first lease's armband8 rows fill the rest
    first.write_text(json.dumps({"rows": [row("emg2qwerty", "tcn", 51.9)], "data": data}))
    second.write_text(
        json.dumps({"rows": [row("armband8", "tcn", 49.7), row("emg2qwerty", "tcn", 56.7)], "data": data})
    )
    args = argparse.Namespace(
        out=str(tmp_path / "tb"), profiles=["armband8", "emg2qwerty"], models=["tcn"], epochs=3,
        data_root=str(tmp_path / "d"), config="demo", personal_epochs=2, personal_lr=1e-4, workers=1,
        merge=[str(first), str(second)],
    )  # fmt: skip
    doc = collect(args)
    assert [(r["profile"], r["generic_test_cer"], r["merged_from"]) for r in doc["rows"]] == [
        ("armband8", 49.7, str(second)),
        ("emg2qwerty", 51.9, str(first)),
    ]
    assert doc["not_run"] == []
    second.write_text(json.dumps({"rows": [row("armband8", "tcn", 49.7)], "data": {"armband8": meta}}))
    with pytest.raises(SystemExit, match="not comparable"):
        collect(args)


def test_facts_use_the_more_held_out_users_only_when_every_row_has_them():
    from emgkey.benchmarks.train_bench import check_facts

    # the split's two held-out users say the teacher loses; the 8 more held-out users say it wins
    rows = [_row("armband8", "tcn", 70.0, more_heldout_cer=74.0), _row("armband8", "tds_conv", 72.0, role="teacher")]
    t = next(f for f in check_facts(rows) if f["fact"].startswith("teachers"))
    assert t["holds"] is False and "more held-out" not in t["measured"]  # one row lacks them: the split's CER
    rows[1]["more_heldout_cer"] = 71.0
    t = next(f for f in check_facts(rows) if f["fact"].startswith("teachers"))
    assert t["holds"] is True and "tds_conv 71.0 vs tcn 74.0 (more held-out users)" in t["measured"]


def test_more_held_out_users_are_new_users_of_the_same_population_typing_held_out_prompts():
    import pytest

    from emgkey.benchmarks.train_bench import more_heldout_users

    def meta(n_users, seed=0, version=3, first=0):
        sessions = [
            {"user": f"sim-user-{u:03d}", "session": f"s{u}-{k}", "user_id": u, "prompt_pool": pool}
            for u in range(first, first + n_users)
            for k, pool in enumerate(("heldout" if u % 4 else "train", "heldout" if u % 4 else "train"))
        ]
        common = {"simulated": True, "simulator_version": version, "seed": seed}
        return {**common, "sessions_per_user": 2, "minutes_per_session": 1.5, "n_users": n_users, "sessions": sessions}

    got = more_heldout_users(meta(4), meta(10))
    # users 4..9, less 8 (it types training prompts in the bigger dataset's plan)
    assert sorted({s["user_id"] for s in got}) == [5, 6, 7, 9] and len(got) == 8
    with pytest.raises(SystemExit, match="population"):
        more_heldout_users(meta(4), meta(10, seed=1))
    with pytest.raises(SystemExit, match="population"):
        more_heldout_users(meta(4), meta(10, version=2))
    with pytest.raises(SystemExit, match="no held-out users"):
        more_heldout_users(meta(4), meta(4))
    # a training dataset of later users (sim dataset --first-user 6): its users 6..9 are not "more" users
    got = more_heldout_users(meta(4, first=6), meta(10))
    assert sorted({s["user_id"] for s in got}) == [1, 2, 3, 5] and len(got) == 8
