"""benchmarks/calibration_bench.py: the summary and the average-arm reference (hand-made rows)."""

from __future__ import annotations

import numpy as np
import pytest

from emgkey.benchmarks.calibration_bench import average_arm_population, markdown, summarize, targets
from emgkey.firmware_sim.population import Population


def test_average_arm_users_keep_their_typing_but_lose_placement_and_anatomy():
    real, avg = Population(0).user(1003), average_arm_population(0).user(1003)
    assert real.style == avg.style  # same typist
    assert np.any(real.band_rotation_deg != 0) and np.all(avg.band_rotation_deg == 0)
    assert np.all(avg.muscle_angle_offset_deg == 0)
    assert np.all(avg.session(1).donning_rotation_deg == 0) and np.any(real.session(1).donning_rotation_deg != 0)
    # nor their own way of reaching each key (simulator version 3): every key gets the population's mean signature
    sig = np.stack(list(avg._key_signature.values()))
    assert np.allclose(sig, sig.flat[0]) and sig.flat[0] > 0
    assert np.isclose(sig.flat[0], np.mean(np.stack(list(real._key_signature.values()))), rtol=0.25)


def test_summary_reports_the_average_arm_reference_and_the_room_it_leaves():
    def row(user: int, before: float, avg: float, after: float) -> dict:
        return {
            "student": "tcn (tcn)", "strategy": "stats", "user": user, "seconds": 60.0, "accepted": True,
            "compute_s": 1.0, "before": {"cer": before, "nll": 2.0, "average_arm": {"cer": avg, "nll": 1.9}},
            "after": {"cer": after, "nll": 1.8},
        }  # fmt: skip

    summary = summarize([row(0, 60.0, 50.0, 57.0), row(1, 40.0, 30.0, 36.0)], {})
    (s,) = summary
    assert s["cer_before"] == 50.0 and s["cer_average_arm"] == 40.0 and s["cer_after"] == 46.5
    (t,) = targets(summary)
    assert "would remove 20.0%" in t and "misses >= 40%" in t
    settings = {"users": 2, "first_user": 1000, "profile": "armband8", "seconds": [60.0], "eval_seconds": 60.0,
                "budget_s": 30.0, "machine": "test"}  # fmt: skip
    md = markdown({"settings": settings, "summary": summary, "targets": [t]})
    assert "| 40.0 |" in md and "average arm" in md


def test_finetune_overrides_are_typed_and_typos_are_errors():
    from emgkey.benchmarks.calibration_bench import finetune_overrides
    from emgkey.errors import ConfigError

    assert finetune_overrides(["max_body_stages=3", "lr=1e-3"]) == {"max_body_stages": 3, "lr": 1e-3}
    assert finetune_overrides([]) == {}
    assert finetune_overrides(["specaugment=false"]) == {"specaugment": False}  # not bool("false")
    assert finetune_overrides(["specaugment=True"]) == {"specaugment": True}
    for bad in (["max_body_stage=3"], ["lr"], ["time_budget_s=5"], ["specaugment=1"]):
        with pytest.raises(ConfigError):
            finetune_overrides(bad)


def test_summary_reports_key_rescoring_beside_the_same_profile_without_it():
    def row(user: int, before: float, plain: float, keyed: float, enabled: bool) -> dict:
        return {
            "student": "tcn (tcn)", "strategy": "stats", "user": user, "seconds": 60.0, "accepted": True,
            "compute_s": 1.0, "before": {"cer": before, "nll": 2.0},
            "after": {"cer": keyed if enabled else plain, "nll": 1.8}, "after_no_keys": {"cer": plain, "nll": 1.8},
            "keys": {"enabled": enabled, "heldout": {}, "presses": 40, "seconds": 0.5},
        }  # fmt: skip

    off = row(1, 40.0, 36.0, 30.0, False)
    off["after_keys_forced"] = {"cer": 32.0, "nll": 1.8}  # what its disabled keys would have done
    (s,) = summarize([row(0, 60.0, 54.0, 48.0, True), off], {})
    assert s["cer_after"] == 42.0 and s["cer_after_no_keys"] == 45.0 and s["keys_enabled"] == 1
    assert s["cer_reduction_no_keys"] == 0.1  # 10 % for both users without keys
    assert s["cer_after_keys_always"] == 40.0 and s["cer_reduction_keys_always"] == 0.2  # (20 % + 20 %) / 2
    (t,) = targets([{**s, "seconds": 60}])
    assert "without key rescoring 10.0%, with every user's keys on 20.0% (diagnostic)" in t
    settings = {"users": 2, "first_user": 1000, "profile": "armband8", "seconds": [60.0], "eval_seconds": 60.0,
                "budget_s": 30.0, "machine": "test"}  # fmt: skip
    md = markdown({"settings": settings, "summary": [s], "targets": []})
    assert "| 45.0 (+10.0%) | 1 |" in md


def test_report_names_the_model_and_machine_when_recorded() -> None:
    """A rebuilt model can differ from the one a committed table came from: the report says which it was."""
    base = {"users": 2, "first_user": 1000, "profile": "armband8", "seconds": [60.0], "eval_seconds": 60.0,
            "budget_s": 30.0, "machine": "test"}  # fmt: skip
    assert "fingerprint" not in markdown({"settings": base, "summary": [], "targets": []})  # older results
    env = {"cpu_model": "AMD EPYC", "arch": "x86_64", "python": "3.11.7", "versions": {"numpy": "2.4.6", "scipy": "1"}}
    student = {"name": "tcn (tcn16)", "model_fingerprint": "0123456789abcdef", "best_val_cer": 43.2994}
    md = markdown({"settings": {**base, "students": [student], "environment": env}, "summary": [], "targets": []})
    assert "- tcn (tcn16): model fingerprint 0123456789ab, best validation CER 43.299" in md
    assert "- environment: AMD EPYC (x86_64), Python 3.11.7, numpy 2.4.6, scipy 1" in md


def test_a_key_prior_from_the_benchmarks_own_users_is_refused(tmp_path):
    """``--first-user`` makes it easy to simulate the very users the benchmark evaluates: their data in the key
    prior would be a leak, so the benchmark stops; other users, another population or real data pass."""
    from emgkey.benchmarks.calibration_bench import refuse_seen_users
    from emgkey.firmware_sim.dataset import simulate_dataset

    same = tmp_path / "same"
    simulate_dataset(same, "armband8", 2, 1, 0.05, 0, test_users=0, progress=False, first_user=1006)
    with pytest.raises(SystemExit, match=r"1006, 1007.*benchmark's own users \(ids 1000..1007\)"):
        refuse_seen_users(same, 0, range(1000, 1008), "--key-prior")
    refuse_seen_users(same, 0, range(2000, 2008), "--key-prior")  # other users
    refuse_seen_users(same, 1, range(1000, 1008), "--key-prior")  # another population
    refuse_seen_users(tmp_path / "real", 0, range(1000, 1008), "--key-prior")  # no dataset.json: real data
