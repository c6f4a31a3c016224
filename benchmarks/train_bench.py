"""Training benchmark: held-out-user CER, generic vs personalized, per profile and model (SIMULATED data).

    python -m emgkey.benchmarks.train_bench --data-root runs/tb/data --out runs/tb \\
        --profiles armband8,emg2qwerty --models gru,tcn --personalize gru,tcn --epochs 30

``--data-root`` holds one ``emgkey sim dataset`` folder per profile (``ROOT/PROFILE``, with
``splits/generic.yaml`` and ``splits/user{i}.yaml``). Every run is the documented CLI as a
subprocess (``emgkey train --config CONFIG``, ``emgkey eval``), ``--workers`` at a time, one
torch thread each; a run whose ``results.json`` exists is reused, so an interrupted benchmark
resumes. Per (profile, model):

- generic: trained on the generic split, tested on the held-out users' test sessions;
- personalized (models in ``--personalize``): the generic checkpoint fine-tuned on one held-out
  user's own train sessions (``user{i}.yaml``, emg2qwerty's protocol), tested on that user's test
  session; the generic model is evaluated on the same session for the comparison;
- transfer (models in ``--transfer``, armband8 only): the emg2qwerty generic checkpoint adapted to
  armband8 (``--init-from``: input layers rebuilt, gradual unfreezing, layer-wise learning rates, as the
  8-channel report did), same config and epochs as armband8 from scratch, tested on the same users;
- more held-out users (``--more-heldout ROOT``): the generic checkpoint evaluated on the users of a bigger
  dataset of the same population (same seed and simulator version, more ``--users``) that the training
  dataset does not have, each typing held-out prompts: two held-out users x one test session (the
  default split of a small dataset) is a few hundred keys, too few to rank models a few points apart;
- params, MACs per second of signal, training wall time, and the most confused key pairs with
  whether the same finger types them (on the more held-out users when measured).

Writes ``OUT/train_bench.json`` and ``OUT/train_bench.md``, with the structural facts of the real
data (generic worse than personalized, armband8 worse than emg2qwerty, same-finger confusions,
students learn, teachers beat students) checked on whatever was run; a fact without the runs
it needs is reported as not measured.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emgkey.atomic import atomic_write_text

STUDENTS = ("gru", "bilstm", "tcn")
TEACHERS = ("tds_conv", "transformer")
TRANSFER_SOURCE, TRANSFER_TARGET = "emg2qwerty", "armband8"
TOP_PAIRS = 10
MORE_HELDOUT_JSON = "generic_on_more_heldout.json"
LEARNS_BELOW = 90.0  # "students still learn": greedy CER well below 100 %


@dataclass
class Job:
    name: str
    argv: list[str]
    out: Path  # results file the job writes last
    deps: list[str] = field(default_factory=list)


def _emgkey(*args: str) -> list[str]:
    return [sys.executable, "-m", "emgkey.cli", *args]


def plan_jobs(args: argparse.Namespace) -> list[Job]:
    root, out = Path(args.data_root), Path(args.out)
    jobs: list[Job] = []
    for profile in args.profiles:
        data = root / profile
        for model in args.models:
            run = out / "runs" / profile / model
            base = ["train", "--config", args.config, "--model", model, "--data", str(data)]
            base += ["--set", f"epochs={args.epochs}", "--set", "progress=false", "--set", "threads=1"]
            base += [x for kv in args.train_set for x in ("--set", kv)]
            if model in TEACHERS:
                base += ["--set", f"model_size={args.teacher_size}"]
            gen = f"{profile}/{model}/generic"
            split = data / "splits" / "generic.yaml"
            jobs.append(
                Job(
                    gen,
                    _emgkey(*base, "--split", str(split), "--out", str(run / "generic")),
                    run / "generic" / "results.json",
                )
            )
            if getattr(args, "more_heldout", None):
                ev = ["eval", "--checkpoint", str(run / "generic" / "best.pt")]
                ev += [
                    "--data",
                    str(Path(args.more_heldout) / profile),
                    "--split",
                    str(more_heldout_split(args, profile)),
                    "--subset",
                    "test",
                ]
                ev += ["--out", str(run / MORE_HELDOUT_JSON)]
                jobs.append(Job(f"{profile}/{model}/more_heldout", _emgkey(*ev), run / MORE_HELDOUT_JSON, [gen]))
            if profile == TRANSFER_TARGET and model in args.transfer:
                src = out / "runs" / TRANSFER_SOURCE / model / "generic"
                tr = ["train", "--config", args.config, "--data", str(data), "--split", str(split)]
                tr += ["--out", str(run / "transfer"), "--init-from", str(src / "best.pt")]
                tr += ["--set", f"epochs={args.epochs}", "--set", "progress=false", "--set", "threads=1"]
                tr += ["--set", "transfer.unfreeze_every=3", "--set", "transfer.body_stages=3"]
                tr += ["--set", "transfer.lr_decay=0.5"]
                tr += [x for kv in args.train_set for x in ("--set", kv)]
                # the source's generic run may belong to an earlier invocation (another --profiles)
                deps = [] if (src / "results.json").is_file() else [f"{TRANSFER_SOURCE}/{model}/generic"]
                jobs.append(Job(f"{profile}/{model}/transfer", _emgkey(*tr), run / "transfer" / "results.json", deps))
            if model not in args.personalize:
                continue
            for user_split in sorted((data / "splits").glob("user*.yaml")):
                u = user_split.stem
                ft = ["train", "--config", args.config, "--data", str(data), "--split", str(user_split)]
                ft += ["--out", str(run / u), "--init-from", str(run / "generic" / "best.pt")]
                ft += ["--set", f"epochs={args.personal_epochs}", "--set", "progress=false", "--set", "threads=1"]
                ft += ["--set", "transfer.unfreeze_every=0", "--set", f"optim.lr={args.personal_lr}"]
                ft += ["--set", "optim.align_weight=0"]
                jobs.append(Job(f"{profile}/{model}/{u}", _emgkey(*ft), run / u / "results.json", [gen]))
                ev = ["eval", "--checkpoint", str(run / "generic" / "best.pt"), "--data", str(data)]
                ev += ["--split", str(user_split), "--subset", "test", "--out", str(run / f"generic_on_{u}.json")]
                jobs.append(Job(f"{profile}/{model}/generic_on_{u}", _emgkey(*ev), run / f"generic_on_{u}.json", [gen]))
    return jobs


def more_heldout_users(train_meta: dict[str, Any], more_meta: dict[str, Any]) -> list[dict[str, Any]]:
    """Sessions of ``more_meta``'s dataset whose users the training dataset does not have (and who type held-out
    prompts); refused unless both datasets come from the same simulated population."""
    same = ("simulated", "simulator_version", "seed", "sessions_per_user", "minutes_per_session")
    a, b = _with_version({k: train_meta.get(k) for k in same}), _with_version({k: more_meta.get(k) for k in same})
    if a != b or not a or not a.get("simulated"):
        raise SystemExit(f"--more-heldout: its dataset {b} is not the training dataset's population {a}")
    # the training dataset's user ids (``sim dataset --first-user`` datasets do not start at 0)
    seen = {int(s["user_id"]) for s in train_meta["sessions"]}
    out = [s for s in more_meta["sessions"] if s["user_id"] not in seen and s.get("prompt_pool") == "heldout"]
    if not out:
        raise SystemExit(f"--more-heldout: no held-out users beyond the training dataset's {len(seen)} users")
    return out


def more_heldout_split(args: argparse.Namespace, profile: str) -> Path:
    """Write ``OUT/more_heldout/PROFILE.yaml``: every session of the more held-out users as the test subset."""
    from emgkey.splits import SessionRef, write_split_yaml

    train_meta = json.loads((Path(args.data_root) / profile / "dataset.json").read_text())
    more_meta = json.loads((Path(args.more_heldout) / profile / "dataset.json").read_text())
    refs = [SessionRef(s["user"], s["session"]) for s in more_heldout_users(train_meta, more_meta)]
    return write_split_yaml(Path(args.out) / "more_heldout" / f"{profile}.yaml", [], [], refs)


def run_jobs(jobs: Sequence[Job], workers: int, log_dir: Path) -> None:
    """Run ``jobs`` ``workers`` at a time in dependency order (a job whose output exists is skipped)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    done = {j.name for j in jobs if j.out.is_file()}
    pending = [j for j in jobs if j.name not in done]
    running: dict[str, tuple[subprocess.Popen[bytes], float, Any]] = {}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    while pending or running:
        for name, (proc, t0, fh) in list(running.items()):
            if proc.poll() is None:
                continue
            fh.close()
            del running[name]
            if proc.returncode != 0:
                raise RuntimeError(
                    f"{name} exited {proc.returncode}; see {log_dir / (name.replace('/', '_') + '.log')}"
                )
            done.add(name)
            print(f"[train_bench] done {name} in {time.perf_counter() - t0:.0f} s", flush=True)
        for job in list(pending):
            if len(running) >= workers:
                break
            if all(d in done for d in job.deps):
                pending.remove(job)
                fh = open(log_dir / (job.name.replace("/", "_") + ".log"), "wb")
                running[job.name] = (
                    subprocess.Popen(job.argv, stdout=fh, stderr=subprocess.STDOUT, env=env),
                    time.perf_counter(),
                    fh,
                )
                print(f"[train_bench] start {job.name}", flush=True)
        if pending and not running:
            raise RuntimeError(f"jobs whose dependencies never ran: {[j.name for j in pending]}")
        time.sleep(1.0)


def _complexity(ckpt: Path) -> dict[str, Any]:
    from emgkey.features import FeatureConfig
    from emgkey.train.checkpoint import build_from_checkpoint, load_checkpoint
    from emgkey.train.models.complexity import measure

    c = load_checkpoint(ckpt)
    fc = FeatureConfig.from_dict(c["feature_config"])
    m = measure(build_from_checkpoint(c), fc.frame_rate_hz)
    return {"params": m.params, "macs_per_s": m.macs_per_second, "frame_rate_hz": fc.frame_rate_hz}


def _dataset_meta(data_root: str, profile: str) -> dict[str, Any] | None:
    meta = Path(data_root) / profile / "dataset.json"
    if not meta.is_file():
        return None
    d = json.loads(meta.read_text())
    keys = (
        "simulated",
        "simulator_version",
        "seed",
        "n_users",
        "sessions_per_user",
        "minutes_per_session",
        "test_users",
    )
    return _with_version({k: d.get(k) for k in keys})


def _with_version(meta: dict[str, Any] | None) -> dict[str, Any] | None:
    """Datasets and results from before ``simulator_version`` existed are version 1."""
    if meta is None or not meta.get("simulated"):
        return meta
    return {**meta, "simulator_version": meta.get("simulator_version") or 1}


def merge_rows(
    rows: list[dict[str, Any]], not_run: list[str], earlier: Path, data: dict[str, Any]
) -> tuple[list[dict[str, Any]], list[str]]:
    """Fill pairs without a finished run under --out from an earlier ``train_bench.json`` of the same data.

    A merged row keeps its numbers and says where it came from (``merged_from``). The earlier
    document must describe the same dataset (simulator version, seed, users, sessions, minutes, held-out users) for the
    profile, or the merge is refused: CERs on other data are not comparable.
    """
    doc = json.loads(earlier.read_text())
    old = {(r["profile"], r["model"]): r for r in doc["rows"]}
    left: list[str] = []
    for pair in not_run:
        profile, model = pair.split("/", 1)
        r = old.get((profile, model))
        if r is None:
            left.append(pair)
            continue
        theirs = _with_version(doc.get("data", {}).get(profile))
        if theirs != data.get(profile):
            raise SystemExit(
                f"--merge {earlier}: its {profile} dataset {theirs} differs from "
                f"{data.get(profile)}; rows from other data are not comparable"
            )
        merged = {**r, "merged_from": str(earlier)}
        if "frame_rate_hz" not in merged:  # rows from before data.feature_hop: the profile's default front end
            from emgkey.features import FeatureConfig
            from emgkey.profiles import get_profile

            merged["frame_rate_hz"] = FeatureConfig.for_profile(get_profile(profile)).frame_rate_hz
        rows.append(merged)
    return rows, left


def collect(args: argparse.Namespace) -> dict[str, Any]:
    """Rows for every (profile, model) whose generic run finished; the others are listed as not run."""
    out = Path(args.out)
    rows: list[dict[str, Any]] = []
    not_run: list[str] = []
    for profile in args.profiles:
        for model in args.models:
            run = out / "runs" / profile / model
            if not (run / "generic" / "results.json").is_file():
                not_run.append(f"{profile}/{model}")
                continue
            gen = json.loads((run / "generic" / "results.json").read_text())
            row: dict[str, Any] = {
                "profile": profile,
                "model": model,
                "role": "teacher" if model in TEACHERS else "student",
            }
            row |= _complexity(run / "generic" / "best.pt")
            row["train_wall_s"] = gen.get("wall_time_s")
            row["epochs"] = gen.get("epochs_planned", args.epochs)
            # a run stopped by its time budget (train_scale.sh) ran fewer epochs than planned
            row["epochs_run"] = gen.get("stopped_by_time_budget", {}).get("epochs_run", gen.get("epochs_planned"))
            row["device"] = gen.get("device")
            row["generic_test_cer"] = gen["test"]["cer"]
            row["best_val_cer"] = gen.get("best_val_cer")  # validation users are training users
            row["generic_test"] = {k: gen["test"][k] for k in ("cer", "ins", "del", "sub")}
            from emgkey.firmware_sim.report import confusion_summary

            row["confusions"] = confusion_summary(gen["test"].get("substitutions", []))
            if (run / MORE_HELDOUT_JSON).is_file():
                more = json.loads((run / MORE_HELDOUT_JSON).read_text())
                row["more_heldout_cer"] = more["cer"]
                row["more_heldout_test"] = {k: more[k] for k in ("cer", "ins", "del", "sub", "target_len")}
                row["more_heldout_sessions"] = more.get("sessions")
                row["confusions"] = confusion_summary(more.get("substitutions", []))  # more keys, surer ranking
                row["confusions_from"] = "more held-out users"
            if (run / "transfer" / "results.json").is_file():
                tr = json.loads((run / "transfer" / "results.json").read_text())
                row["transfer_test_cer"] = tr["test"]["cer"]
                row["transfer_wall_s"] = tr.get("wall_time_s")
            per_user = []
            for res in sorted(run.glob("user*/results.json")):
                u = res.parent.name
                pers = json.loads(res.read_text())["test"]["cer"]
                generic_same = json.loads((run / f"generic_on_{u}.json").read_text())["cer"]
                per_user.append({"split": u, "generic_cer": generic_same, "personalized_cer": pers})
            if per_user:
                row["personalized"] = per_user
                row["generic_cer_same_sessions"] = sum(p["generic_cer"] for p in per_user) / len(per_user)
                row["personalized_cer"] = sum(p["personalized_cer"] for p in per_user) / len(per_user)
            rows.append(row)
    data = {p: m for p in args.profiles if (m := _dataset_meta(args.data_root, p)) is not None}
    merges = getattr(args, "merge", None) or []
    for earlier in [merges] if isinstance(merges, str) else merges:  # the first file given fills first
        rows, not_run = merge_rows(rows, not_run, Path(earlier), data)
    if merges:
        rank = {(p, m): i for i, (p, m) in enumerate((p, m) for p in args.profiles for m in args.models)}
        rows.sort(key=lambda r: rank[(r["profile"], r["model"])])
    return {"rows": rows, "facts": check_facts(rows), "not_run": not_run, "data": data, "config": dict(vars(args))}


def check_facts(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    facts: list[dict[str, Any]] = []
    # Held-out CER: on the more held-out users when every row has it (hundreds of keys more), else the split's own.
    key = "more_heldout_cer" if rows and all("more_heldout_cer" in r for r in rows) else "generic_test_cer"
    where = " (more held-out users)" if key == "more_heldout_cer" else ""
    # A model that decodes nothing (all blank: CER 100 before and after) says nothing about the gap between
    # users; it is left out here and fails "students learn" instead.
    pers_all = [r for r in rows if "personalized_cer" in r]
    pers = [r for r in pers_all if r["generic_test_cer"] < LEARNS_BELOW]
    if pers:
        g = sum(r["generic_cer_same_sessions"] for r in pers) / len(pers)
        p = sum(r["personalized_cer"] for r in pers) / len(pers)
        left_out = [f"{r['profile']}/{r['model']}" for r in pers_all if r not in pers]
        facts.append(
            {
                "fact": "generic model on unseen users far worse than personalized (>= 20 % relative)",
                "measured": f"generic {g:.1f} % vs personalized {p:.1f} % on the same sessions "
                f"({len(pers)} profile x model"
                + (f"; left out, did not learn: {', '.join(left_out)}" if left_out else "")
                + ")",
                "holds": p <= 0.8 * g,
            }
        )
    by = {(r["profile"], r["model"]): r for r in rows}
    both = [m for (pr, m) in by if pr == "armband8" and ("emg2qwerty", m) in by]
    if both:

        def pair(m: str, key: str) -> str:
            a, e = by[("armband8", m)].get(key), by[("emg2qwerty", m)].get(key)
            return "-" if a is None or e is None else f"{a:.1f} vs {e:.1f}"

        worse = [m for m in both if by[("armband8", m)][key] > by[("emg2qwerty", m)][key]]
        # The verdict is on held-out users; seen users (validation) and personalized models are shown beside it.
        facts.append(
            {
                "fact": "armband8 (8 ch, 200 Hz) worse than emg2qwerty (16 ch, 2 kHz), held-out users",
                "measured": ("more held-out users: " if where else "")
                + "; ".join(
                    f"{m}: {pair(m, key)} (seen users {pair(m, 'best_val_cer')}, "
                    f"personalized {pair(m, 'personalized_cer')})"
                    for m in both
                ),
                "holds": len(worse) == len(both),
            }
        )
    conf = [r["confusions"] for r in rows if r["confusions"]["top"]]
    if conf:
        frac = sum(c["same_finger_fraction"] for c in conf) / len(conf)
        chance = conf[0]["chance_fraction_letters"]
        hand = [c["same_hand_fraction"] for c in conf if "same_hand_fraction" in c]
        hand_txt = (
            f"; {sum(hand) / len(hand):.0%} same hand (chance {conf[0]['chance_same_hand_letters']:.0%})"
            if hand
            else ""
        )
        facts.append(
            {
                "fact": f"most confused key pairs mostly typed by the same finger (top {TOP_PAIRS})",
                "measured": f"{frac:.0%} same finger (chance among letter pairs {chance:.0%}){hand_txt}",
                "holds": frac > 0.5,
            }
        )
    students = [r for r in rows if r["role"] == "student"]
    if students:
        facts.append(
            {
                "fact": f"students learn (greedy CER < {LEARNS_BELOW:.0f} %)",
                "measured": ", ".join(f"{r['profile']}/{r['model']} {r[key]:.1f}" for r in students) + where,
                "holds": all(r[key] < LEARNS_BELOW for r in students),
            }
        )
    teachers = [r for r in rows if r["role"] == "teacher"]
    if teachers and students:
        ok, said = [], []
        for pr in sorted({r["profile"] for r in teachers}):
            t = min((r for r in teachers if r["profile"] == pr), key=lambda r: r[key])
            s = [r for r in students if r["profile"] == pr]
            if not s:
                ok.append(False)
                said.append(f"{pr}: {t['model']} {t[key]:.1f}, no student")
                continue
            b = min(s, key=lambda r: r[key])
            ok.append(t[key] < b[key])
            said.append(f"{pr}: {t['model']} {t[key]:.1f} vs {b['model']} {b[key]:.1f}")
        facts.append(
            {
                "fact": "teachers beat students (best of each, held-out CER)",
                "measured": "; ".join(said) + where,
                "holds": all(ok),
            }
        )
    else:
        facts.append(
            {"fact": "teachers beat students", "measured": "not measured (no teacher in this run)", "holds": None}
        )
    return facts


def _describe_data(data: dict[str, Any]) -> str:
    """'; armband8: 8 users x 4 sessions x 1.5 min, seed 0, held out: ...' for each profile's dataset.json."""
    parts = [
        f"{p}: {d['n_users']} users x {d['sessions_per_user']} sessions x {d['minutes_per_session']} min, "
        f"seed {d['seed']}, held-out users {', '.join(d.get('test_users') or []) or '-'}"
        for p, d in data.items()
    ]
    return "; " + "; ".join(parts) if parts else ""


def render(doc: dict[str, Any]) -> str:
    c = doc["config"]
    lines = [
        "# Training benchmark (SIMULATED DATA)",
        "",
        f"All figures are from `emgkey sim` data ({c['data_root']}{_describe_data(doc.get('data', {}))}), "
        "not from recordings of people. "
        f"Config `{c['config']}`, {c['epochs']} epochs, personalization {c['personal_epochs']} epochs at lr "
        f"{c['personal_lr']}; one torch thread per run, {c['workers']} runs at a time on this machine.",
        "",
        "| profile | model | role | frames/s | params | MACs/s | train wall s | held-out CER "
        f"| more held-out users | generic on personal test | personalized | held-out CER, from {TRANSFER_SOURCE} |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    merged = sorted({r["merged_from"] for r in doc["rows"] if r.get("merged_from")})
    for r in doc["rows"]:
        g = f"{r['generic_cer_same_sessions']:.1f}" if "personalized_cer" in r else "-"
        p = f"{r['personalized_cer']:.1f}" if "personalized_cer" in r else "-"
        t = f"{r['transfer_test_cer']:.1f}" if "transfer_test_cer" in r else "-"
        fr = f"{r['frame_rate_hz']:g}" if r.get("frame_rate_hz") else "-"
        mark = f" [{merged.index(r['merged_from']) + 1}]" if r.get("merged_from") else ""
        mo = f"{r['more_heldout_cer']:.1f}" if "more_heldout_cer" in r else "-"
        lines.append(
            f"| {r['profile']} | {r['model']}{mark} | {r['role']} | {fr} | {r['params']:,} | "
            f"{r['macs_per_s'] / 1e6:.1f}M | "
            f"{r['train_wall_s']:.0f} | {r['generic_test_cer']:.1f} | {mo} | {g} | {p} | {t} |"
        )
    ran = [
        r
        for r in doc["rows"]
        if r.get("epochs_run") not in (None, r.get("epochs")) or r.get("device") not in (None, "cpu")
    ]
    if ran:
        lines += [
            "",
            "Epochs run (of those planned; fewer when `time_budget_s` stopped the run) and device: "
            + ", ".join(f"{r['profile']}/{r['model']} {r.get('epochs_run')} on {r.get('device')}" for r in ran)
            + ".",
        ]
    if any("transfer_test_cer" in r for r in doc["rows"]):
        lines += [
            "",
            f"'from {TRANSFER_SOURCE}': the {TRANSFER_SOURCE} generic checkpoint adapted to {TRANSFER_TARGET} "
            "(input layers rebuilt, one body stage unfrozen every 3 epochs, lr halved per stage down), "
            "same config, epochs and test users as the scratch run in 'held-out CER'.",
        ]
    more = [r for r in doc["rows"] if "more_heldout_cer" in r]
    if more:
        lines += [
            "",
            f"'more held-out users': the generic model on `{c.get('more_heldout')}` (same population, users the "
            "training dataset does not have, held-out prompts: "
            + ", ".join(
                f"{pr} {r['more_heldout_sessions']} sessions, {r['more_heldout_test']['target_len']:.0f} keys"
                for pr, r in {r["profile"]: r for r in more}.items()
            )
            + "); the facts and the confusions below use it where every row has it.",
        ]
    for i, m in enumerate(merged):
        lines += ["", f"[{i + 1}] row from an earlier run of the same dataset, `{m}` (`--merge`)."]
    if doc.get("not_run"):
        lines += ["", f"Not run (no finished generic run): {', '.join(doc['not_run'])}."]
    lines += [
        "",
        "## Facts of the real data, checked on the simulator",
        "",
        "| fact | measured | holds |",
        "|---|---|---|",
    ]
    for f in doc["facts"]:
        h = "not measured" if f["holds"] is None else ("yes" if f["holds"] else "**no**")
        lines.append(f"| {f['fact']} | {f['measured']} | {h} |")
    who = "more held-out users" if any(r.get("confusions_from") for r in doc["rows"]) else "held-out users"
    lines += ["", f"## Most confused key pairs ({who})", ""]
    for r in doc["rows"]:
        top = ", ".join(
            f"{a}/{b} x{t['count']}{'*' if t['same_finger'] else ''}"
            for t in r["confusions"]["top"]
            for a, b in [t["keys"]]
        )
        lines.append(f"- {r['profile']}/{r['model']}: {top or '(none)'} (* same finger)")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-root", required=True, help="folder with one sim dataset per profile (ROOT/PROFILE)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--profiles", type=lambda s: s.split(","), default=["armband8", "emg2qwerty"])
    ap.add_argument("--models", type=lambda s: s.split(","), default=["gru", "tcn"])
    ap.add_argument("--personalize", type=lambda s: s.split(","), default=["gru", "tcn"])
    ap.add_argument("--config", default="demo")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument(
        "--transfer",
        type=lambda s: s.split(","),
        default=[],
        help=f"models to also adapt from {TRANSFER_SOURCE}'s "
        f"generic run to {TRANSFER_TARGET} (needs both profiles' data; the source run may be from an earlier call)",
    )
    ap.add_argument(
        "--train-set", action="append", default=[], metavar="KEY=VALUE",
        help="config override for the generic and transfer runs (repeatable), e.g. optim.align_delay_s=0.06",
    )  # fmt: skip
    ap.add_argument("--personal-epochs", type=int, default=20)
    ap.add_argument("--personal-lr", type=float, default=3e-4)
    ap.add_argument("--teacher-size", default="default")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument(
        "--more-heldout",
        default=None,
        metavar="ROOT",
        help="one sim dataset per profile (ROOT/PROFILE) of the same population with more --users: each generic "
        "model is also tested on the users the training dataset lacks",
    )
    ap.add_argument(
        "--collect-only",
        action="store_true",
        help="run nothing: tabulate the finished runs under --out (e.g. after "
        "benchmarking profiles with different --models into one --out)",
    )
    ap.add_argument(
        "--merge",
        action="append",
        default=None,
        metavar="JSON",
        help="an earlier train_bench.json of the same datasets: its rows fill the (profile, model) pairs "
        "without a finished run under --out, marked as merged (refused if the dataset differs); repeatable, "
        "the first file given fills first",
    )
    args = ap.parse_args(argv)
    if not args.collect_only:
        run_jobs(plan_jobs(args), args.workers, Path(args.out) / "logs")
    doc = collect(args)
    out = Path(args.out)
    atomic_write_text(out / "train_bench.json", json.dumps(doc, indent=2, default=str) + "\n")
    atomic_write_text(out / "train_bench.md", render(doc))
    print(render(doc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
