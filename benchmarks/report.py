"""``emgkey report``: one or more ``results.json`` (one per device) -> ``report.md`` and PNG plots.

    emgkey report runs/bench_x86/results.json pi4/results.json --out runs/report

The report opens with what a person needs to pick a model for a Raspberry Pi 4: a recommendation
paragraph computed from the numbers (``recommend``) and a headline table of every deployable
configuration (model x runtime x precision at 1 thread) with size, CER, algorithmic latency and, per
device, latency per chunk, real-time factor and peak memory. When no result file comes from a Pi 4, the
Pi 4 column is an *estimate*: the measured latency times a stated factor (``TargetBudget.factor``),
labelled as such wherever it appears. The plots: latency CDF per device, CER vs artifact size with the
Pareto front, CER vs calibration seconds (when the results carry a calibration curve).

Only numpy and (for the plots, optional) matplotlib are needed: it runs on the device.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from emgkey.benchmarks.bench import SCHEMA, SCHEMA_VERSION, TORCH
from emgkey.errors import ConfigError

SUPPORTED_VERSIONS = (1,)


@dataclass(frozen=True)
class TargetBudget:
    """What "fits" a target board, and how figures for it are estimated when it was not measured.

    ``max_rtf``: model + decoder compute per second of signal on one core (the rest of that core goes to
    acquisition, features and the OS; the other cores stay free). ``factor``: an *assumed* per-core
    slowdown of the target vs the machine measured, used only when no result file comes from the target.
    """

    name: str = "Raspberry Pi 4"
    board: str = "rpi4"
    max_rtf: float = 0.5
    max_algorithmic_ms: float = 300.0
    max_peak_rss_mb: float = 400.0
    factor: float = 8.0
    factor_method: str = (
        "latency measured on {device} x {factor:g}; the factor is an assumption (a 1.5 GHz Cortex-A72 core "
        "is several times slower than a current x86 core on small float kernels), not a measurement: "
        "run `emgkey bench --bundle B` on a Pi 4 and merge it with `emgkey report` to replace it"
    )


PI4 = TargetBudget()
CER_UNINFORMATIVE = 90.0  # every candidate at or above this CER: CER does not separate them
CER_FAR_FROM_USABLE = 50.0  # the paragraph says so when the pick's CER is at or above this
CER_AXIS_MAX = 150.0  # plots clip CER here (a flat model under beam search can reach thousands of %)


def clip_cer(values: Sequence[float]) -> tuple[list[float], int]:
    """CERs as plotted (at most ``CER_AXIS_MAX``) and how many were above it."""
    return [min(v, CER_AXIS_MAX) for v in values], sum(v > CER_AXIS_MAX for v in values)


def load_results(paths: Sequence[str | Path]) -> list[dict[str, Any]]:
    out = []
    for p in paths:
        try:
            d = json.loads(Path(p).read_text())
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{p}: not JSON ({exc})") from exc
        if not isinstance(d, dict) or d.get("schema") != SCHEMA:
            raise ConfigError(
                f"{p}: not an emgkey bench result (schema {d.get('schema') if isinstance(d, dict) else None!r})"
            )
        if d.get("schema_version") not in SUPPORTED_VERSIONS:
            raise ConfigError(
                f"{p}: results schema version {d.get('schema_version')!r}; this emgkey reads "
                f"{list(SUPPORTED_VERSIONS)} (and writes v{SCHEMA_VERSION})"
            )
        d["_path"] = str(p)
        out.append(d)
    if not out:
        raise ConfigError("no result files given")
    labels: dict[str, int] = {}
    for d in out:  # unique device labels, in order
        label = str(d["device"].get("label") or d["device"].get("cpu_model"))
        labels[label] = labels.get(label, 0) + 1
        d["_label"] = label if labels[label] == 1 else f"{label} #{labels[label]}"
    _disambiguate_models(out)
    return out


def _model_identity(m: dict[str, Any]) -> tuple[Any, ...]:
    """What makes two files' rows the same model (paths differ between devices, so they are not used)."""
    return (m.get("name"), m.get("profile"), m.get("params"), bool(m.get("distilled")), m.get("role"))


def _disambiguate_models(docs: Sequence[dict[str, Any]]) -> None:
    """Rows are merged across files by model key; a key that names a different model in a later file
    (``tcn`` benchmarked for armband8 in one run and for emg2qwerty in another) gets ``@profile`` (then
    ``#n``) in that file, so two models never share a row."""
    seen: dict[str, tuple[Any, ...]] = {}
    for d in docs:
        renames: dict[str, str] = {}
        for m in d["models"]:
            key, ident = m["key"], _model_identity(m)
            if seen.get(key, ident) != ident:
                new = f"{key}@{m.get('profile')}"
                n = 2
                while seen.get(new, ident) != ident:
                    new, n = f"{key}@{m.get('profile')}#{n}", n + 1
                renames[key] = new
                key = new
            seen[key] = ident
        if renames:
            for m in d["models"]:
                m["key"] = renames.get(m["key"], m["key"])
            for c in d["cells"]:
                c["model"] = renames.get(c["model"], c["model"])
            for r in d.get("ratios") or []:
                if r.get("model") in renames:
                    r["model"] = renames[r["model"]]


# ---------------------------------------------------------------------------------------------------------------------
# Helpers over the documents
# ---------------------------------------------------------------------------------------------------------------------


def _models(results: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for r in results:
        for m in r["models"]:
            out.setdefault(m["key"], m)
    return out


def _ok(cell: dict[str, Any]) -> bool:
    return cell.get("status") == "ok"


def _cer(cell: dict[str, Any], decoder: str) -> float | None:
    d = (cell.get("cer") or {}).get(decoder)
    return None if d is None else d.get("cer")


def _beam_name(results: Sequence[dict[str, Any]]) -> str | None:
    for r in results:
        for c in r["cells"]:
            for k in c.get("cer") or {}:
                if k.startswith("beam"):
                    return str(k)
    return None


def _fmt(v: Any, nd: int = 2, none: str = "-") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return none
    if isinstance(v, int):
        return f"{v:,}"
    return f"{v:.{nd}f}"


def _kb(b: Any) -> str:
    return "-" if not b else f"{b / 1024:,.0f}"


def _data_tag(model: dict[str, Any]) -> str:
    kind = (model.get("data") or {}).get("kind", "unknown")
    return {"simulated": "sim", "real": "real", "none": "no data"}.get(kind, "?")


def data_kinds(results: Sequence[dict[str, Any]]) -> set[str]:
    return {(m.get("data") or {}).get("kind", "unknown") for m in _models(results).values() if m.get("data")}


def _on_target(results: Sequence[dict[str, Any]], budget: TargetBudget) -> dict[str, Any] | None:
    return next((r for r in results if r["device"].get("board") == budget.board), None)


# ---------------------------------------------------------------------------------------------------------------------
# Recommendation
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class Candidate:
    model: str
    name: str
    runtime: str
    precision: str
    bytes: int | None
    cer: dict[str, float | None]
    alg_ms: float
    p99_ms: float
    rtf_model: float
    decode_rtf: dict[str, float]  # per decoder, on the target (estimated or measured)
    peak_mb: float
    data_kind: str
    decoder: str = ""
    reasons: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        return f"{self.model} {self.precision} on {self.runtime}"

    def total_rtf(self, decoder: str) -> float:
        return self.rtf_model + self.decode_rtf.get(decoder, math.inf)


def _or_inf(x: float | None) -> float:
    return math.inf if x is None else x


def recommend(results: Sequence[dict[str, Any]], budget: TargetBudget = PI4) -> dict[str, Any]:
    """Pick a configuration for ``budget``'s board from measured cells (1 thread, deployable runtimes).

    Feasible: (model + decoder) real-time factor on the target <= ``max_rtf``; algorithmic latency + model p99
    <= ``max_algorithmic_ms``; peak RSS <= ``max_peak_rss_mb``. The decoder is beam (+LM) when it fits, else
    greedy. Among the feasible, the lowest CER wins; CERs within 1 point tie (and every CER ties when all are
    >= ``CER_UNINFORMATIVE``: an untrained model's CER says nothing), then the smaller file, then the lower RTF.
    """
    target = _on_target(results, budget)
    source = target or results[0]
    factor = 1.0 if target else budget.factor
    if target:
        method = f"measured on {target['_label']}"
    else:
        method = "Pi 4 figures are estimates: " + budget.factor_method.format(device=source["_label"], factor=factor)
    models = {m["key"]: m for m in source["models"]}
    beam = _beam_name([source])
    cands: list[Candidate] = []
    for c in source["cells"]:
        m = models.get(c["model"])
        if not _ok(c) or c["runtime"] == TORCH or c["threads"] != 1 or m is None or m["role"] != "student":
            continue
        frame_rate = 1e3 / (m["chunk_ms"] / m["chunk_frames"])
        dec = {
            k: v["decode_ms_per_frame"] * frame_rate / 1e3 * factor
            for k, v in (c.get("cer") or {}).items()
            if v.get("decode_ms_per_frame") is not None
        }
        cands.append(
            Candidate(
                model=c["model"],
                name=m["name"],
                runtime=c["runtime"],
                precision=c["precision"],
                bytes=c.get("artifact_bytes"),
                cer={k: v.get("cer") for k, v in (c.get("cer") or {}).items()},
                alg_ms=m["algorithmic_ms"] + c["latency_ms"]["p99"] * factor,
                p99_ms=c["latency_ms"]["p99"] * factor,
                rtf_model=c["rtf"] * factor,
                decode_rtf=dec,
                peak_mb=c["rss_mb"]["peak"],
                data_kind=(m.get("data") or {}).get("kind", "unknown"),
            )
        )
    feasible: list[Candidate] = []
    rejected: list[Candidate] = []
    for cand in cands:
        reasons = []
        if cand.alg_ms > budget.max_algorithmic_ms:
            reasons.append(f"latency {cand.alg_ms:.0f} ms > {budget.max_algorithmic_ms:.0f} ms")
        if cand.peak_mb > budget.max_peak_rss_mb:
            reasons.append(f"peak RSS {cand.peak_mb:.0f} MB > {budget.max_peak_rss_mb:.0f} MB")
        # The decoder: the lower CER among those that fit the budget (greedy on a tie: it costs nothing).
        fits = [
            d for d in ["greedy", *([beam] if beam else [])] if d in cand.cer and cand.total_rtf(d) <= budget.max_rtf
        ]
        decoder = min(fits, key=lambda d: _or_inf(cand.cer.get(d)), default="")
        if not decoder:
            reasons.append(f"real-time factor {cand.total_rtf('greedy'):.2f} > {budget.max_rtf:g} even with greedy")
        cand = replace(cand, decoder=decoder, reasons=tuple(reasons))
        (rejected if reasons else feasible).append(cand)
    out: dict[str, Any] = {"target": budget.name, "method": method, "factor": factor, "budget": budget.__dict__}
    if not feasible:
        out.update(pick=None, runner_up=None, rejected=[(c.label, c.reasons) for c in rejected])
        out["text"] = f"No measured configuration fits a {budget.name} ({method}). " + "; ".join(
            f"{c.label}: {', '.join(c.reasons)}" for c in rejected[:6]
        )
        return out
    scores = [c.cer.get(c.decoder) for c in feasible]
    informative = any(s is not None and s < CER_UNINFORMATIVE for s in scores)

    def key(c: Candidate) -> tuple[float, float, float]:
        s = c.cer.get(c.decoder)
        return (s if (informative and s is not None) else 0.0, float(c.bytes or 0), c.total_rtf(c.decoder))

    best_cer = min((s for s in scores if s is not None), default=None)
    if informative and best_cer is not None:
        tied = [c for c in feasible if _or_inf(c.cer.get(c.decoder)) <= best_cer + 1.0]
    else:
        tied = list(feasible)
    pick = min(tied, key=lambda c: (float(c.bytes or 0), c.total_rtf(c.decoder)))
    others = sorted((c for c in feasible if c is not pick), key=key)
    runner = others[0] if others else None
    out.update(pick=pick.__dict__, runner_up=runner.__dict__ if runner else None)
    out["rejected"] = [(c.label, c.reasons) for c in rejected]
    out["text"] = _paragraph(pick, runner, rejected, feasible, budget, method, informative, factor)
    return out


def _paragraph(
    pick: Candidate,
    runner: Candidate | None,
    rejected: Sequence[Candidate],
    feasible: Sequence[Candidate],
    budget: TargetBudget,
    method: str,
    informative: bool,
    factor: float,
) -> str:
    est = " (estimate)" if factor != 1.0 else ""
    data = {"simulated": "simulated data", "real": "real recordings"}.get(pick.data_kind, f"{pick.data_kind} data")
    dec = {"beam_lm": "beam search + LM", "beam": "beam search (no LM)"}.get(pick.decoder, "greedy decoding")
    cer = pick.cer.get(pick.decoder)
    s = (
        f"**Pick for a {budget.name}: `{pick.model}` ({pick.name}), {pick.precision} on {pick.runtime}, 1 thread, "
        f"{dec}.** CER {_fmt(cer, 1)} % on held-out {data}, {_kb(pick.bytes)} KB model file, "
        f"real-time factor {pick.total_rtf(pick.decoder):.3f}{est} for model + decoder "
        f"(budget {budget.max_rtf:g}), latency {pick.alg_ms:.0f} ms{est} (chunk + look-ahead + p99 compute), "
        f"peak RSS {pick.peak_mb:.0f} MB. "
    )
    if informative:
        s += (
            f"It has the lowest CER of the {len(feasible)} configuration(s) that fit (CERs within 1 point tie; "
            "the smaller file wins). "
        )
    else:
        s += (
            f"Every configuration that fits has CER >= {CER_UNINFORMATIVE:g} %: these models are not trained "
            "enough for CER to separate them, so the pick is the smallest file, then the fastest. "
        )
    if cer is not None and cer >= CER_FAR_FROM_USABLE:
        s += (
            f"At {cer:.0f} % CER no model here types usefully yet: this picks the configuration (architecture, "
            "runtime, precision, decoder) that fits the device, not a usable model. "
        )
    if runner is not None:
        s += (
            f"Runner-up: `{runner.model}` {runner.precision} on {runner.runtime} "
            f"(CER {_fmt(runner.cer.get(runner.decoder), 1)} %, {_kb(runner.bytes)} KB, "
            f"RTF {runner.total_rtf(runner.decoder):.3f}{est}). "
        )
    if rejected:
        s += "Does not fit: " + "; ".join(f"`{c.label}` ({', '.join(c.reasons)})" for c in rejected[:4]) + ". "
    if pick.data_kind != "real":
        s += "CER here is not real-data CER: re-run with real held-out sessions (`--eval-data`) before trusting it. "
    s += f"({method}.)"
    return s


# ---------------------------------------------------------------------------------------------------------------------
# Markdown
# ---------------------------------------------------------------------------------------------------------------------


def _device_table(results: Sequence[dict[str, Any]]) -> list[str]:
    lines = [
        "| device | board | CPU | cores (usable) | memory | OS | Python | runtimes | load at start |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        d = r["device"]
        vers = ", ".join(f"{k} {v}" for k, v in sorted(d.get("versions", {}).items()))
        lines.append(
            f"| {r['_label']} | {d.get('board')} | {d.get('cpu_model')} ({d.get('arch')}) "
            f"| {d.get('cores_logical')} ({d.get('cores_usable')}) | {_fmt(d.get('memory_mb'), 0)} MB | {d.get('os')} "
            f"| {d.get('python')} | {vers} | {d.get('loadavg_at_start')} |"
        )
    return lines


def headline_rows(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (model, runtime, precision) at 1 thread, with per-device cells; deployable first."""
    models = _models(results)
    rows: dict[tuple[str, str, str], dict[str, Any]] = {}
    for r in results:
        for c in r["cells"]:
            if c["threads"] != 1 or not _ok(c):
                continue
            k = (c["model"], c["runtime"], c["precision"])
            row = rows.setdefault(k, {"model": models[c["model"]], "cell": c, "devices": {}})
            row["devices"][r["_label"]] = c
    beam = _beam_name(results)

    def order(row: dict[str, Any]) -> tuple[int, float, float]:
        c = row["cell"]
        deployable = c["runtime"] != TORCH and row["model"]["role"] == "student"
        cers = [x for x in (_cer(c, "greedy"), _cer(c, beam) if beam else None) if x is not None]
        return (0 if deployable else 1, min(cers, default=math.inf), float(c.get("artifact_bytes") or 0))

    return sorted(rows.values(), key=order)


def _headline(results: Sequence[dict[str, Any]], budget: TargetBudget) -> list[str]:
    beam = _beam_name(results)
    beam_head = "CER beam+LM %" if beam == "beam_lm" else "CER beam %"
    target = _on_target(results, budget)
    factor = 1.0 if target else budget.factor
    pi_head = f"{budget.name} RTF ({'measured' if target else f'estimate x{factor:g}'})"
    head = ["model", "data", "runtime", "prec.", "params", "size KB", "CER greedy %"]
    if beam:
        head.append(beam_head)
    head.append("alg. latency ms")
    with_cal = any(r.get("calibration") for r in results)
    if with_cal:
        head.append("calibration: CER change")
    for r in results:
        head += [f"{r['_label']}: ms/chunk p50/p99", f"{r['_label']}: RTF", f"{r['_label']}: peak RSS MB"]
    head.append(pi_head)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    ref_dev = target or results[0]
    for row in headline_rows(results):
        m, c = row["model"], row["cell"]
        tag = "" if c["runtime"] != TORCH and m["role"] == "student" else " (reference)"
        cells = [
            f"`{m['key']}`{tag}",
            _data_tag(m),
            "PyTorch eager" if c["runtime"] == TORCH else c["runtime"],
            c["precision"],
            _fmt(m.get("params")),
            _kb(c.get("artifact_bytes")),
            _fmt(_cer(c, "greedy"), 1),
        ]
        if beam:
            cells.append(_fmt(_cer(c, beam), 1))
        alg = m.get("algorithmic_ms") if m["role"] == "student" else c.get("algorithmic_ms")
        cells.append(_fmt(alg, 0) + ("" if m["role"] == "student" else " (window)"))
        if with_cal:
            cells.append(calibration_gain(results, m))
        for r in results:
            d = row["devices"].get(r["_label"])
            if d is None:
                cells += ["-", "-", "-"]
                continue
            lat = d["latency_ms"]
            cells += [
                f"{_fmt(lat['p50'], 3)} / {_fmt(lat['p99'], 3)}",
                _fmt(d.get("rtf"), 4),
                _fmt(d["rss_mb"]["peak"], 0),
            ]
        dref = row["devices"].get(ref_dev["_label"])
        cells.append(_fmt(dref["rtf"] * factor, 3) if dref and dref.get("rtf") is not None else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def calibration_gain(results: Sequence[dict[str, Any]], model: dict[str, Any]) -> str:
    """The best CER change at the longest calibration measured for this model (a calibration_bench label
    ``KEY (ARCH)`` names one bundle; a plain name may be an architecture; a file may name no model), e.g.
    ``-12.3 pt @ 60 s (finetune)``."""
    pts = []
    for r in results:
        for p in (r.get("calibration") or {}).get("curve", []):
            name, _, strategy = str(p.get("model") or "").partition(" / ")
            # calibration_bench labels its students "KEY (ARCH)": that one bundle, not every model of ARCH
            labelled = re.fullmatch(r"(.+) \((.+)\)", name)
            if (labelled and labelled.group(1) == model["key"]) or (
                not labelled and name in ("", model["name"], model["key"])
            ):
                pts.append((p["seconds"], p["gain_points"], strategy))
    if not pts:
        return "-"
    longest = max(p[0] for p in pts)
    secs, gain, strategy = max((p for p in pts if p[0] == longest), key=lambda p: p[1])
    return f"{-gain:+.1f} pt @ {secs:g} s" + (f" ({strategy})" if strategy else "")


def _ratio_lines(results: Sequence[dict[str, Any]]) -> list[str]:
    lines = []
    for r in results:
        rs = r.get("ratios") or []
        if not rs:
            continue
        lines += [
            f"**{r['_label']}** (medians of per-run ratios; speed-up > 1: faster than the reference):",
            "",
            "| model | threads | cell | vs | speed-up p50 | speed-up p99 | RSS ratio | size ratio | runs |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for x in rs:
            lines.append(
                f"| `{x['model']}` | {x['threads']} | {x['cell']} | {x['versus']} | {_fmt(x['speedup_p50'])}x "
                f"| {_fmt(x['speedup_p99'])}x | {_fmt(x['rss_ratio'])} | {_fmt(x['size_ratio'], 3)} "
                f"| {x['paired_runs']} |"
            )
        lines.append("")
    return lines


def _matrix_lines(r: dict[str, Any]) -> list[str]:
    beam = _beam_name([r])
    lines = [
        f"**{r['_label']}** ({r['settings']['repeats']} runs x {r['settings']['calls']} calls after "
        f"{r['settings']['warmup']} warm-up calls per cell):",
        "",
        "| model | runtime | prec. | threads | status | p50 / p95 / p99 ms | RTF | RSS MB baseline / loaded / peak "
        f"| CER greedy % | {'CER ' + beam + ' %' if beam else 'CER beam'} | decode ms/frame (beam) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in r["cells"]:
        if not _ok(c):
            lines.append(
                f"| `{c['model']}` | {c['runtime']} | {c['precision']} | {c['threads']} | {c['status']}: "
                f"{c.get('reason', '')} | | | | | | |"
            )
            continue
        lat, rss = c["latency_ms"], c["rss_mb"]
        bd = (c.get("cer") or {}).get(beam or "", {})
        lines.append(
            f"| `{c['model']}` | {c['runtime']} | {c['precision']} | {c['threads']} | ok ({c['unit']}) | "
            f"{_fmt(lat['p50'], 3)} / {_fmt(lat['p95'], 3)} / {_fmt(lat['p99'], 3)} | {_fmt(c.get('rtf'), 4)} | "
            f"{_fmt(rss['baseline'], 0)} / {_fmt(rss['loaded'], 0)} / {_fmt(rss['peak'], 0)} | "
            f"{_fmt(_cer(c, 'greedy'), 1)} | {_fmt(bd.get('cer'), 1)} | {_fmt(bd.get('decode_ms_per_frame'), 3)} |"
        )
    return lines


def _calibration_lines(results: Sequence[dict[str, Any]]) -> list[str]:
    lines: list[str] = []
    for r in results:
        cal = r.get("calibration")
        if not cal:
            continue
        kind = cal.get("data", {}).get("kind", "unknown")
        lines += [
            f"From `{cal['source']}` ({kind} data), recorded with {r['_label']}:",
            "",
            "| model / strategy | calibration s | CER before % | CER after % | deployed % | gain (points) "
            "| compute s | n |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for p in cal["curve"]:
            lines.append(
                f"| {p.get('model') or '-'} | {_fmt(p['seconds'], 0)} | {_fmt(p['cer_before'], 1)} | "
                f"{_fmt(p['cer_after'], 1)} | {_fmt(p.get('cer_deployed'), 1)} | {_fmt(p['gain_points'], 1)} "
                f"| {_fmt(p.get('compute_s'), 1)} | {p['n']} |"
            )
        lines.append("")
    return lines


def markdown(results: Sequence[dict[str, Any]], plots: dict[str, str], budget: TargetBudget = PI4) -> str:
    rec = recommend(results, budget)
    kinds = data_kinds(results)
    lines = ["# emgkey benchmark report", ""]
    if "simulated" in kinds:
        lines += [
            "> **Simulated data.** CER figures marked `sim` come from emgkey's simulator, not from people: "
            "they are not real-data CER." + ("" if kinds <= {"simulated"} else " Rows marked `real` are."),
            "",
        ]
    lines += [
        f"Devices: {', '.join(r['_label'] for r in results)}. Results: "
        + ", ".join(f"`{r['_path']}` ({r['created']})" for r in results)
        + ".",
        "",
        f"## Which model for a {budget.name}?",
        "",
        rec["text"],
        "",
        "Every deployable configuration at 1 thread (`emgkey run` defaults to 1 thread); PyTorch eager and the "
        "teacher are the reference baseline, not deployable with the torch-free runtime. Latency per chunk is "
        "the model call alone (median over runs of each run's percentile); RTF = mean compute / signal per "
        "call; alg. latency = chunk wait (its window included) + look-ahead.",
        "",
        *_headline(results, budget),
        "",
    ]
    if "cer_pareto" in plots:
        lines += [f"![CER vs artifact size]({plots['cer_pareto']})", ""]
    if "latency_cdf" in plots:
        lines += [f"![latency CDF]({plots['latency_cdf']})", ""]
    ratio = _ratio_lines(results)
    if ratio:
        lines += ["## Side by side (same run, same machine)", "", *ratio]
    cal = _calibration_lines(results)
    if cal:
        lines += ["## Calibration", "", *cal]
        if "calibration" in plots:
            lines += [f"![CER vs calibration seconds]({plots['calibration']})", ""]
    lines += ["## Devices", "", *_device_table(results), ""]
    lines += ["## Models", "", *_model_lines(results), ""]
    lines += ["## Full matrix", ""]
    for r in results:
        lines += [*_matrix_lines(r), ""]
    if plots.get("_skipped"):
        lines += [f"Plots not drawn: {plots['_skipped']}", ""]
    lines += ["## Method", "", *_method_lines(results, rec), ""]
    return "\n".join(lines)


def _model_lines(results: Sequence[dict[str, Any]]) -> list[str]:
    lines = [
        "| model | arch | role | profile | params | MMAC/s | chunk ms | look-ahead ms | alg. latency ms | "
        "held-out data | windows / chars | PyTorch source |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m in _models(results).values():
        d = m.get("data") or {}
        macs = m.get("macs_per_s")
        lines.append(
            f"| `{m['key']}` | {m['name']}{' (KD)' if m.get('distilled') else ''} | {m['role']} | {m['profile']} | "
            f"{_fmt(m.get('params'))} | {_fmt(macs / 1e6 if macs else None, 1)} | {_fmt(m.get('chunk_ms'), 0)} | "
            f"{_fmt(m.get('lookahead_ms'), 0)} | {_fmt(m.get('algorithmic_ms'), 0)} | {d.get('kind', '?')}: "
            f"{d.get('source', '-')} | {d.get('windows', '-')} / {d.get('characters', '-')} | "
            f"{m.get('checkpoint_note') or '-'} |"
        )
    return lines


def _method_lines(results: Sequence[dict[str, Any]], rec: dict[str, Any]) -> list[str]:
    s = results[0]["settings"]
    lm = s.get("lm")
    return [
        "- Each cell runs in a fresh subprocess that imports only its runtime; cells are interleaved "
        f"round-robin over {s['repeats']} run(s) so drift on a shared machine hits all cells alike. Per run: "
        f"{s['warmup']} warm-up calls, {s['calls']} timed calls (a teacher window counts as 10), state carried.",
        "- Peak RSS is the subprocess's VmHWM after timing (before the evaluation data is loaded); baseline = "
        "Python + numpy + emgkey before the runtime is imported.",
        "- Ratios are per run (same round), then the median over runs.",
        "- CER: greedy and prefix beam search"
        + (f" with the character LM `{lm['path']}` ({lm['bytes'] / 1e6:.1f} MB)" if lm else " without LM")
        + " on each (model, runtime, precision)'s emissions at 1 thread; decode time is measured in the parent "
        "process (pure Python).",
        f"- {rec['method']}.",
    ]


# ---------------------------------------------------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------------------------------------------------


def _short(runtime: str) -> str:
    return {"onnxruntime": "ORT", "ai-edge-litert": "LiteRT", "tflite-runtime": "tflite-rt", TORCH: "torch"}.get(
        runtime, runtime
    )


def pareto_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """(size, cer) points not beaten on both axes, by increasing size (lower CER is better)."""
    front: list[tuple[float, float]] = []
    for size, cer in sorted(points, key=lambda p: (p[0], p[1])):
        if not front or cer < front[-1][1]:
            front.append((size, cer))
    return front


def draw_plots(results: Sequence[dict[str, Any]], out: Path) -> dict[str, str]:
    """PNG files next to report.md; ``{"_skipped": why}`` without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return {"_skipped": "matplotlib is not installed (pip install 'emgkey[plots]')"}
    plots: dict[str, str] = {}
    sim = "simulated" in data_kinds(results)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    model_keys = list(_models(results))
    color = {k: colors[i % len(colors)] for i, k in enumerate(model_keys)}
    configs = [(TORCH, "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "int8")]
    configs += [(r, p) for r in ("ai-edge-litert", "tflite-runtime") for p in ("fp32", "int8")]
    config_color = {c: colors[i % len(colors)] for i, c in enumerate(configs)}
    device_style: list[Any] = ["-", "--", ":", "-."]

    # 1. latency CDF at 1 thread: one panel per model (small multiples), colour = runtime + precision,
    #    line style = device
    timed = {
        c["model"] for r in results for c in r["cells"] if _ok(c) and c.get("unit") == "chunk" and c["threads"] == 1
    }
    streaming = [k for k in model_keys if k in timed]
    if streaming:
        ncols = min(4, len(streaming))
        nrows = math.ceil(len(streaming) / ncols)
        fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.2 * nrows), squeeze=False, sharex=True)
        for ax, key in zip(axes.flat, streaming):
            for di, r in enumerate(results):
                for c in r["cells"]:
                    if c["model"] != key or not _ok(c) or c["threads"] != 1 or not c.get("cdf_ms"):
                        continue
                    ys = [i / (len(c["cdf_ms"]) - 1) for i in range(len(c["cdf_ms"]))]
                    label = f"{_short(c['runtime'])} {c['precision']}" + (
                        f" ({r['_label']})" if len(results) > 1 else ""
                    )
                    ax.plot(
                        c["cdf_ms"],
                        ys,
                        linestyle=device_style[di % len(device_style)],
                        color=config_color.get((c["runtime"], c["precision"]), "k"),
                        label=label,
                        lw=1.3,
                    )
            ax.set_xscale("log")
            ax.set_title(key, fontsize=9)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=6, loc="lower right")
        for ax in axes.flat[len(streaming) :]:
            ax.set_visible(False)
        for ax in axes[-1]:
            ax.set_xlabel("ms per chunk (log)")
        for ax in axes[:, 0]:
            ax.set_ylabel("fraction of calls")
        if len(results) > 1:
            devices = ", ".join(f"{r['_label']} ({device_style[i % len(device_style)]})" for i, r in enumerate(results))
        else:
            devices = results[0]["_label"]
        fig.suptitle(f"Model compute per chunk, 1 thread\nlatency CDF on {devices}", fontsize=10)
        fig.tight_layout()
        fig.savefig(out / "latency_cdf.png", dpi=100)
        plt.close(fig)
        plots["latency_cdf"] = "latency_cdf.png"

    # 2. CER vs artifact size, Pareto front (deployable files; PyTorch fp32 weights as reference)
    beam = _beam_name(results)
    fig, ax = plt.subplots(figsize=(9, 5.5))
    pts: list[tuple[float, float, str]] = []
    seen = set()
    shown: list[float] = []
    clipped = 0
    markers = {("onnxruntime", "fp32"): "o", ("onnxruntime", "int8"): "o", (TORCH, "fp32"): "x"}
    for row in headline_rows(results):
        c, m = row["cell"], row["model"]
        size, cer = c.get("artifact_bytes"), _cer(c, "greedy")
        if not size or cer is None or (c["model"], c["runtime"], c["precision"]) in seen:
            continue
        seen.add((c["model"], c["runtime"], c["precision"]))
        kb = size / 1024
        marker = markers.get((c["runtime"], c["precision"]), "s")
        col = color[c["model"]]
        y = min(cer, CER_AXIS_MAX)
        if marker == "x":
            ax.scatter([kb], [y], marker=marker, s=45, color=col)
        else:
            ax.scatter(
                [kb], [y], marker=marker, s=45, facecolors=col if c["precision"] == "fp32" else "none", edgecolors=col
            )
        shown.append(cer)
        bcer = _cer(c, beam) if beam else None
        if bcer is not None:
            ax.scatter([kb], [min(bcer, CER_AXIS_MAX)], marker="^", s=18, color=col, alpha=0.45)
            shown.append(bcer)
        clipped += sum(1 for v in (cer, bcer) if v is not None and v > CER_AXIS_MAX)
        if c["runtime"] != TORCH and m["role"] == "student":
            pts.append((kb, cer, f"{c['model']} {c['precision']} {_short(c['runtime'])}"))
    front = pareto_front([(p[0], p[1]) for p in pts])
    if front:
        ax.step([p[0] for p in front], [min(p[1], CER_AXIS_MAX) for p in front], where="post", color="k", lw=1,
                alpha=0.6, label="Pareto front (deployable files, greedy CER)")  # fmt: skip
        for kb, cer, label in pts:
            if (kb, cer) in front:
                ax.annotate(
                    label, (kb, min(cer, CER_AXIS_MAX)), fontsize=7, xytext=(4, -10), textcoords="offset points"
                )
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], marker="o", linestyle="", color=color[k], label=k) for k in model_keys]
    handles.append(Line2D([], [], color="k", lw=1, alpha=0.6, label="Pareto front (deployable, greedy)"))
    ax.legend(handles=handles, fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    if shown:
        ax.set_ylim(0, min(max(shown), CER_AXIS_MAX) * 1.08 + 1)
    ax.set_xscale("log")
    ax.set_xlabel("model file size (KB, log): o ONNX, s TFLite (hollow: int8), x PyTorch fp32 weights")
    ax.set_ylabel(f"held-out CER % (greedy; ^ = {beam or 'beam'})")
    note = f"; {clipped} point(s) above {CER_AXIS_MAX:g} % drawn at the top" if clipped else ""
    ax.set_title("CER vs size" + (" (SIMULATED data)" if sim else "") + note, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "cer_vs_size.png", dpi=110)
    plt.close(fig)
    plots["cer_pareto"] = "cer_vs_size.png"

    # 3. CER vs calibration seconds
    curves = [(r["_label"], r["calibration"]) for r in results if r.get("calibration")]
    if curves:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        n_clipped = 0

        def clip(values: list[float]) -> list[float]:
            nonlocal n_clipped
            shown, n = clip_cer(values)
            n_clipped += n
            return shown

        for label, cal in curves:
            by_model: dict[str, list[dict[str, Any]]] = {}
            for p in cal["curve"]:
                by_model.setdefault(p.get("model") or "", []).append(p)
            for model, pts_ in by_model.items():
                pts_ = sorted(pts_, key=lambda p: p["seconds"])
                name = f"{model or 'model'} ({label})"
                xs = [p["seconds"] for p in pts_]
                ax.plot(xs, clip([p["cer_after"] for p in pts_]), "o-", label=f"{name} calibrated")
                ax.plot(
                    xs,
                    clip([p["cer_before"] for p in pts_]),
                    ":",
                    alpha=0.6,
                    label=f"{name} before",
                )
        kind = curves[0][1].get("data", {}).get("kind", "")
        ax.set_xlabel("calibration data (seconds of typing)")
        ax.set_ylabel("CER %")
        ax.set_ylim(bottom=0)
        if n_clipped:
            ax.set_ylim(0, CER_AXIS_MAX * 1.05)
        ax.set_title(
            "CER vs calibration seconds"
            + (" (SIMULATED data)" if "sim" in str(kind) else "")
            + (f"\n{n_clipped} point(s) above {CER_AXIS_MAX:g} % drawn at the top" if n_clipped else ""),
            fontsize=10,
        )
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "cer_vs_calibration.png", dpi=110)
        plt.close(fig)
        plots["calibration"] = "cer_vs_calibration.png"
    return plots


def write_report(
    results: Sequence[dict[str, Any]], out: str | Path, budget: TargetBudget = PI4, *, plots: bool = True
) -> Path:
    """``out/report.md`` (+ PNGs, + ``recommendation.json``) from loaded result documents."""
    from emgkey.atomic import atomic_write_text

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for i, r in enumerate(results):
        r.setdefault("_path", f"results[{i}]")
        r.setdefault("_label", str(r["device"].get("label")))
    drawn = draw_plots(results, out) if plots else {"_skipped": "disabled (--no-plots)"}
    atomic_write_text(out / "report.md", markdown(results, drawn, budget) + "\n")
    rec = recommend(results, budget)
    atomic_write_text(out / "recommendation.json", json.dumps(rec, indent=2, default=str) + "\n")
    return out / "report.md"
