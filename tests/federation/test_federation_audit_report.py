"""``cohort audit RUN_DIR --report FILE.html``: one self-contained page, read by a person.

Run directories are built as in test_federation_audit.py (a real signed manifest from
tests/studykit.py, real ledgers written by ``PrivacyLedger.record`` with the events the
manifest's ``DpConfig`` gives) plus a ``summary.json`` with per-round accuracy and
attestations. The page is checked in its source (self-contained, escaped, one chart per
hospital) and in a headless Chromium screenshot (the verdict banner's colour at the top, the
chart lines' colours in the page), decoded here without PIL.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray
from studykit import hospitals, make_study
from typer.testing import CliRunner

from cohort.clients.client_dp import client_level_epsilon
from cohort.clients.empirical import EmpiricalAudit
from cohort.clients.privacy import PrivacyLedger
from cohort.federation import audit_report
from cohort.federation.audit import audit_run
from cohort.federation.audit_report import render_report
from cohort.federation.cli import app
from cohort.federation.dp_terms import dp_config
from cohort.federation.manifest import ClientDpTerms, Manifest

runner = CliRunner()
ROUNDS = 3
EXAMPLES = 64
EVIL = "<img src=x onerror=alert(1)>"


def write_ledger(
    run: Path, manifest: Manifest, *, owner: str, rounds: range, cap: float = 3.0
) -> None:
    config = dp_config(manifest)
    path = run / "hospitals" / owner / "ledger-default.json"
    ledger = PrivacyLedger.open(path, owner=owner, epsilon_cap=cap, delta=config.delta)
    for rnd in rounds:
        event = config.event(EXAMPLES, round=rnd)
        epsilon = ledger.projected_epsilon(event)
        ledger.record(event, study_id=manifest.study_id, epsilon=epsilon, seeded=False)


def write_summary(run: Path, study_id: str) -> None:
    rounds = [
        {
            "round": r,
            "accuracy": 0.6 + 0.1 * r,
            "loss": 0.5,
            "clients_included": ["hospital-1", "hospital-2"],
            "declined": [],
            "failed": [],
            "faulty_members": {"member-3": "<b>bad share</b>"} if r == 2 else {},
            "finalized": r != 3,
            "reason": "",
            "decryptors": [],
            "faulty_decryptors": [],
        }
        for r in range(1, ROUNDS + 1)
    ]
    summary = {"study_id": study_id, "rounds": rounds, "chain": {"finalized_rounds": 2}}
    (run / "summary.json").write_text(json.dumps(summary))


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(honest run, failing run): the failing one has hospital-2 past its cap and rounds
    past the manifest's, and a ledger published under a hostile id not on the roster."""
    root = tmp_path_factory.mktemp("report")
    study = make_study(hospitals(root / "parties", 2), rounds=ROUNDS, approve_owners=False)
    honest, failing = root / "honest", root / "failing"
    for run in (honest, failing):
        study.signed.save(run / "manifest.json")
        write_summary(run, study.study_id)
        write_ledger(run, study.manifest, owner="hospital-1", rounds=range(1, ROUNDS + 1))
    write_ledger(honest, study.manifest, owner="hospital-2", rounds=range(1, ROUNDS + 1))
    write_ledger(failing, study.manifest, owner="hospital-2", rounds=range(1, ROUNDS + 2), cap=2.5)
    write_ledger(failing, study.manifest, owner=EVIL, rounds=range(1, 2))
    return honest, failing


CLIENT_DP = ClientDpTerms(clip_norm=0.5, noise_multiplier=0.8)
#: Round -> owners in the released sum: hospital-3 drops out of round 2 (less noise).
INCLUDED = {1: ["hospital-1", "hospital-2", "hospital-3"], 2: ["hospital-1", "hospital-2"]}


@pytest.fixture(scope="module")
def client_dp_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-round study of 3 hospitals with ``client_dp`` (min_clients 2) whose summary
    carries the client-level records the coordinator writes (one dropout in round 2)."""
    root = tmp_path_factory.mktemp("client-dp-report")
    study = make_study(hospitals(root / "parties", 3), rounds=2, approve_owners=False)
    signed = study.resign(client_dp=CLIENT_DP)
    run = root / "run"
    signed.save(run / "manifest.json")
    manifest = signed.manifest
    for owner in ("hospital-1", "hospital-2", "hospital-3"):
        rounds = [r for r, ids in INCLUDED.items() if owner in ids]
        write_ledger(run, manifest, owner=owner, rounds=range(1, max(rounds) + 1))
    zs: list[float] = []
    records: list[dict[str, Any]] = []
    for rnd, ids in INCLUDED.items():
        zs.append(CLIENT_DP.noise_multiplier * math.sqrt(len(ids) / manifest.min_clients))
        level = {
            "clients": len(ids),
            "noise_multiplier": zs[-1],
            "clip_norm": CLIENT_DP.clip_norm,
            "epsilon": client_level_epsilon(zs, delta=manifest.dp.delta),
            "delta": manifest.dp.delta,
        }
        records.append(
            {
                "round": rnd,
                "accuracy": 0.7,
                "aggregate_hash": f"{rnd:064x}",
                "clients_included": ids,
                "finalized": True,
                "client_level": level,
            }
        )
    summary = {
        "rounds": records,
        "client_level": {"epsilon": records[-1]["client_level"]["epsilon"]},
    }
    (run / "summary.json").write_text(json.dumps(summary))
    return run


def understate(run: Path, out: Path) -> Path:
    """A copy of ``run`` whose summary halves round 2's client-level epsilon."""
    shutil.copytree(run, out)
    summary = json.loads((out / "summary.json").read_text())
    summary["rounds"][1]["client_level"]["epsilon"] /= 2
    (out / "summary.json").write_text(json.dumps(summary))
    return out


def svgs(page: str) -> list[str]:
    return re.findall(r"<svg\b.*?</svg>", page, flags=re.S)


def assert_self_contained(page: str) -> None:
    assert "http://" not in page
    assert "https://" not in page
    assert "<script" not in page.lower()
    assert not re.search(r"<link\b", page, flags=re.I)
    assert not re.search(r"@import|url\(", page)
    for attr in re.findall(r"\b(?:src|href)\s*=\s*\"([^\"]*)\"", page):
        assert attr.startswith(("#", "data:")), attr


# --------------------------------------------------------------------------- the HTML


def test_honest_report_is_self_contained_with_a_pass_verdict(runs: tuple[Path, Path]) -> None:
    honest, _ = runs
    report = audit_run(honest)
    assert report.ok, report.violations
    page = render_report(report, run_dir=honest)
    assert_self_contained(page)
    assert page.index("<h1>PASS</h1>") < page.index("hospital-1")  # the verdict first
    assert audit_report.PASS_COLOUR in page
    assert audit_report.FAIL_COLOUR not in page
    charts = svgs(page)
    # One epsilon chart per hospital (its title names it) plus the study's accuracy chart.
    assert len(charts) == 1 + len(report.hospitals)
    for h in report.hospitals:
        (chart,) = [c for c in charts if f"{h.hospital}: epsilon spent vs cap" in c]
        for series in ("PRV (recorded)", "PLD", "RDP", "cap"):
            assert f'data-series="{series}"' in chart
    assert "study accuracy over rounds" in page
    # DP parameters per round: 3 rows per hospital, the calibrated noise multiplier shown.
    assert page.count('<table class="params">') == 2
    sigma = audit_report.entry_points(
        report.hospitals[0], study_id=report.study_id, delta=report.delta
    )[0].event.noise_multiplier
    assert f"<td>{sigma:.6g}</td>" in page
    assert "no failed check" in page
    # Attestations from summary.json, escaped.
    assert "member-3 (&lt;b&gt;bad share&lt;/b&gt;)" in page
    assert "<b>bad share</b>" not in page


def test_per_entry_epsilons_end_at_the_audits_own(runs: tuple[Path, Path]) -> None:
    honest, _ = runs
    report = audit_run(honest)
    for h in report.hospitals:
        points = audit_report.entry_points(h, study_id=report.study_id, delta=report.delta)
        assert [p.event.round for p in points] == [1, 2, 3]
        assert points[-1].pld == pytest.approx(h.epsilon_pld)
        assert points[-1].rdp == pytest.approx(h.epsilon_rdp)
        assert points[-1].prv == pytest.approx(h.epsilon_recorded)
        assert [p.pld for p in points] == sorted(p.pld for p in points)
        assert all(p.rdp >= p.pld for p in points)


def test_failing_report_names_every_violation_and_escapes_ids(runs: tuple[Path, Path]) -> None:
    _, failing = runs
    report = audit_run(failing)
    assert not report.ok
    assert [h.ok for h in report.hospitals] == [False, True, False]  # EVIL sorts first
    page = render_report(report, run_dir=failing)
    assert_self_contained(page)
    n = len(report.violations)
    assert f"<h1>FAIL: {n} violations</h1>" in page
    assert page.index("FAIL:") < page.index("hospital-1")
    assert audit_report.FAIL_COLOUR in page
    # The hostile id is shown, escaped, never as markup (id, chart title, violations).
    assert EVIL not in page
    assert "<img" not in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page
    assert len(svgs(page)) == 1 + len(report.hospitals)
    for violation in report.violations:
        assert audit_report._e(violation) in page
    assert "hospital-2 round 4: round: outside the manifest&#x27;s rounds 1..3" in page


def test_report_without_summary_says_so(runs: tuple[Path, Path], tmp_path: Path) -> None:
    honest, _ = runs
    bare = tmp_path / "bare"
    shutil.copytree(honest, bare)
    (bare / "summary.json").unlink()
    page = render_report(audit_run(bare), run_dir=bare)
    assert "no summary.json with rounds" in page
    assert len(svgs(page)) == 2  # the hospitals' charts only


def test_client_level_section_sets_rederived_next_to_claimed(
    runs: tuple[Path, Path], client_dp_run: Path, tmp_path: Path
) -> None:
    report = audit_run(client_dp_run)
    assert report.ok, report.violations
    page = render_report(report, run_dir=client_dp_run)
    assert_self_contained(page)
    assert page.index("<h1>PASS</h1>") < page.index("<h2>Client-level DP</h2>")
    section = page[page.index('<section class="client-level"') :]
    section = section[: section.index("</section>")]
    assert "no failed client-level check" in section
    assert "|S| not checked against the chain" in section
    (chart,) = svgs(section)
    assert 'data-series="re-derived (PLD)"' in chart
    assert 'data-series="summary claims"' in chart
    level = report.client_level
    assert level is not None
    # Per round: |S| (summary, chain, composed), noise multiplier and epsilon side by side.
    for r, ids in INCLUDED.items():
        row = level["rounds"][r - 1]
        z = 0.8 * math.sqrt(len(ids) / 2)
        assert row["noise_multiplier"] == pytest.approx(z)
        assert (
            f"<tr><td>{r}</td><td>{len(ids)}</td><td>-</td><td>{len(ids)}</td>"
            f"<td>{z:.6g}</td><td>{z:.6g}</td><td>{row['epsilon_pld']:.4f}</td>"
            f"<td>{row['epsilon_claimed']:.4f}</td>" in section
        )
    assert level["rounds"][1]["noise_multiplier"] < level["rounds"][0]["noise_multiplier"]
    # Without client_dp in the manifest: no section.
    assert "Client-level DP" not in render_report(audit_run(runs[0]), run_dir=runs[0])

    forged = understate(client_dp_run, tmp_path / "forged")
    report = audit_run(forged)
    assert not report.ok
    page = render_report(report, run_dir=forged)
    section = page[page.index('<section class="client-level"') :]
    section = section[: section.index("</section>")]
    assert report.client_level is not None
    failed = report.client_level["violations"]
    assert failed
    assert all(audit_report._e(v) in section for v in failed)
    assert f"{len(failed)} failed client-level check(s)" in section
    assert "<h2>Run-wide failed checks</h2>" not in page  # listed once, in the section
    assert section.count('<span class="bad">FAIL</span>') == 1  # round 2's row only


# --------------------------------------------------------------------------- cohort audit


def test_cli_writes_the_report_and_keeps_the_verdict(
    runs: tuple[Path, Path], tmp_path: Path
) -> None:
    honest, failing = runs
    out = tmp_path / "out" / "honest.html"
    result = runner.invoke(app, ["audit", str(honest), "--report", str(out)])
    assert result.exit_code == 0, result.output
    assert f"report: {out}" in result.output
    assert "<h1>PASS</h1>" in out.read_text()
    bad = tmp_path / "failing.html"
    result = runner.invoke(app, ["audit", "--json", str(failing), "--report", str(bad)])
    assert result.exit_code == 1
    assert json.loads(result.stdout)["ok"] is False  # the path went to stderr
    assert f"report: {bad}" in result.stderr
    assert "<h1>FAIL: " in bad.read_text()
    assert not list(tmp_path.glob(".*.tmp"))


def test_cli_refused_run_writes_no_report(tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    result = runner.invoke(app, ["audit", str(tmp_path), "--report", str(out)])
    assert result.exit_code == 1
    assert not out.exists()


# --------------------------------------------------------------------------- Chromium


def read_png(path: Path) -> NDArray[np.uint8]:
    """The pixels (height x width x RGB) of an 8-bit RGB or RGBA, non-interlaced PNG, as
    Chromium writes its screenshots (no PIL here; Up and Sub rows vectorised)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat += body
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert (depth, interlace) == (8, 0), (depth, interlace)
    assert colour in (2, 6), colour
    bpp = 3 if colour == 2 else 4
    raw = np.frombuffer(zlib.decompress(idat), dtype=np.uint8).reshape(height, width * bpp + 1)
    image = np.zeros((height, width * bpp), dtype=np.uint8)
    prev = np.zeros(width * bpp, dtype=np.uint8)
    for y in range(height):
        filt, line = int(raw[y, 0]), raw[y, 1:]
        if filt == 0:
            out = line.copy()
        elif filt == 1:  # Sub: a running sum per channel, modulo 256
            out = np.cumsum(line.reshape(width, bpp), axis=0, dtype=np.uint8).reshape(-1)
        elif filt == 2:  # Up
            out = line + prev
        else:  # Average, Paeth: byte by byte
            cur = bytearray(line.tobytes())
            up = prev.tobytes()
            for i in range(len(cur)):
                a = cur[i - bpp] if i >= bpp else 0
                b = up[i]
                if filt == 3:
                    cur[i] = (cur[i] + (a + b) // 2) & 0xFF
                    continue
                c = up[i - bpp] if i >= bpp else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else b if pb <= pc else c
                cur[i] = (cur[i] + pred) & 0xFF
            out = np.frombuffer(bytes(cur), dtype=np.uint8)
        image[y] = out
        prev = out
    return image.reshape(height, width, bpp)[:, :, :3]


def rgb(hex_colour: str) -> NDArray[np.int16]:
    value = int(hex_colour.lstrip("#"), 16)
    return np.array([value >> 16, (value >> 8) & 0xFF, value & 0xFF], dtype=np.int16)


def count(pixels: NDArray[np.uint8], colour: str, *, tol: int = 10) -> int:
    """Pixels within ``tol`` of ``colour`` in every channel."""
    diff = np.abs(pixels.astype(np.int16) - rgb(colour))
    return int(np.count_nonzero(np.all(diff <= tol, axis=-1)))


def test_png_reader_undoes_every_filter(tmp_path: Path) -> None:
    # A 3x5 RGB image, one row per PNG filter type (None, Sub, Up, Average, Paeth), encoded
    # here by the PNG rules, must decode to itself.
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, size=(5, 3, 3), dtype=np.uint8)
    stride, bpp = 9, 3
    raw = b""
    prev = [0] * stride
    for y in range(5):
        line = [int(v) for v in image[y].reshape(-1)]
        out = []
        for i, v in enumerate(line):
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            p = a + b - c
            pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            paeth = a if pa <= pb and pa <= pc else b if pb <= pc else c
            pred = (0, a, b, (a + b) // 2, paeth)[y]
            out.append((v - pred) & 0xFF)
        raw += bytes([y, *out])
        prev = line

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body)
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", 3, 5, 8, 2, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
    (tmp_path / "t.png").write_bytes(png + chunk(b"IEND", b""))
    assert np.array_equal(read_png(tmp_path / "t.png"), image)


def chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("headless Chromium not installed (.ci/run installs Debian's `chromium`)")


def screenshot(page: Path, out: Path) -> Path:
    subprocess.run(
        [
            chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--force-device-scale-factor=1",
            f"--screenshot={out}",
            "--window-size=1200,2000",
            page.as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    assert out.is_file()
    return out


@pytest.mark.parametrize("which", ["honest", "failing", "client-dp", "client-dp-failing"])
def test_chromium_shows_the_verdict_and_the_plots(
    runs: tuple[Path, Path], client_dp_run: Path, tmp_path: Path, which: str
) -> None:
    run = {
        "honest": runs[0],
        "failing": runs[1],
        "client-dp": client_dp_run,
        "client-dp-failing": understate(client_dp_run, tmp_path / "forged"),
    }[which]
    page = tmp_path / "report.html"
    page.write_text(render_report(audit_run(run), run_dir=run))
    pixels = read_png(screenshot(page, tmp_path / "shot.png"))
    height, width, _ = pixels.shape
    assert (width, height) == (1200, 2000)
    banner, other = (
        (audit_report.PASS_COLOUR, audit_report.FAIL_COLOUR)
        if which in ("honest", "client-dp")
        else (audit_report.FAIL_COLOUR, audit_report.PASS_COLOUR)
    )
    top = pixels[5:60]
    # The verdict's banner spans the top of the page, in its colour and not the other.
    assert count(top, banner) > 0.9 * width * top.shape[0]
    assert count(top, other) == 0
    # Each chart line is drawn, well past its legend swatch (18 x 2 px per chart). The cap is
    # a dashed line: half of it is gaps, and Chromium 156 antialiases the dash ends, so a
    # 2-round chart shows about 200 px of its exact colour (still 5x the swatches).
    for colour, least in (
        (audit_report.PRV_COLOUR, 300),
        (audit_report.PLD_COLOUR, 300),
        (audit_report.RDP_COLOUR, 300),
        (audit_report.CAP_COLOUR, 150),
        (audit_report.ACCURACY_COLOUR, 300),
    ):
        assert count(pixels, colour, tol=6) > least, colour
    # The client-level section's chart: drawn in the screenshot with client_dp, absent without.
    client = count(pixels, audit_report.CLIENT_PLD_COLOUR, tol=6)
    if which.startswith("client-dp"):
        assert client > 300
        assert count(pixels, audit_report.CLIENT_CLAIM_COLOUR, tol=6) > 100
    else:
        assert client == 0


def test_report_and_json_show_the_empirical_bound_next_to_the_theory(
    runs: tuple[Path, Path],
) -> None:
    honest, _ = runs
    audit = EmpiricalAudit(
        canaries=64,
        included=31,
        guesses=16,
        correct=9,
        rounds=5,
        beta=0.05,
        delta=1e-5,
        epsilon_lower=0.125,
        epsilon_theoretical=2.9876,
    )
    report = dataclasses.replace(
        audit_run(honest), empirical={**audit.to_dict(), "hospital": "hospital-1"}
    )
    page = render_report(report, run_dir=honest)
    assert_self_contained(page)
    section = page[page.index("<h2>Empirical audit</h2>") :]
    assert "empirical lower bound (95% confidence)</td><td>0.1250" in section
    assert "theoretical (PRV, delta 1e-05)</td><td>2.9876" in section
    assert "not above the theoretical epsilon" in section
    assert json.loads(json.dumps(report.to_dict()))["empirical"]["epsilon_lower"] == 0.125
    assert "<h2>Empirical audit</h2>" not in render_report(audit_run(honest), run_dir=honest)
