"""Flower's usage telemetry is off in every process that imports Cohort (cohort.offline)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cohort.offline import TELEMETRY_ENV

ROOT = Path(__file__).resolve().parents[1]

# Imports in the order given, then asks Flower to create an event with urlopen replaced by a
# recorder: prints the variable, Flower's flag, what create_event returned, and the URLs.
PROBE = """
import os, sys, urllib.request
opened = []
def urlopen(request, *args, **kwargs):
    opened.append(getattr(request, "full_url", request))
    raise OSError("refused by the test")
urllib.request.urlopen = urlopen
for name in sys.argv[1:]:
    __import__(name)
import flwr.supercore.telemetry as t
try:
    result = t.create_event(t.EventType.PING, {})
except OSError:
    result = "sent"
print(os.environ.get("FLWR_TELEMETRY_ENABLED"), t.FLWR_TELEMETRY_ENABLED, result, opened)
"""


def _probe(*imports: str, env_value: str | None = None) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != TELEMETRY_ENV}
    if env_value is not None:
        env[TELEMETRY_ENV] = env_value
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *imports],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
        check=True,
    )
    return done.stdout.strip().split(maxsplit=3)


@pytest.mark.parametrize(
    "imports",
    [("cohort",), ("flwr.supercore.telemetry", "cohort"), ("cohort.federation.client_app",)],
    ids=["cohort-first", "flower-first", "client-app"],
)
def test_importing_cohort_switches_flower_telemetry_off(imports: tuple[str, ...]) -> None:
    variable, flag, result, opened = _probe(*imports)
    assert (variable, flag, result, opened) == ("0", "0", "disabled", "[]")


def test_without_cohort_flower_would_report() -> None:
    """The probe can fail: Flower alone posts its event (here to the recorder)."""
    variable, flag, result, opened = _probe("flwr")
    assert (variable, flag, result) == ("None", "1", "sent")
    assert "telemetry.flower.ai" in opened


def test_an_operators_own_setting_is_kept() -> None:
    variable, flag, result, _ = _probe("cohort", env_value="1")
    assert (variable, flag, result) == ("1", "1", "sent")


def test_the_container_image_switches_it_off_for_flowers_own_commands() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f"{TELEMETRY_ENV}=0" in dockerfile
