"""`emgkey verify`'s CER tolerance counts whole characters (export/verify.py: cer_limit, judge)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from emgkey.export import verify

INT8 = verify.Tolerances().int8  # 1 point


def metrics(extra_errors: int, chars: int | None) -> dict[str, float]:
    out = {"max_abs_logprob_diff": 0.5, "argmax_agreement": 0.99}
    if chars is None:
        return {**out, "cer_delta": 100.0 * extra_errors / 61}
    return {**out, "cer_delta": 100.0 * extra_errors / chars, "target_chars": float(chars)}


def test_one_point_of_a_short_reference_is_one_character():
    # The bundles' 4 reference windows held 61 characters: one flip is 1.64 points, which the literal
    # tolerance refused (an int8 file the exporter had selected on 703 characters ran in fp32).
    assert verify.judge(metrics(1, 61), INT8)[0]
    ok, why = verify.judge(metrics(2, 61), INT8)
    assert not ok and "CER +3.28 points > 1 (1 of 61 characters)" in why
    assert verify.judge(metrics(0, 61), INT8)[0]


def test_exact_multiples_get_no_slack():
    assert verify.judge(metrics(1, 100), INT8)[0]
    assert not verify.judge(metrics(2, 100), INT8)[0]
    assert verify.judge(metrics(8, 703), INT8)[0]  # ceil(7.03)
    assert not verify.judge(metrics(9, 703), INT8)[0]


def test_without_a_character_count_the_tolerance_is_literal():
    assert not verify.judge(metrics(1, None), INT8)[0]  # 1.64 points > 1
    assert verify.cer_limit(1.0, None) == 1.0


def test_other_criteria_still_apply():
    m = metrics(0, 61)
    assert not verify.judge({**m, "max_abs_logprob_diff": 3.5}, INT8)[0]
    assert not verify.judge({**m, "argmax_agreement": 0.8}, INT8)[0]


@given(st.floats(0.01, 20.0), st.integers(1, 100_000))
def test_limit_is_the_next_whole_character(tol: float, chars: int):
    limit = verify.cer_limit(tol, chars)
    per_char = 100.0 / chars
    assert limit >= tol - 1e-9, "never stricter than the tolerance"
    assert limit - tol < per_char, "less than one character beyond it"
    assert abs(limit / per_char - round(limit / per_char)) < 1e-6, "a whole number of characters"
