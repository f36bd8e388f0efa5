"""A fresh anvil node for the tests that need a real JSON-RPC chain (one place, not a copy
per test module). The binary is found as ``cohort deploy local`` finds it
(:func:`cohort.federation.deploy_local.anvil_binary`); without one the test is skipped."""

from __future__ import annotations

import contextlib
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence

import pytest
from web3 import HTTPProvider, Web3
from web3.types import RPCEndpoint

from cohort.errors import ConfigError
from cohort.federation.deploy_local import anvil_binary, free_ports

START_S = 30.0


@contextlib.contextmanager
def running_anvil(*, fund: Sequence[str] = (), balance_wei: int = 10**24) -> Iterator[str]:
    """Start anvil on a free 127.0.0.1 port, give each address in ``fund`` ``balance_wei``,
    yield its URL; stop it afterwards."""
    try:
        binary = anvil_binary()
    except ConfigError as exc:
        pytest.skip(str(exc))
    (port,) = free_ports(1)
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            [str(binary), "--host", "127.0.0.1", "--port", str(port), "--quiet", "--accounts", "1"],
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            probe = Web3(HTTPProvider(url, request_kwargs={"timeout": 2}))
            deadline = time.monotonic() + START_S
            while not probe.is_connected():
                if proc.poll() is not None:
                    err.seek(0)
                    tail = err.read().decode(errors="replace")[-500:]
                    pytest.fail(f"anvil exited with {proc.returncode}: {tail}")
                if time.monotonic() > deadline:
                    pytest.fail(f"anvil did not answer within {START_S:g} s")
                time.sleep(0.1)
            for address in fund:
                probe.provider.make_request(
                    RPCEndpoint("anvil_setBalance"), [address, hex(balance_wei)]
                )
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
