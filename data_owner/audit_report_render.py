"""An :class:`AuditReport` as one self-contained HTML page, a JSON document, or a CSV table.

Every format states the verifier's verdict before any number: the HTML page opens with a coloured
banner, the JSON document's first key is ``verification``, and the CSV file's first lines are
``#`` comments (the verdict, each problem, each crash gap) before its header row. A report of a
log that failed verification is still written, so the reviewer can see what the damaged log says.

Identities come from certificates another organisation asked for, so every string taken from the
log is treated as hostile: HTML-escaped (and the page forbids scripts with a Content Security
Policy, in case an escape is ever missed), guarded against spreadsheet formulas in CSV, and kept
from matplotlib's mathtext in plot legends. matplotlib is imported only to draw the HTML plots,
so JSON and CSV need nothing beyond the core install.
"""

from __future__ import annotations

import base64
import csv
import dataclasses
import datetime
import html
import io
import json
from collections.abc import Iterable
from importlib.util import find_spec
from pathlib import Path
from typing import Any, Final, Literal, get_args

from fair4free.common.errors import ErrorCode, Fair4FreeError
from fair4free.common.secure_files import PRIVATE_MODE, refuse_existing, write_new_files
from fair4free.data_owner.audit_report import (
    TOTALS,
    AuditReport,
    IdentityActivity,
    MethodActivity,
)
from fair4free.data_owner.audit_timeline import TimeBucket, iso_utc

ReportFormat = Literal["html", "json", "csv"]
FORMATS: Final[tuple[ReportFormat, ...]] = get_args(ReportFormat)
REPORT_VERSION: Final = 1

NEEDS_MATPLOTLIB: Final = (
    "--format html draws its plots with matplotlib, which is not installed: "
    "pip install 'fair4free[report]', or choose --format json or csv"
)
REPORT_EXISTS: Final = "an audit report is never overwritten"
NO_FOLDER: Final = "cannot write {out}: folder {folder} does not exist"
NO_IDENTITY: Final = "(no identity)"
MAX_SERIES: Final = 8
"""Identities drawn separately in a plot; the others are summed as one series."""
OTHERS: Final = "(all others)"
FORMULA_START: Final = ("=", "+", "-", "@", "\t", "\r")
"""Cell openings a spreadsheet runs as a formula (OWASP "CSV injection")."""

CSV_COLUMNS: Final = (
    "identity", "method", "calls", "completed", "denied", "failed", "unfinished",
    "rows_requested", "rows_returned", "budget_used", "budget_remaining", "first_ts", "last_ts",
    "denials", "failures",
)  # fmt: skip
CSP: Final = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
STYLE: Final = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:78em;padding:0 1em;color:#222}
.banner{padding:1em 1.2em;border-radius:6px;font-size:1.1em;margin-bottom:1.5em}
.verified{background:#e3f4e1;border:2px solid #2e7d32}
.unsigned{background:#fff4d6;border:3px solid #b26a00}
.failed{background:#fde2e1;border:4px solid #c62828;color:#7f0000}
table{border-collapse:collapse;margin:.5em 0 1.5em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left;vertical-align:top}
td.n{text-align:right;font-variant-numeric:tabular-nums}
th{background:#f3f3f3}
img{max-width:100%}
.note{color:#555;font-size:.92em}
"""


def report_format(out: Path) -> ReportFormat:
    """The format an ``--out`` name asks for when none is given: ``.json``, ``.csv``, else HTML."""
    suffix = out.suffix.lower().lstrip(".")
    return "json" if suffix == "json" else "csv" if suffix == "csv" else "html"


def check_output(out: Path, fmt: ReportFormat) -> None:
    """Refuse up front what would fail after the slow work: an existing file, no matplotlib.

    :raises Fair4FreeError: OUTPUT_UNWRITABLE if ``out`` exists or its folder does not;
        CONFIG_INVALID if HTML is asked for without matplotlib.
    """
    refuse_existing([out], REPORT_EXISTS)
    if not out.parent.is_dir():
        raise Fair4FreeError(
            ErrorCode.OUTPUT_UNWRITABLE, NO_FOLDER.format(out=out, folder=out.parent)
        )
    if fmt == "html" and find_spec("matplotlib") is None:
        raise Fair4FreeError(ErrorCode.CONFIG_INVALID, NEEDS_MATPLOTLIB)


def write_report(report: AuditReport, out: Path, fmt: ReportFormat) -> None:
    """Render and create ``out`` exclusively (mode 0600, like the log it summarises).

    :raises Fair4FreeError: OUTPUT_UNWRITABLE if ``out`` exists or cannot be written.
    """
    check_output(out, fmt)
    renderers = {"html": render_html, "json": render_json, "csv": render_csv}
    # A record may hold any JSON string, lone surrogates included: they cannot be UTF-8, so they
    # are written as the JSON escape the record itself used.
    data = renderers[fmt](report).encode("utf-8", errors="backslashreplace")
    write_new_files([(out, data, PRIVATE_MODE)], reason=REPORT_EXISTS)


def _identity(identity: str | None) -> str:
    return NO_IDENTITY if identity is None else identity


def _causes(method: MethodActivity, outcome: str) -> str:
    return "; ".join(f"{c.cause}={c.count}" for c in method.causes if c.outcome == outcome)


# JSON


def render_json(report: AuditReport) -> str:
    """The report as JSON; ``verification`` comes first, identities ``null`` where unknown."""
    verdict = report.verification
    verification = {
        "status": verdict.status,
        "ok": verdict.ok,
        "headline": verdict.headline,
        **dataclasses.asdict(verdict),
    }
    document: dict[str, Any] = {
        "verification": verification,
        "report": {
            "format": "fair4free-audit-report",
            "version": REPORT_VERSION,
            "generated": report.generated,
            "directory": report.directory,
        },
        "log": {
            "first_ts": report.first_ts,
            "last_ts": report.last_ts,
            "records": report.records,
            "events": report.events,
            "skipped": report.skipped,
        },
        "identities": [
            {
                "identity": identity.identity,
                "cert_serials": list(identity.cert_serials),
                "totals": {name: identity.total(name) for name in TOTALS},
                "methods": [dataclasses.asdict(method) for method in identity.methods],
            }
            for identity in report.identities
        ],
        "timeline": {
            "bucket_seconds": report.bucket_seconds,
            "buckets": [
                {**dataclasses.asdict(bucket), "start": iso_utc(bucket.start)}
                for bucket in report.timeline
            ],
        },
        "recoveries": [dataclasses.asdict(recovery) for recovery in report.recoveries],
    }
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


# CSV


def _cell(value: object) -> object:
    """A value safe to open in a spreadsheet: text that would start a formula gets a quote."""
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return "" if value is None else value


def _comment(text: str) -> str:
    return "# " + " ".join(text.split()) + "\n"


def render_csv(report: AuditReport) -> str:
    """One row per identity and method, after ``#`` lines stating the verdict and the log."""
    out = io.StringIO()
    verification = report.verification
    out.write(_comment(f"fair4free audit report of {report.directory}, {report.generated}"))
    out.write(_comment(f"verification: {verification.status}: {verification.headline}"))
    for problem in verification.problems:
        out.write(_comment(f"problem: {problem}"))
    out.write(_comment(f"log: {report.records} records from {report.first_ts} to {report.last_ts}"))
    for gap in report.recoveries:
        out.write(_comment(f"crash gap: {gap.previous_ts} to {gap.ts} (seq {gap.seq})"))
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for identity in report.identities:
        for method in identity.methods:
            values = dataclasses.asdict(method)
            values.update(
                identity=_identity(method.identity),
                denials=_causes(method, "denied"),
                failures=_causes(method, "failed"),
            )
            writer.writerow([_cell(values[column]) for column in CSV_COLUMNS])
    return out.getvalue()


# HTML


def _e(value: object) -> str:
    return html.escape("—" if value is None else str(value), quote=True)


def _table(headers: Iterable[str], rows: Iterable[Iterable[object]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    head = f"<thead><tr>{head}</tr></thead>" if head else ""
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="n">{value:,}</td>' if isinstance(value, int) else f"<td>{_e(value)}</td>"
            for value in row
        )
        + "</tr>\n"
        for row in rows
    )
    return f"<table>{head}<tbody>\n{body}</tbody></table>\n"


def _banner(report: AuditReport) -> str:
    verification = report.verification
    problems = "".join(f"<li>{_e(problem)}</li>" for problem in verification.problems)
    checked = (
        f"{verification.records:,} records in {verification.segments} segment(s), "
        f"{verification.checkpoints:,} signed checkpoints, "
        f"{verification.consumer_checkpoints} checkpoint(s) a consumer kept"
    )
    return (
        f'<div class="banner {verification.status}" role="alert"><strong>'
        f"{_e(verification.headline)}</strong><br>{_e(checked)}"
        + (f"<ul>{problems}</ul>" if problems else "")
        + "</div>\n"
    )


def _facts(report: AuditReport) -> str:
    rows: list[tuple[str, object]] = [
        ("log directory", report.directory),
        ("report generated (UTC)", report.generated),
        ("first record (UTC)", report.first_ts),
        ("last record (UTC)", report.last_ts),
        ("records read", report.records),
        ("identities", len(report.identities)),
        ("calls (terminal records)", report.total("calls")),
        ("calls still unfinished at the end of the log", report.total("unfinished")),
        ("crash recoveries", len(report.recoveries)),
        ("records the report could not interpret", report.skipped),
    ]
    return _table((), rows)


def _identity_rows(identity: IdentityActivity) -> list[object]:
    totals: list[object] = [identity.total(name) for name in TOTALS]
    return [_identity(identity.identity), *totals, ", ".join(identity.cert_serials) or None]


def _method_rows(report: AuditReport) -> Iterable[list[object]]:
    for identity in report.identities:
        for m in identity.methods:
            yield [
                _identity(m.identity), m.method, m.calls, m.completed, m.denied, m.failed,
                m.unfinished, m.rows_requested, m.rows_returned, m.budget_used,
                m.budget_remaining, m.first_ts, m.last_ts,
            ]  # fmt: skip


def _cause_rows(report: AuditReport) -> Iterable[list[object]]:
    for identity in report.identities:
        for method in identity.methods:
            for cause in method.causes:
                yield [
                    _identity(method.identity), method.method, cause.outcome, cause.cause,
                    cause.count, cause.latest_reason,
                ]  # fmt: skip


def _recovery_rows(report: AuditReport) -> Iterable[list[object]]:
    for gap in report.recoveries:
        yield [
            gap.seq, gap.previous_ts, gap.ts, _downtime(gap.previous_ts, gap.ts), gap.segment,
            gap.truncated_bytes, gap.open_requests,
        ]  # fmt: skip


def _downtime(before: str | None, after: str | None) -> str | None:
    try:
        start = datetime.datetime.fromisoformat(str(before))
        end = datetime.datetime.fromisoformat(str(after))
    except ValueError:
        return None
    return str(end - start)


def _image(title: str, png: bytes) -> str:
    encoded = base64.b64encode(png).decode("ascii")
    return f'<img alt="{_e(title)}" src="data:image/png;base64,{encoded}">\n'


def render_html(report: AuditReport) -> str:
    """One self-contained page: banner, facts, tables, and plots embedded as PNG."""
    sections = [
        _banner(report),
        "<h1>Audit log report</h1>\n",
        _facts(report),
        "<h2>Activity by identity</h2>\n",
        _table(
            ("identity", *(name.replace("_", " ") for name in TOTALS), "cert serials"),
            (_identity_rows(identity) for identity in report.identities),
        ),
        "<h2>By identity and method</h2>\n",
        '<p class="note">A call is a terminal record (completed, denied or failed). Budgets are '
        "the latest the records hold; — where no record held one.</p>\n",
        _table(
            (
                "identity",
                "method",
                "calls",
                "completed",
                "denied",
                "failed",
                "unfinished",
                "rows requested",
                "rows returned",
                "budget used",
                "budget left",
                "first call",
                "last call",
            ),
            _method_rows(report),
        ),  # fmt: skip
        "<h2>Denials and failures by cause</h2>\n",
        '<p class="note">The cause is the gRPC status sent, or the reason where none was sent '
        "(crash, shutdown); the reason shown is the latest of its kind.</p>\n",
        _table(
            ("identity", "method", "outcome", "cause", "calls", "latest reason"),
            _cause_rows(report),
        ),
    ]
    if report.timeline:
        width = f"{report.bucket_seconds:,} s"
        sections += [
            f"<h2>Activity over time</h2>\n<p class=note>Per {_e(width)} bucket (UTC).</p>\n",
            _image("calls and rows returned over time", _plot(report, _ACTIVITY)),
            "<h2>Denials and failures over time</h2>\n",
            _image("denials and failures over time", _plot(report, _REFUSALS)),
        ]
    sections += [
        "<h2>Crash gaps and recoveries</h2>\n",
        _table(
            (
                "seq",
                "last record before",
                "recovered at",
                "gap",
                "segment",
                "torn bytes cut",
                "requests failed (crash)",
            ),
            _recovery_rows(report),
        )  # fmt: skip
        if report.recoveries
        else "<p>None: the daemon never restarted after a crash.</p>\n",
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
        f"<title>Audit report: {_e(report.verification.status)}</title>\n"
        f"<style>{STYLE}</style></head>\n<body>\n" + "".join(sections) + "</body></html>\n"
    )


# Plots


_ACTIVITY: Final = (("calls", "calls"), ("rows_returned", "rows returned"))
_REFUSALS: Final = (("denied", "denials"), ("failed", "failures"))


def _series(report: AuditReport) -> list[tuple[str, list[TimeBucket]]]:
    """The timeline split into the :data:`MAX_SERIES` busiest identities and the rest."""
    ranked = sorted(report.identities, key=lambda identity: -identity.total("calls"))
    keep = MAX_SERIES + 1 if len(ranked) == MAX_SERIES + 1 else MAX_SERIES
    shown = {identity.identity for identity in ranked[:keep]}
    grouped: dict[str, list[TimeBucket]] = {
        _identity(identity.identity): [] for identity in ranked[:keep]
    }
    for bucket in report.timeline:
        name = _identity(bucket.identity) if bucket.identity in shown else OTHERS
        grouped.setdefault(name, []).append(bucket)
    return list(grouped.items())


def _label(name: str) -> str:
    """A legend entry matplotlib draws as text: no mathtext, not hidden by a leading ``_``."""
    text = name.encode("utf-8", errors="backslashreplace").decode("utf-8").replace("$", r"\$")
    text = text if len(text) <= 48 else text[:47] + "…"
    return " " + text if text.startswith("_") else text


def _plot(report: AuditReport, panels: tuple[tuple[str, str], ...]) -> bytes:
    """Stacked bars per time bucket and identity, one panel per counter, as a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    width = report.bucket_seconds
    low = min(bucket.start for bucket in report.timeline)
    starts = range(low, max(bucket.start for bucket in report.timeline) + width, width)
    edges = [  # each bucket's start, then the last one's end: steps, one polygon per series
        datetime.datetime.fromtimestamp(start, datetime.UTC).replace(tzinfo=None)
        for start in (*starts, starts[-1] + width)
    ]
    figure = Figure(figsize=(11, 3.2 * len(panels)), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes_list = figure.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    groups = _series(report)
    for axes, (counter, title) in zip(axes_list, panels, strict=True):
        bottom = [0] * len(edges)
        for name, buckets in groups:
            top = list(bottom)
            for bucket in buckets:
                top[(bucket.start - low) // width] += int(getattr(bucket, counter))
            top[-1] = top[-2]  # the last bucket's step runs to its end
            axes.fill_between(edges, bottom, top, step="post", label=_label(name), linewidth=0)
            bottom = top
        axes.set_ylabel(f"{title} per bucket")
        axes.set_title(f"{title} per {width:,} s (UTC), by identity", fontsize=10)
        axes.grid(alpha=0.3)
        axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    axes_list[0].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    figure.autofmt_xdate()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
