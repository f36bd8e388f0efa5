"""When a deployment test fails, its report ends with the last lines of every party's log.

A deployment test runs a dozen OS processes in the test's ``tmp_path``; CI keeps nothing of
it once the run ends, so the report itself carries what each party said last (the SuperLink,
the nodes, the members, the coordinator's launch). Parties log ids, counts and times, never
a secret; the deployment test checks that no key store's password is in any log.
"""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path

import pytest

#: Lines kept from the end of each log.
TAIL_LINES = 40
#: Logs shown at most, the most recently written first.
MAX_LOGS = 24


def log_tails(root: Path, lines: int = TAIL_LINES) -> list[tuple[str, str]]:
    """(title, text) for the last ``lines`` lines of each ``logs/*.log`` under ``root``."""
    logs = sorted(root.glob("**/logs/*.log"), key=lambda p: p.stat().st_mtime, reverse=True)
    sections = []
    for path in logs[:MAX_LOGS]:
        text = path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
        sections.append((f"last {lines} lines of {path.relative_to(root)}", "\n".join(text)))
    return sections


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    tmp = getattr(item, "funcargs", {}).get("tmp_path")
    if report.when == "call" and report.failed and isinstance(tmp, Path) and tmp.is_dir():
        for title, text in log_tails(tmp):
            report.sections.append((title, text))
