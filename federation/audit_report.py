"""The HTML report of ``cohort audit RUN_DIR --report FILE.html``: one self-contained page.

:func:`render_report` turns an :class:`~cohort.federation.audit.AuditReport` into one HTML
file that needs nothing else to be read: no network, no script, no external font or style
sheet; the CSS is inline and every chart is an inline SVG drawn here. The page shows, in
order:

1. the verdict (PASS or FAIL with the number of violations) on a green or red banner, and
   a plain statement when the study was seeded (unfit for real patient data);
2. the study (id, manifest epsilon, delta, rounds, the PRV/PLD tolerance) and one row per
   hospital as ``cohort audit`` prints it;
3. the study's accuracy over rounds and the committee's attestation of each round (finalized,
   clients included, declined or failed, faulty members and decryptors), from the run's
   ``summary.json`` when it has one (a ``cohort simulate`` run does; a bare directory of
   published ledgers need not);
4. per hospital: its epsilon over the ledger's entries against its cap (three lines: the
   recorded epsilon, Opacus's PRV accountant, the study's declared one; dp-accounting's PLD
   and RDP recomputed here from the recorded events, per entry, by the audit's own
   functions), the DP parameters of every entry, and every failed check of that hospital;
5. with ``client_dp`` in the manifest, between 2 and 3: the client-level DP section, per
   round the number of owners in the released sum |S| (the summary's, the chain's when
   ``cohort audit`` read the contract, the one the auditor composed), the aggregate's
   noise multiplier at that |S| and the cumulative client-level epsilon at the manifest's
   delta, re-derived by :mod:`cohort.federation.audit_client_dp` (dp-accounting's PLD) next
   to what ``summary.json`` claims, a chart of both, and every failed client-level check.

Every string that comes from the run's files (hospital ids, violation texts, member ids,
reasons) is HTML-escaped: a file cannot inject markup into the page.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any

from cohort.clients.privacy import DpEvent, LedgerEntry, read_entries
from cohort.errors import CohortError
from cohort.federation.audit import (
    TOLERANCE_ABS,
    TOLERANCE_REL,
    AuditReport,
    HospitalAudit,
    pld_epsilon,
    rdp_epsilon,
)

SUMMARY = "summary.json"

#: Banner backgrounds (the screenshot test looks for them at the top of the page).
PASS_COLOUR = "#008000"  # noqa: S105 (a colour)
FAIL_COLOUR = "#c80000"
#: Chart strokes, one per line (Okabe-Ito colours; the screenshot test looks for them).
PRV_COLOUR = "#0072b2"
PLD_COLOUR = "#e69f00"
RDP_COLOUR = "#cc79a7"
CAP_COLOUR = "#d55e00"
ACCURACY_COLOUR = "#009e73"
#: The client-level chart: dp-accounting's re-derived epsilon and the summary's claim.
CLIENT_PLD_COLOUR = "#56b4e9"
CLIENT_CLAIM_COLOUR = "#000000"

CSS = """
body { font-family: sans-serif; margin: 0; color: #1a1a1a; background: #fff; }
main { max-width: 1160px; margin: 0 auto; padding: 0 16px 32px; }
.verdict { color: #fff; padding: 20px 24px; margin: 0 0 16px; }
.verdict h1 { margin: 0; font-size: 40px; letter-spacing: 1px; }
.verdict p { margin: 6px 0 0; font-size: 16px; }
.seeded { background: #fff3cd; border: 1px solid #c9a227; padding: 8px 12px; margin: 8px 0; }
h2 { font-size: 20px; margin: 20px 0 8px; border-bottom: 1px solid #ccc; }
h3 { font-size: 17px; margin: 0 0 6px; }
table { border-collapse: collapse; font-size: 13px; margin: 4px 0 8px; }
th, td { border: 1px solid #ddd; padding: 2px 6px; text-align: right; }
th { background: #f2f2f2; }
td.l, th.l { text-align: left; }
.ok { color: #006400; font-weight: bold; }
.bad { color: #b00000; font-weight: bold; }
.hospital { border: 1px solid #ccc; padding: 10px 12px; margin: 12px 0; }
.hospital.failed { border: 2px solid #b00000; }
.row { display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start; }
ul.violations { color: #b00000; font-size: 13px; margin: 4px 0; padding-left: 20px; }
ul.violations li { font-family: monospace; word-break: break-word; }
.note { color: #555; font-size: 12px; }
svg text { font-family: sans-serif; font-size: 11px; fill: #333; }
"""


def _e(value: object) -> str:
    """``value`` as text, HTML-escaped (quotes too: safe in attributes and SVG)."""
    return escape(str(value), quote=True)


def _num(value: float | None, fmt: str = ".4f") -> str:
    if value is None:
        return "-"
    if not math.isfinite(value):
        return "inf" if value > 0 else "nan"
    return format(value, fmt)


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class EntryPoint:
    """One ledger entry as the report shows it: its event and the three accountants'
    cumulative epsilon up to and including it (PRV as recorded; PLD, RDP recomputed)."""

    event: DpEvent
    own_study: bool
    seeded: bool
    cap: float
    prv: float
    pld: float
    rdp: float


def entry_points(audit: HospitalAudit, *, study_id: str, delta: float) -> list[EntryPoint]:
    """Per-entry epsilons of ``audit``'s ledger (the audit keeps only the last ones).

    PLD and RDP come from :func:`~cohort.federation.audit.pld_epsilon` and
    :func:`~cohort.federation.audit.rdp_epsilon`, the audit's own (cached) computations.
    A ledger that can no longer be read gives no points.
    """
    try:
        entries: Sequence[LedgerEntry] = read_entries(Path(audit.ledger))
    except (CohortError, OSError):
        return []
    events: list[DpEvent] = []
    points = []
    for entry in entries:
        events.append(entry.event)
        points.append(
            EntryPoint(
                event=entry.event,
                own_study=entry.study_id == study_id,
                seeded=entry.seeded,
                cap=entry.epsilon_cap,
                prv=entry.epsilon_after,
                pld=pld_epsilon(events, delta=delta),
                rdp=rdp_epsilon(events, delta=delta),
            )
        )
    return points


def load_summary(run_dir: Path) -> dict[str, Any] | None:
    """The run's ``summary.json`` as a dict, or None when absent or unreadable."""
    try:
        data = json.loads((run_dir / SUMMARY).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _summary_rounds(summary: dict[str, Any] | None) -> list[dict[str, Any]]:
    rounds = summary.get("rounds") if summary else None
    if not isinstance(rounds, list):
        return []
    return [r for r in rounds if isinstance(r, dict) and isinstance(r.get("round"), int)]


# --------------------------------------------------------------------------- SVG


def _nice_ticks(top: float, count: int = 5) -> list[float]:
    if top <= 0 or not math.isfinite(top):
        return [0.0, 1.0]
    raw = top / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    return [i * step for i in range(math.ceil(top / step) + 1)]


@dataclass(frozen=True)
class Series:
    label: str
    colour: str
    values: Sequence[float]
    width: float = 2.5
    dashed: bool = False
    markers: bool = True


def line_chart(
    series: Sequence[Series],
    *,
    x_labels: Sequence[str],
    title: str,
    y_label: str,
    width: int = 460,
    height: int = 250,
    y_max: float | None = None,
) -> str:
    """An inline SVG line chart: one polyline per series over the same x positions."""
    left, right, top, bottom = 46, 118, 24, 40
    plot_w, plot_h = width - left - right, height - top - bottom
    n = max((len(s.values) for s in series), default=0)
    finite = [v for s in series for v in s.values if math.isfinite(v)]
    peak = y_max if y_max is not None else max(finite, default=1.0) * 1.08
    ticks = _nice_ticks(peak)
    y_top = ticks[-1] or 1.0

    def x(i: int) -> float:
        return left + (plot_w * (i + 0.5) / n if n else 0.0)

    def y(v: float) -> float:
        v = min(max(v, 0.0), y_top) if math.isfinite(v) else y_top
        return top + plot_h * (1 - v / y_top)

    parts = [
        f'<svg width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{_e(title)}">',
        f"<title>{_e(title)}</title>",
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="#fff" '
        'stroke="#999"/>',
        f'<text x="{left}" y="{top - 8}" style="font-size:12px;font-weight:bold">'
        f"{_e(title)}</text>",
    ]
    for t in ticks:
        ty = y(t)
        parts.append(
            f'<line x1="{left}" y1="{ty:.1f}" x2="{left + plot_w}" y2="{ty:.1f}" stroke="#e5e5e5"/>'
        )
        parts.append(
            f'<text x="{left - 6}" y="{ty + 4:.1f}" text-anchor="end">{_e(f"{t:g}")}</text>'
        )
    for i, label in enumerate(x_labels[:n]):
        parts.append(
            f'<text x="{x(i):.1f}" y="{top + plot_h + 14}" text-anchor="middle">{_e(label)}</text>'
        )
    parts.append(
        f'<text x="{left + plot_w / 2:.1f}" y="{height - 6}" text-anchor="middle">round</text>'
    )
    parts.append(
        f'<text x="14" y="{top + plot_h / 2:.1f}" text-anchor="middle" '
        f'transform="rotate(-90 14 {top + plot_h / 2:.1f})">{_e(y_label)}</text>'
    )
    for s in series:
        if not s.values:
            continue
        dash = ' stroke-dasharray="8 5"' if s.dashed else ""
        points = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(s.values))
        if len(s.values) == 1 or (s.dashed and len(set(s.values)) == 1):
            # A single point (or a constant cap): a horizontal line across the plot.
            yy = y(s.values[0])
            parts.append(
                f'<line x1="{left}" y1="{yy:.1f}" x2="{left + plot_w}" y2="{yy:.1f}" '
                f'stroke="{s.colour}" stroke-width="{s.width}"{dash} data-series="{_e(s.label)}"/>'
            )
        else:
            parts.append(
                f'<polyline points="{points}" fill="none" stroke="{s.colour}" '
                f'stroke-width="{s.width}" stroke-linejoin="round"{dash} '
                f'data-series="{_e(s.label)}"/>'
            )
        if s.markers:
            for i, v in enumerate(s.values):
                parts.append(f'<circle cx="{x(i):.1f}" cy="{y(v):.1f}" r="3.5" fill="{s.colour}"/>')
    for k, s in enumerate(series):
        ly = top + 10 + 18 * k
        lx = left + plot_w + 10
        dash = ' stroke-dasharray="6 3"' if s.dashed else ""
        parts.append(
            f'<line x1="{lx}" y1="{ly}" x2="{lx + 18}" y2="{ly}" stroke="{s.colour}" '
            f'stroke-width="2"{dash}/>'
        )
        parts.append(f'<text x="{lx + 24}" y="{ly + 4}">{_e(s.label)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def epsilon_chart(hospital: str, points: Sequence[EntryPoint]) -> str:
    """Epsilon over the ledger's entries: PRV as recorded, PLD, RDP, and the cap."""
    labels = [f"{p.event.round}" if p.own_study else f"{p.event.round}*" for p in points]
    series = [
        # PRV underneath and wider: PLD lies within ~0.01 of it and would hide it otherwise.
        Series("PRV (recorded)", PRV_COLOUR, [p.prv for p in points], width=7, markers=False),
        Series("PLD", PLD_COLOUR, [p.pld for p in points]),
        Series("RDP", RDP_COLOUR, [p.rdp for p in points]),
        Series("cap", CAP_COLOUR, [p.cap for p in points], width=2, dashed=True, markers=False),
    ]
    finite = [v for p in points for v in (p.prv, p.pld, p.rdp, p.cap) if math.isfinite(v)]
    return line_chart(
        series,
        x_labels=labels,
        title=f"{hospital}: epsilon spent vs cap",
        y_label="epsilon",
        y_max=max(finite, default=1.0) * 1.08,
    )


def accuracy_chart(rounds: Sequence[dict[str, Any]]) -> str:
    values = [float(r.get("accuracy", math.nan)) for r in rounds]
    return line_chart(
        [Series("accuracy", ACCURACY_COLOUR, values)],
        x_labels=[str(r["round"]) for r in rounds],
        title="study accuracy over rounds",
        y_label="accuracy",
        y_max=1.0,
    )


# --------------------------------------------------------------------------- HTML


def _verdict(report: AuditReport) -> str:
    n = len(report.violations)
    if report.ok:
        colour, head = PASS_COLOUR, "PASS"
        line = (
            f"every check passed: {len(report.hospitals)} ledger(s), hash chains intact, "
            "every epsilon recomputed by PRV, PLD and RDP, within caps and the manifest's terms"
        )
    else:
        colour, head = FAIL_COLOUR, f"FAIL: {n} violation{'s' if n != 1 else ''}"
        failed = sum(not h.ok for h in report.hospitals)
        line = f"{failed} of {len(report.hospitals)} hospital(s) failed at least one check"
        client = len((report.client_level or {}).get("violations", []))
        if client:
            line += f"; {client} client-level DP check(s) failed (see Client-level DP)"
    html = [
        f'<section class="verdict" id="verdict" style="background:{colour}">',
        f"<h1>{_e(head)}</h1><p>{_e(line)}</p></section>",
    ]
    for h in report.hospitals:
        if h.seeded_entries:
            html.append(
                f'<p class="seeded"><b>seeded:</b> {_e(h.hospital)}: {h.seeded_entries} of '
                f"{len(h.rounds)} rounds of this study used seeded DP noise: reproducible by "
                "whoever knows the seed, so this study is unfit for real patient data</p>"
            )
    return "".join(html)


def _empirical(report: AuditReport) -> str:
    """The one-run empirical audit, next to the theoretical epsilon (when it ran)."""
    found = report.empirical
    if found is None:
        return ""
    lower, theory = float(found["epsilon_lower"]), float(found["epsilon_theoretical"])
    confidence = _num(100 * (1 - float(found["beta"])), "g")
    delta = _e(f"{float(found['delta']):g}")
    verdict = (
        '<span class="ok">not above the theoretical epsilon</span>'
        if found["ok"]
        else '<span class="bad">ABOVE the theoretical epsilon: a DP bug</span>'
    )
    return (
        "<h2>Empirical audit</h2>"
        f"<p>one-run membership inference (Steinke, Nasr and Jagielski 2023) on "
        f"{_e(found.get('hospital', ''))}: {int(found['correct'])}/{int(found['guesses'])} "
        f"correct guesses over {int(found['canaries'])} canaries.</p>"
        '<table class="hospitals"><tr><th class="l">bound</th><th>epsilon</th></tr>'
        f'<tr><td class="l">empirical lower bound ({confidence}% confidence)</td>'
        f"<td>{_num(lower)}</td></tr>"
        f'<tr><td class="l">theoretical (PRV, delta {delta})</td>'
        f"<td>{_num(theory)}</td></tr></table><p>{verdict}; a bound near 0 means no leak "
        "was found with this many canaries, not that there is none.</p>"
    )


def _study(report: AuditReport) -> str:
    rows = []
    for h in report.hospitals:
        verdict = '<span class="ok">ok</span>' if h.ok else '<span class="bad">FAIL</span>'
        rows.append(
            f'<tr><td class="l">{_e(h.hospital)}</td><td>{len(h.rounds)}/{report.rounds}</td>'
            f"<td>{_num(h.epsilon_recorded)}</td><td>{_num(h.epsilon_prv)}</td>"
            f"<td>{_num(h.epsilon_pld)}</td><td>{_num(h.epsilon_rdp)}</td>"
            f"<td>{_num(h.cap, 'g')}</td><td>{h.seeded_entries}</td>"
            f"<td>{len(h.violations)}</td><td class='l'>{verdict}</td></tr>"
        )
    return (
        "<h2>Study</h2>"
        f"<p>study <code>{_e(report.study_id)}</code>; run directory <code>"
        f"{_e(report.run_dir)}</code></p>"
        f"<p>the manifest allows epsilon {_e(f'{report.study_epsilon:g}')} per hospital at "
        f"delta {_e(f'{report.delta:g}')} over {report.rounds} rounds. Epsilon below is every "
        "study on each dataset composed (what the hospital's cap bounds). PRV (Opacus, the "
        f"declared accountant) and dp-accounting's PLD must agree within {TOLERANCE_ABS:g} + "
        f"{TOLERANCE_REL:.1%} of epsilon; RDP is a looser upper bound.</p>"
        + (
            ""
            if report.chain_contract is None
            else f"<p>ledger heads compared with study contract <code>"
            f"{_e(report.chain_contract)}</code>.</p>"
        )
        + '<table class="hospitals"><tr><th class="l">hospital</th><th>rounds</th>'
        "<th>recorded</th><th>PRV</th><th>PLD</th><th>RDP</th><th>cap</th><th>seeded</th>"
        f'<th>violations</th><th class="l">verdict</th></tr>{"".join(rows)}</table>'
    )


def client_level_chart(rounds: Sequence[dict[str, Any]]) -> str:
    """Client-level epsilon over rounds: re-derived (PLD) under the summary's claim."""

    def values(key: str) -> list[float]:
        return [math.nan if r.get(key) is None else float(r[key]) for r in rounds]

    rederived, claimed = values("epsilon_pld"), values("epsilon_claimed")
    finite = [v for v in rederived + claimed if math.isfinite(v)]
    return line_chart(
        [
            Series("re-derived (PLD)", CLIENT_PLD_COLOUR, rederived, width=7, markers=False),
            Series("summary claims", CLIENT_CLAIM_COLOUR, claimed, width=2, dashed=True),
        ],
        x_labels=[str(r.get("round")) for r in rounds],
        title="client-level epsilon over rounds",
        y_label="epsilon",
        y_max=max(finite, default=1.0) * 1.08,
    )


OK_CELL = '<span class="ok">ok</span>'
FAIL_CELL = '<span class="bad">FAIL</span>'


def _client_row(r: dict[str, Any], failed: Sequence[str]) -> str:
    bad = any(v.startswith(f"study round {r.get('round')}:") for v in failed)
    chain_n = r.get("clients_chain")
    return (
        f"<tr><td>{_e(r.get('round'))}</td><td>{_e(r.get('clients_claimed'))}</td>"
        f"<td>{'-' if chain_n is None else _e(chain_n)}</td><td>{_e(r.get('clients'))}</td>"
        f"<td>{_num(r.get('noise_multiplier'), '.6g')}</td>"
        f"<td>{_num(r.get('noise_multiplier_claimed'), '.6g')}</td>"
        f"<td>{_num(r.get('epsilon_pld'))}</td><td>{_num(r.get('epsilon_claimed'))}</td>"
        f'<td class="l">{FAIL_CELL if bad else OK_CELL}</td></tr>'
    )


def _client_level(level: dict[str, Any] | None) -> str:
    """The client-level DP section (empty without ``client_dp`` in the manifest)."""
    if level is None:
        return ""
    rounds = [r for r in level.get("rounds", []) if isinstance(r, dict)]
    failed = [str(v) for v in level.get("violations", [])]
    if failed:
        items = "".join(f"<li>{_e(v)}</li>" for v in failed)
        checks = (
            f'<p class="bad">{len(failed)} failed client-level check(s):</p>'
            f'<ul class="violations">{items}</ul>'
        )
    else:
        checks = '<p class="ok">no failed client-level check</p>'
    source = (
        "|S| checked against the contributors of each round the study contract finalized"
        if level.get("chain_checked")
        else "|S| not checked against the chain (run with --chain-url and --contract)"
    )
    chart = f"<div>{client_level_chart(rounds)}</div>" if rounds else ""
    clip, sigma = _e(f"{float(level['clip_norm']):g}"), _e(f"{float(level['noise_multiplier']):g}")
    delta = _e(f"{float(level['delta']):g}")
    return (
        '<section class="client-level" id="client-level"><h2>Client-level DP</h2>'
        "<p>one whole hospital's data, apart from the record-level epsilons: every owner "
        f"clips its update to C = {clip} and adds noise calibrated for min_clients = "
        f"{_e(level['min_clients'])} owners (noise multiplier {sigma} at that many), so a "
        "sum of |S| owners carries noise multiplier sigma * sqrt(|S| / min_clients): dropouts "
        f"mean less noise. Epsilon at delta {delta}, every released round composed, "
        "re-derived here with dp-accounting's PLD from the manifest and |S| alone.</p>"
        f"<p>final client-level epsilon: re-derived <b>{_num(level.get('epsilon_pld'))}</b>, "
        f"the summary claims <b>{_num(level.get('epsilon_claimed'))}</b> over "
        f"{_e(level.get('rounds_released'))} released round(s); {_e(source)}.</p>"
        f'{checks}<div class="row">{chart}<div>'
        '<table class="client-params"><tr><th>round</th><th>|S| summary</th>'
        "<th>|S| chain</th><th>|S| composed</th><th>noise mult. re-derived</th>"
        "<th>noise mult. summary</th><th>epsilon re-derived (PLD)</th><th>epsilon summary</th>"
        f'<th class="l">check</th></tr>'
        f"{''.join(_client_row(r, failed) for r in rounds)}</table></div></div></section>"
    )


def _names(value: object) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k} ({v})" for k, v in value.items()) or "-"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value) or "-"
    return "-" if value in (None, "") else str(value)


def _rounds(summary: dict[str, Any] | None) -> str:
    rounds = _summary_rounds(summary)
    if not rounds:
        return (
            "<h2>Accuracy and committee attestations</h2>"
            f'<p class="note">no {SUMMARY} with rounds in the run directory: accuracy and '
            "attestations are not shown (the ledgers alone do not carry them).</p>"
        )
    rows = []
    for r in rounds:
        finalized = (
            '<span class="ok">yes</span>' if r.get("finalized") else '<span class="bad">no</span>'
        )
        acc = r.get("accuracy")
        rows.append(
            f"<tr><td>{_e(r['round'])}</td>"
            f"<td>{_e(_num(float(acc))) if isinstance(acc, int | float) else '-'}</td>"
            f'<td class="l">{finalized}</td>'
            f'<td class="l">{_e(_names(r.get("clients_included")))}</td>'
            f'<td class="l">{_e(_names((r.get("declined") or []) + (r.get("failed") or [])))}'
            f'</td><td class="l">{_e(_names(r.get("faulty_members")))}</td>'
            f'<td class="l">{_e(_names(r.get("faulty_decryptors")))}</td>'
            f'<td class="l">{_e(r.get("reason") or "")}</td></tr>'
        )
    chain = summary.get("chain") if summary else None
    finalized_note = ""
    if isinstance(chain, dict) and "finalized_rounds" in chain:
        contract = chain.get("contract")
        where = f" (contract <code>{_e(contract)}</code>)" if contract else ""
        finalized_note = (
            f"<p>{_e(chain.get('finalized_rounds'))} round(s) finalized on chain{where}.</p>"
        )
    return (
        "<h2>Accuracy and committee attestations</h2>"
        f'<div class="row"><div>{accuracy_chart(rounds)}</div><div>'
        '<table class="attestations"><tr><th>round</th><th>accuracy</th>'
        '<th class="l">finalized</th><th class="l">clients included</th>'
        '<th class="l">declined / failed</th><th class="l">faulty members</th>'
        '<th class="l">faulty decryptors</th><th class="l">reason</th></tr>'
        f"{''.join(rows)}</table>{finalized_note}"
        f'<p class="note">from {SUMMARY}, as the coordinator reported it; the ledgers and '
        "the chain are the source of truth.</p></div></div>"
    )


def _params(points: Sequence[EntryPoint]) -> str:
    rows = []
    for p in points:
        ev = p.event
        seeded = '<span class="bad">yes</span>' if p.seeded else "no"
        rows.append(
            f"<tr><td>{ev.round}{'' if p.own_study else '*'}</td>"
            f"<td>{_num(ev.noise_multiplier, '.6g')}</td><td>{_num(ev.sample_rate, '.6g')}</td>"
            f"<td>{ev.steps}</td><td>{_num(ev.max_grad_norm, 'g')}</td>"
            f"<td>{_num(ev.delta, 'g')}</td><td>{seeded}</td><td>{_num(p.prv)}</td>"
            f"<td>{_num(p.pld)}</td><td>{_num(p.rdp)}</td><td>{_num(p.cap, 'g')}</td></tr>"
        )
    return (
        '<table class="params"><tr><th>round</th><th>noise mult.</th><th>sample rate</th>'
        "<th>steps</th><th>clip norm</th><th>delta</th><th>seeded</th><th>PRV</th>"
        f"<th>PLD</th><th>RDP</th><th>cap</th></tr>{''.join(rows)}</table>"
    )


def _hospital(audit: HospitalAudit, report: AuditReport) -> str:
    points = entry_points(audit, study_id=report.study_id, delta=report.delta)
    state = '<span class="ok">ok</span>' if audit.ok else '<span class="bad">FAIL</span>'
    body = ""
    if audit.violations:  # the failed checks first: what the reader came for
        items = "".join(f"<li>{_e(v)}</li>" for v in audit.violations)
        body += (
            f'<p class="bad">{len(audit.violations)} failed check(s):</p>'
            f'<ul class="violations">{items}</ul>'
        )
    else:
        body += '<p class="ok">no failed check</p>'
    if points:
        body += f'<div class="row"><div>{epsilon_chart(audit.hospital, points)}</div>'
        body += f"<div>{_params(points)}"
        if not all(p.own_study for p in points):
            body += '<p class="note">* an entry of another study on the same dataset</p>'
        body += "</div></div>"
    else:
        body += '<p class="bad">the ledger could not be re-read for the chart</p>'
    css = "hospital" if audit.ok else "hospital failed"
    return (
        f'<section class="{css}"><h3>{_e(audit.hospital)} {state}</h3>'
        f'<p class="note">ledger <code>{_e(Path(audit.ledger).name)}</code>, head '
        f"<code>{_e(audit.head[:16])}...</code>, {audit.entries} entries</p>{body}</section>"
    )


def render_report(report: AuditReport, *, run_dir: Path) -> str:
    """The audit ``report`` of the run at ``run_dir`` as one self-contained HTML page."""
    claimed = {v for h in report.hospitals for v in h.violations}
    if report.client_level is not None:
        claimed |= {str(v) for v in report.client_level.get("violations", [])}
    other = [v for v in report.violations if v not in claimed]
    other_html = ""
    if other:
        items = "".join(f"<li>{_e(v)}</li>" for v in other)
        other_html = f'<h2>Run-wide failed checks</h2><ul class="violations">{items}</ul>'
    hospitals = "".join(_hospital(h, report) for h in report.hospitals)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "style-src 'unsafe-inline'; img-src data:\">"
        f"<title>cohort audit: {'PASS' if report.ok else 'FAIL'} - study "
        f"{_e(report.study_id[:16])}</title><style>{CSS}</style></head><body>"
        f"{_verdict(report)}<main>{_study(report)}{_empirical(report)}{other_html}"
        f"{_client_level(report.client_level)}"
        f"{_rounds(load_summary(Path(run_dir)))}"
        f"<h2>Hospitals</h2>{hospitals}"
        '<p class="note">written by <code>cohort audit --report</code>; every number above '
        "is re-derived from the run's published files.</p></main></body></html>\n"
    )
