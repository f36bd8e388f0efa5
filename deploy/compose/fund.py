#!/usr/bin/env python3
"""Give the sponsor's account ether on the demo chain (Docker Compose demo, anvil only).

Run by the sponsor once its keys exist: reads the account address from its encrypted
Ethereum keystore (the Web3 Secret Storage file carries the address in clear, so no password
is needed) and sets that balance with anvil's development method ``anvil_setBalance``. A
real chain refuses that method: fund the account from a wallet instead.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

WEI_PER_ETHER = 10**18


def build_parser() -> argparse.ArgumentParser:
    """The script's command line (the compose test parses every service's call with it)."""
    parser = argparse.ArgumentParser(
        prog="fund.py", description="Fund the sponsor's account on an anvil development chain."
    )
    parser.add_argument("--rpc-url", required=True, help="the chain's JSON-RPC URL (http://)")
    parser.add_argument(
        "--keystore", type=Path, required=True, help="the sponsor's encrypted Ethereum keystore"
    )
    parser.add_argument("--ether", type=int, default=100, help="balance to set, in ether")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the chain")
    return parser


def _rpc(url: str, method: str, params: list[Any]) -> Any:
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"--rpc-url must be http:// or https://, got {url!r}")
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
    request = urllib.request.Request(  # noqa: S310 (scheme checked above)
        url, data=body.encode("utf-8"), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        reply = json.loads(response.read())
    if "error" in reply:
        raise RuntimeError(f"{method}: {reply['error'].get('message', reply['error'])}")
    return reply["result"]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        record = json.loads(args.keystore.read_text(encoding="utf-8"))
        address = "0x" + str(record["address"]).removeprefix("0x")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"fund: {args.keystore}: no account address ({exc})", file=sys.stderr)
        return 1
    target = args.ether * WEI_PER_ETHER
    deadline = time.monotonic() + args.timeout
    while True:
        try:
            balance = int(_rpc(args.rpc_url, "eth_getBalance", [address, "latest"]), 16)
            break
        except OSError as exc:
            if time.monotonic() > deadline:
                print(f"fund: chain {args.rpc_url} unreachable: {exc}", file=sys.stderr)
                return 1
            time.sleep(1.0)
    if balance >= target:
        print(f"fund: {address} holds {balance} wei, enough", flush=True)
        return 0
    try:
        _rpc(args.rpc_url, "anvil_setBalance", [address, hex(target)])
    except (OSError, RuntimeError) as exc:
        print(f"fund: cannot set the balance of {address}: {exc}", file=sys.stderr)
        return 1
    print(f"fund: {address} now holds {args.ether} ether on {args.rpc_url}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
