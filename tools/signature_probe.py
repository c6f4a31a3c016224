"""LDA key-identification probe for a simulator variability setting (the measurement behind a version bump).

    python tools/signature_probe.py --profile armband8 --users 8 --minutes 3 --set key_signature=0.15

Per test user: an LDA on their own other session (personalized) vs on every other user
(generic), and the same-finger share of the generic probe's most confused letter pairs
(firmware_sim/report.py's key_id_proxy). SIMULATED DATA.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import fields, replace
from typing import Any

import numpy as np

from emgkey.edge_runtime.recognizer import roll_channels
from emgkey.firmware_sim.population import Population, UserVariability
from emgkey.firmware_sim.report import (
    LDA_SHRINKAGE,
    MIN_KEY_COUNT,
    _stack,
    key_id_proxy,
    keystroke_features,
)
from emgkey.firmware_sim.simulate import simulate_session
from emgkey.lda import lda_stats, lda_weights
from emgkey.profiles import get_profile


def _parse(sets: list[str]) -> UserVariability:
    """``FIELD=VALUE`` overrides, each parsed as the field's default's type (booleans: true / false)."""
    v = UserVariability()
    names = {f.name for f in fields(UserVariability)}
    for s in sets:
        k, _, val = s.partition("=")
        assert k in names, f"unknown UserVariability field {k!r}"
        kind = type(getattr(v, k))
        if kind is bool:
            assert val.lower() in ("true", "false"), f"{k} takes true or false, not {val!r}"
            v = replace(v, **{k: val.lower() == "true"})
        else:
            v = replace(v, **{k: kind(val)})
    return v


def _one(args: tuple[str, int, int, float, int, list[str], int]) -> Any:
    profile, u, s, minutes, seed, sets, align = args
    pop = Population(seed, variability=_parse(sets))
    prof = get_profile(profile)
    kf = keystroke_features(simulate_session(prof, u, s, minutes, seed, population=pop))
    if align:  # oracle: undo the band's rotation to the nearest electrode (the residual stays), per arm
        rolls = align * pop.user(u).electrode_rolls(s, prof.channels_per_band)  # (2,)

        def roll(x: Any) -> Any:  # (..., n_bands * C) -> the same, each band's electrodes rolled
            y = x.reshape(-1, prof.n_bands, prof.channels_per_band)
            return roll_channels(y, rolls).reshape(x.shape)

        kf = replace(kf, features=roll(kf.features), pattern=roll(kf.pattern))
    return kf


def calibration_proxy(feats: list[Any], n_own: int, tau: float = 5.0) -> float:
    """Mean accuracy of the generic LDA whose class means move towards the user's first ``n_own`` presses.

    MAP-style adaptation: mean_k = (n_k * own_k + tau * generic_k) / (n_k + tau), the generic
    covariance kept; a proxy for what a short calibration can do, not a model of one.
    """
    accs = []
    for u in sorted({kf.user for kf in feats}):
        own = [kf for kf in feats if kf.user == u]
        counts = Counter(k for kf in own[:-1] for k in kf.keys)
        classes = sorted(k for k, n in counts.items() if n >= MIN_KEY_COUNT)
        index = {k: i for i, k in enumerate(classes)}
        x_gen, y_gen = _stack([kf for kf in feats if kf.user != u], index)
        x_own, y_own = _stack(own[:1], index)
        x_own, y_own = x_own[:n_own], y_own[:n_own]
        x_test, y_test = _stack(own[-1:], index)
        if any(np.sum(y_gen == k) == 0 for k in range(len(classes))):
            continue
        means, cov = lda_stats(x_gen, y_gen, len(classes), LDA_SHRINKAGE)  # (K, D), (D, D)
        for k in range(len(classes)):
            n = int(np.sum(y_own == k))
            if n:
                means[k] = (n * x_own[y_own == k].mean(axis=0) + tau * means[k]) / (n + tau)
        w, b = lda_weights(means, cov)
        accs.append(float(np.mean(np.argmax(x_test @ w + b, axis=1) == y_test)))
    return float(np.mean(accs))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="armband8")
    ap.add_argument("--users", type=int, default=8)
    ap.add_argument("--sessions", type=int, default=2)
    ap.add_argument("--minutes", type=float, default=3.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--set", action="append", default=[], help="UserVariability field=value")
    ap.add_argument(
        "--align-bands",
        type=int,
        choices=(-1, 0, 1),
        default=0,
        help="oracle: roll each band back by its simulated rotation, to the nearest electrode (1; -1 the other way)",
    )
    a = ap.parse_args()
    jobs = [
        (a.profile, u, s, a.minutes, a.seed, a.set, a.align_bands) for u in range(a.users) for s in range(a.sessions)
    ]
    with ProcessPoolExecutor(a.workers) as ex:
        feats = list(ex.map(_one, jobs))
    r = key_id_proxy(feats)
    conf = r["generic_confusions"]
    cal = {n: calibration_proxy(feats, n) for n in (60, 120, 240)}
    print(
        json.dumps(
            {
                "profile": a.profile,
                "set": a.set,
                "align_bands": a.align_bands,
                "mean": r["mean"],
                "calibrated_first_n": cal,
                "confusions": {k: v for k, v in conf.items() if k != "top"},
                "top": [(row["keys"], row["count"], row["same_finger"]) for row in conf["top"]],
            },
            default=str,
        )
    )


if __name__ == "__main__":
    main()
