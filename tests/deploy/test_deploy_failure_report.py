"""A failed deployment test reports the last lines of every party's log (conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ("pytester",)

CONFTEST = Path(__file__).with_name("conftest.py")


def test_a_failed_test_reports_each_logs_tail(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(CONFTEST.read_text(encoding="utf-8"))
    pytester.makepyfile(
        test_fails="""
        def test_fails(tmp_path):
            logs = tmp_path / "deploy" / "logs"
            logs.mkdir(parents=True)
            (logs / "superlink.log").write_text(
                "".join(f"superlink line {i}\\n" for i in range(100)))
            (logs / "hospital-1.log").write_text("hospital-1 refused the envelope\\n")
            assert False, "the study did not get there"

        def test_passes(tmp_path):
            logs = tmp_path / "deploy" / "logs"
            logs.mkdir(parents=True)
            (logs / "member-1.log").write_text("member-1 said this\\n")
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    out = result.stdout.str()
    assert "last 40 lines of deploy/logs/superlink.log" in out
    assert "superlink line 99" in out
    assert "superlink line 60" in out
    assert "superlink line 59" not in out  # only the tail
    assert "hospital-1 refused the envelope" in out
    assert "member-1 said this" not in out  # a test that passed reports nothing
