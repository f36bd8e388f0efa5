"""What a study contract finalized for a round, read in one JSON-RPC request: the owner's check.

A data owner whose policy names a chain asks it, before it decrypts a round's aggregate,
which result the study contract finalized for that round
(:func:`cohort.federation.approval.check_finalized`). A deployed owner handles every
message in a fresh process, so it asks from a cold start each time. Through web3's contract
client that is five requests and 25 to 60 ms of CPU per message: the contract's functions
built from the ABI, a connection probe, the chain id, the code at the address and the
round's reads. :class:`StudyReads` sends one HTTP POST instead: a JSON-RPC batch of the code
at the address and the two words the contract keeps for a finalized round, each answered
at ``latest``. It costs about 3 ms of CPU in a fresh process (a fork of a runner that
imported this module), the HTTP exchange included.

The answers are the contract client's: the same selectors, from the same committed ABI
(:func:`~cohort.bounties.study.load_artifact`), and the same check that the address holds
the committed CohortStudy build (:func:`~cohort.bounties.study.matches_artifact`). The tests
compare the two on anvil. A round is finalized exactly when its aggregate hash is not zero.
It is finalized once and never changes, so the three answers need no common block. If the
round finalizes between two of them, it reads as not finalized yet, or as the one result it
has.

A node that refuses batches (it answers one JSON-RPC error object) is asked the same three
things one request at a time on the same connection.
"""

from __future__ import annotations

import base64
import http.client
import json
from typing import Any
from urllib.parse import urlparse

from eth_utils.abi import function_signature_to_4byte_selector

from cohort.bounties.attestation import checksum_address
from cohort.bounties.study import load_artifact, matches_artifact
from cohort.errors import BadInputError, ProtocolAbort

__all__ = ["READ_FUNCTIONS", "StudyReads"]

#: The contract's views :meth:`StudyReads.finalized` calls: (aggregate hash, contributors
#: hash) of a round, both zero until it is finalized.
READ_FUNCTIONS = ("finalizedHash(uint256)", "finalizedContributorsHash(uint256)")
_WORD = 32


def _selectors() -> tuple[bytes, ...]:
    abi = load_artifact()["abi"]
    declared = {
        f"{item['name']}({','.join(i['type'] for i in item['inputs'])})"
        for item in abi
        if item.get("type") == "function"
    }
    missing = [s for s in READ_FUNCTIONS if s not in declared]
    if missing:
        raise BadInputError(f"the CohortStudy artifact has no {missing[0]}")
    return tuple(function_signature_to_4byte_selector(s) for s in READ_FUNCTIONS)


#: The selectors of :data:`READ_FUNCTIONS`, found in the ABI once, when this module is
#: imported (before a deployed owner's runner forks any message).
_SELECTORS = _selectors()


class StudyReads:
    """Read-only view of one ``CohortStudy`` deployment at a JSON-RPC URL, one request a read.

    ``url`` is the owner's own ``chain-url`` (http or https, optionally with user:password
    for basic authentication, which no message or error repeats); ``address`` the contract
    the approved manifest names.
    """

    def __init__(self, url: str, address: str, *, timeout_s: float = 30.0) -> None:
        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise BadInputError(f"chain url: expected http(s)://host:port, got {_shown(url)!r}")
        if timeout_s <= 0:
            raise BadInputError(f"timeout_s: must be positive seconds, got {timeout_s}")
        try:
            parsed.port  # noqa: B018 (urlparse checks the port only when asked)
        except ValueError:
            raise BadInputError(f"chain url: bad port in {_shown(url)!r}") from None
        self._parsed = parsed
        self._where = _shown(url)
        self._timeout_s = timeout_s
        self._address = checksum_address(address, field="address")

    @property
    def address(self) -> str:
        return self._address

    def finalized(self, round: int) -> tuple[bytes, bytes] | None:
        """(aggregate hash, contributors hash) ``round`` was finalized with, or None if it is
        not final; BadInputError if the address holds no contract or not the committed
        build, ProtocolAbort if the node cannot be asked or answers out of protocol."""
        if isinstance(round, bool) or not isinstance(round, int) or not 0 <= round < 2**256:
            raise BadInputError(f"round: expected an integer >= 0, got {round!r}")
        argument = round.to_bytes(_WORD, "big")
        calls: list[tuple[str, list[Any]]] = [
            ("eth_getCode", [self._address, "latest"]),
            *(
                ("eth_call", [{"to": self._address, "data": "0x" + (s + argument).hex()}, "latest"])
                for s in _SELECTORS
            ),
        ]
        code, aggregate, contributors = (
            _hex_bytes(r, m) for r, (m, _) in zip(self._ask(calls), calls, strict=True)
        )
        if not code:
            raise BadInputError(f"address: no contract at {self._address}")
        if not matches_artifact(code):
            raise BadInputError(
                f"address: the code at {self._address} is not the committed CohortStudy build"
            )
        for name, word in (
            ("finalizedHash", aggregate),
            ("finalizedContributorsHash", contributors),
        ):
            if len(word) != _WORD:
                raise ProtocolAbort(
                    f"chain {self._where}: {name}({round}) returned {len(word)} bytes, not 32"
                )
        if aggregate == bytes(_WORD):
            return None
        return aggregate, contributors

    # ------------------------------------------------------------------ transport

    def _ask(self, calls: list[tuple[str, list[Any]]]) -> list[Any]:
        """Each call's ``result``, in order: one batch request, or one request per call if
        the node refuses batches."""
        connection = self._connect()
        try:
            body = [
                {"jsonrpc": "2.0", "id": i, "method": m, "params": p}
                for i, (m, p) in enumerate(calls)
            ]
            answer = self._post(connection, body)
            if isinstance(answer, dict):  # one error object: no batches here
                return [self._result(self._post(connection, item), item) for item in body]
            if not isinstance(answer, list) or len(answer) != len(body):
                raise ProtocolAbort(
                    f"chain {self._where}: a JSON-RPC batch answer of the wrong shape"
                )
            by_id = {item.get("id"): item for item in answer if isinstance(item, dict)}
            return [self._result(by_id.get(item["id"]), item) for item in body]
        finally:
            connection.close()

    def _connect(self) -> http.client.HTTPConnection:
        host = self._parsed.hostname or ""
        port = self._parsed.port
        if self._parsed.scheme == "https":
            return http.client.HTTPSConnection(host, port, timeout=self._timeout_s)
        return http.client.HTTPConnection(host, port, timeout=self._timeout_s)

    def _post(self, connection: http.client.HTTPConnection, body: object) -> Any:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._parsed.username is not None:
            user = f"{self._parsed.username}:{self._parsed.password or ''}"
            headers["Authorization"] = "Basic " + base64.b64encode(user.encode()).decode()
        path = self._parsed.path or "/"
        if self._parsed.query:
            path += "?" + self._parsed.query
        try:
            connection.request("POST", path, body=json.dumps(body).encode(), headers=headers)
            response = connection.getresponse()
            payload = response.read()
        except (OSError, http.client.HTTPException) as exc:
            raise ProtocolAbort(
                f"no Ethereum JSON-RPC node answers at {self._where}: {type(exc).__name__}"
            ) from None
        if response.status != 200:
            raise ProtocolAbort(f"chain {self._where}: HTTP {response.status} {response.reason}")
        try:
            return json.loads(payload)
        except ValueError:
            raise ProtocolAbort(f"chain {self._where}: the answer is not JSON") from None

    def _result(self, answer: Any, call: dict[str, Any]) -> Any:
        method = call["method"]
        if not isinstance(answer, dict):
            raise ProtocolAbort(f"chain {self._where}: no answer to {method}")
        if "error" in answer:
            error = answer["error"]
            message = error.get("message") if isinstance(error, dict) else error
            raise ProtocolAbort(f"chain {self._where}: {method} failed: {str(message)[:200]}")
        if "result" not in answer:
            raise ProtocolAbort(f"chain {self._where}: {method} answered without a result")
        return answer["result"]


def _hex_bytes(value: Any, method: str) -> bytes:
    if not isinstance(value, str) or not value.startswith("0x"):
        raise ProtocolAbort(f"chain: {method} returned {str(value)[:40]!r}, not 0x-hex")
    try:
        return bytes.fromhex(value[2:])
    except ValueError:
        raise ProtocolAbort(f"chain: {method} returned malformed hex") from None


def _shown(url: str) -> str:
    """``url`` without any user:password (what messages and errors name)."""
    parsed = urlparse(url)
    if "@" not in parsed.netloc:
        return url
    return parsed._replace(netloc=parsed.netloc.rpartition("@")[2]).geturl()
