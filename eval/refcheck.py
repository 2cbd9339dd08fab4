"""``python -m eval.refcheck``: do this machine's numbers agree with the committed reference?

    python -m eval.refcheck runs/main/reports --reference reports --reference reports/lean

The main job (``scripts/main.sh``) measures on the machine it runs on, into its own
reports folder, with the lean protocol (:mod:`eval.protocol`); the committed reports are
the reference it is checked against, not a cache. For every ok run of the folder, the
newest reference run of the same model and the same pipeline configs (the same calibration
where the run calibrates) is looked up per protocol: the full protocol's (``reports/``: does
the lean number estimate the full one?) and the lean protocol's (``reports/lean/``, the
main job's own committed run: does this machine reproduce it on the same items?). Quick
runs are never a reference. Every number a run shares with its reference is compared:

* each benchmark metric with a 95% interval (quality and agreement with dense): *agrees*
  when the two intervals overlap, or, where the reference was written before intervals,
  when the reference value lies inside this run's interval; else *differs*;
* a metric whose protocol record differs in more than its size (windows, examples) is
  *protocol changed*, not compared: the reference was measured another way;
* the same-process latency ratio to dense at 1 x 128 (:func:`eval.budget.latency_ratio`'s
  source), on the same rule with the ratios' bootstrap intervals.

A run with no reference run says so. The verdicts go to the console and to
``refcheck.json`` beside the folder; the command exits 0 whatever they are (a difference is a
finding, not an error).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from compress.errors import UserError, run_main
from compress.fileio import atomic_write_json
from eval import protocol
from eval.report import dig, read_reports

AGREES, DIFFERS, CHANGED = "agrees", "differs", "protocol changed"

#: metric-protocol fields a lean run changes by design (how many items, which protocol):
#: every other field (lengths, decoding, target scoring, data) must match for the two
#: numbers to measure the same thing
SIZE_FIELDS = frozenset({"n_examples", "n_test", "n_train", "max_windows", "quick", "protocol"})


def _configs(report: dict[str, Any]) -> list[Any]:
    return [s.get("config") for s in report.get("pipeline", [])]


def _identity(report: dict[str, Any]) -> tuple[str, str, str]:
    """What must match for two runs to be the same run: model, configs, calibration."""
    return (report["model"]["name"], json.dumps(_configs(report), sort_keys=True),
            json.dumps(report.get("calibration"), sort_keys=True))


def _interval(metric: dict[str, Any]) -> tuple[float, float] | None:
    iv = metric.get("interval")
    if isinstance(iv, dict) and isinstance(iv.get("low"), (int, float)) \
            and isinstance(iv.get("high"), (int, float)):
        return float(iv["low"]), float(iv["high"])
    return None


def verdict(value: float, iv: tuple[float, float] | None, ref_value: float,
            ref_iv: tuple[float, float] | None) -> str | None:
    """``agrees`` / ``differs`` on the module's rule; None where neither side has an interval.

    >>> verdict(10.0, (9.0, 11.0), 10.5, (10.2, 10.8)), verdict(10.0, (9.0, 11.0), 12.0, None)
    ('agrees', 'differs')
    """
    if iv is not None and ref_iv is not None:
        return AGREES if iv[0] <= ref_iv[1] and ref_iv[0] <= iv[1] else DIFFERS
    if iv is not None:
        return AGREES if iv[0] <= ref_value <= iv[1] else DIFFERS
    if ref_iv is not None:
        return AGREES if ref_iv[0] <= value <= ref_iv[1] else DIFFERS
    return None


def _latency(report: dict[str, Any]) -> dict[str, Any] | None:
    vs = dig(report.get("profile", {}), "latency_vs_dense", "1x128")
    if not isinstance(vs, dict) or not isinstance(vs.get("ratio"), (int, float)):
        return None
    ci = vs.get("ci95") or []
    iv = (float(ci[0]), float(ci[1])) if len(ci) == 2 and None not in ci else None
    return {"value": float(vs["ratio"]), "interval": iv}


def _measures(metric: dict[str, Any]) -> dict[str, Any]:
    proto = metric.get("protocol")
    return {k: v for k, v in proto.items() if k not in SIZE_FIELDS} \
        if isinstance(proto, dict) else {}


def compare_run(run: dict[str, Any], ref: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per number ``run`` and its reference ``ref`` share (see the module rule);
    a metric whose protocol differs in more than its size (:data:`SIZE_FIELDS`), e.g. a
    reference written before the benchmark changed how it scores, is ``protocol changed``."""
    rows = []
    ref_metrics = {m["name"]: m for m in ref.get("metrics", [])}
    for m in run.get("metrics", []):
        r = ref_metrics.get(m["name"])
        if r is None:
            continue
        iv, ref_iv = _interval(m), _interval(r)
        v = verdict(float(m["value"]), iv, float(r["value"]), ref_iv)
        if v is not None and _measures(m) != _measures(r):
            v = CHANGED
        if v is not None:
            rows.append({"number": m["name"], "value": float(m["value"]), "interval": iv,
                         "reference": float(r["value"]), "reference_interval": ref_iv,
                         "verdict": v})
    lat, ref_lat = _latency(run), _latency(ref)
    if lat is not None and ref_lat is not None:
        v = verdict(lat["value"], lat["interval"], ref_lat["value"], ref_lat["interval"])
        if v is not None:
            rows.append({"number": "latency_vs_dense 1x128", "value": lat["value"],
                         "interval": lat["interval"], "reference": ref_lat["value"],
                         "reference_interval": ref_lat["interval"], "verdict": v})
    return rows


def check(folder: Path, references: Path | list[Path]) -> dict[str, Any]:
    """The verdicts for every ok run of ``folder`` against the runs of ``references``
    (module docstring): per run, the newest reference run of each protocol (full, lean)."""
    references = [references] if isinstance(references, Path) else list(references)
    runs = [r for r in read_reports(folder) if r.get("status") == "ok" and not r.get("harness")]
    if not runs:
        raise UserError(f"{folder}: no ok reports to check; run the sweep first")
    refs: dict[tuple, dict[str, dict[str, Any]]] = {}
    for ref_folder in references:
        for r in sorted(read_reports(ref_folder), key=lambda r: r.get("created", "")):
            proto = protocol.of_report(r)
            if r.get("status") == "ok" and proto != "quick" and not r.get("harness"):
                refs.setdefault(_identity(r), {})[proto] = r  # the newest wins
    out = []
    for run in sorted(runs, key=lambda r: (r["model"]["name"], r.get("label", ""))):
        found = refs.get(_identity(run), {})
        against = []
        for proto in ("full", "lean"):
            ref = found.get(proto)
            if ref is not None:
                against.append({"protocol": proto, "report": ref.get("_path"),
                                "numbers": compare_run(run, ref)})
        out.append({"model": run["model"]["name"], "run": run.get("label", ""),
                    "protocol": protocol.of_report(run), "report": run.get("_path"),
                    "against": against})
    summary: dict[str, Any] = {"runs": len(out),
                               "with_reference": sum(1 for e in out if e["against"])}
    for proto in ("full", "lean"):
        numbers = [n for e in out for a in e["against"] if a["protocol"] == proto
                   for n in a["numbers"]]
        summary[proto] = {"runs": sum(1 for e in out for a in e["against"]
                                      if a["protocol"] == proto),
                          "numbers": len(numbers),
                          AGREES: sum(1 for n in numbers if n["verdict"] == AGREES),
                          DIFFERS: sum(1 for n in numbers if n["verdict"] == DIFFERS),
                          CHANGED: sum(1 for n in numbers if n["verdict"] == CHANGED)}
    return {
        "folder": str(folder), "references": [str(p) for p in references],
        "rule": "intervals overlap (95%); a reference without an interval: its value inside "
                "this run's interval",
        "runs": out,
        "summary": summary,
    }


def _fmt(v: float, iv: tuple[float, float] | None) -> str:
    return f"{v:.4g}" + (f" [{iv[0]:.4g}, {iv[1]:.4g}]" if iv else "")


def render(result: dict[str, Any], console: Console) -> None:
    table = Table(title=f"{result['folder']} against {', '.join(result['references'])}")
    for col in ("model", "run", "number", "this machine", "reference", "verdict"):
        table.add_column(col)
    for e in result["runs"]:
        if not e["against"]:
            table.add_row(e["model"], e["run"], "–", "", "", "[yellow]no reference run[/]")
            continue
        for a in e["against"]:
            for n in a["numbers"]:
                style = {AGREES: "green", DIFFERS: "red"}.get(n["verdict"], "yellow")
                table.add_row(e["model"], e["run"], n["number"], _fmt(n["value"], n["interval"]),
                              f"{_fmt(n['reference'], n['reference_interval'])} ({a['protocol']})",
                              f"[{style}]{n['verdict']}[/]")
    console.print(table)
    s = result["summary"]
    console.print(f"{s['with_reference']} of {s['runs']} runs have a reference run.")
    for proto in ("full", "lean"):
        p = s[proto]
        if p["runs"]:
            console.print(f"Against the {proto}-protocol reference ({p['runs']} runs): of "
                          f"{p['numbers']} shared numbers, {p[AGREES]} agree with the reference "
                          f"within their 95% intervals, {p[DIFFERS]} differ and {p[CHANGED]} "
                          "were measured differently (the benchmark changed since).")
    console.print(f"Rule: {result['rule']}.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eval.refcheck", description=__doc__.split(
        "\n\n")[0].strip())
    parser.add_argument("folder", type=Path, help="the reports folder to check")
    parser.add_argument("--reference", type=Path, action="append", default=None,
                        help="a folder of committed reference reports (repeatable; default: "
                        "reports/ and, where it exists, reports/lean/)")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON verdicts (default: refcheck.json beside the folder)")
    args = parser.parse_args(argv)
    references = args.reference or [p for p in (Path("reports"), Path("reports/lean"))
                                    if p.is_dir()]
    for p in (args.folder, *references):
        if not p.is_dir():
            raise UserError(f"{p} is not a folder of reports")
    if not references:
        raise UserError("no reference folder: give --reference (e.g. reports/)")
    result = check(args.folder, references)
    atomic_write_json(args.out or args.folder.resolve().parent / "refcheck.json", result)
    console = Console()
    render(result, console if console.is_terminal else Console(width=170))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main))
