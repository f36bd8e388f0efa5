"""Chain providers: one interface over an in-process EVM and a real JSON-RPC node.

:class:`ChainProvider` is what the rest of Cohort uses to send contract transactions. It
signs with a local key where it holds one (``RpcChain``) or sends from an unlocked node
account (``EmbeddedChain``), waits for the receipt, and turns a revert into a Cohort error
whose message names the contract's custom error, for example
``VerificationError("attestation rejected: NotCommitteeMember(0xAb…)")``.

Which Cohort error a custom error becomes is the caller's choice (``error_kinds``); names it
does not list, ``Error(string)`` and panics become :class:`ProtocolAbort`.
"""

from __future__ import annotations

import ast
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, TypeAlias, cast
from urllib.parse import urlparse

from eth_abi.abi import decode as abi_decode
from eth_abi.exceptions import DecodingError
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils.abi import function_signature_to_4byte_selector
from eth_utils.address import to_checksum_address
from hexbytes import HexBytes
from web3 import EthereumTesterProvider, HTTPProvider, Web3
from web3.contract.contract import ContractConstructor, ContractFunction
from web3.exceptions import ContractLogicError, TimeExhausted
from web3.types import Nonce, RPCEndpoint, TxParams, TxReceipt, Wei

from cohort.bounties.attestation import checksum_address
from cohort.errors import BadInputError, CohortError, ProtocolAbort
from cohort.logs import fields, get_logger

log = get_logger(__name__)

Transactable: TypeAlias = ContractFunction | ContractConstructor
ErrorKinds: TypeAlias = Mapping[str, type[CohortError]]

_ERROR_STRING = function_signature_to_4byte_selector("Error(string)")
_PANIC = function_signature_to_4byte_selector("Panic(uint256)")


class ChainProvider(ABC):
    """A chain Cohort can deploy to and transact on.

    Subclasses supply the Web3 connection and which accounts can send; this class does the
    sending, the receipt wait and the revert decoding, identically for every backend.
    """

    name: ClassVar[str]

    def __init__(
        self,
        web3: Web3,
        *,
        private_keys: Sequence[bytes] = (),
        receipt_timeout_s: float = 120.0,
    ) -> None:
        if receipt_timeout_s <= 0:
            raise BadInputError(
                f"receipt_timeout_s: must be positive seconds, got {receipt_timeout_s}"
            )
        self._web3 = web3
        self._receipt_timeout_s = receipt_timeout_s
        self._signers: dict[str, LocalAccount] = {}
        for index, key in enumerate(private_keys):
            if not isinstance(key, bytes | bytearray) or len(key) != 32:
                raise BadInputError(f"private_keys[{index}]: expected 32 bytes")
            try:
                account: LocalAccount = Account.from_key(bytes(key))
            except ValueError:
                raise BadInputError(f"private_keys[{index}]: not a valid secp256k1 key") from None
            self._signers[account.address] = account
        self._chain_id: int | None = None

    @property
    def web3(self) -> Web3:
        """The underlying Web3 connection (reads, event queries, contract objects)."""
        return self._web3

    @property
    def chain_id(self) -> int:
        """EIP-155 chain id, fetched once."""
        if self._chain_id is None:
            self._chain_id = int(self._web3.eth.chain_id)
        return self._chain_id

    @abstractmethod
    def accounts(self) -> list[str]:
        """Checksummed addresses this provider can send transactions from."""

    def balance(self, account: str) -> int:
        """Wei held by ``account`` at the latest block."""
        return int(self._web3.eth.get_balance(checksum_address(account, field="account")))

    def next_nonce(self, account: str) -> int:
        """Nonce of ``account``'s next transaction (pending transactions counted)."""
        address = checksum_address(account, field="account")
        return int(self._web3.eth.get_transaction_count(address, "pending"))

    def latest_timestamp(self) -> int:
        """Timestamp (unix seconds) of the latest block: the chain's idea of "now"."""
        return int(self._web3.eth.get_block("latest")["timestamp"])

    # ------------------------------------------------------------------ time (dev chains)

    def advance_time(self, *, seconds: int) -> int:
        """Mine a block at least ``seconds`` after the latest one; return its timestamp.

        For development chains only (tests and simulations that need a deadline to pass):
        the embedded EVM and nodes with the ``evm_increaseTime``/``evm_mine`` methods (anvil,
        hardhat). Later blocks keep the offset: time never goes back.
        """
        if isinstance(seconds, bool) or not isinstance(seconds, int) or seconds < 1:
            raise BadInputError(
                f"seconds: expected a positive whole number of seconds, got {seconds!r}"
            )
        before = self.latest_timestamp()
        self._advance_time(seconds)
        after = self.latest_timestamp()
        if after < before + seconds:
            raise ProtocolAbort(
                f"advance_time: the {self.name} chain moved {after - before} s, not {seconds} s"
            )
        log.debug(
            "chain time advanced",
            extra=fields(provider=self.name, seconds=seconds, timestamp=after),
        )
        return after

    @abstractmethod
    def _advance_time(self, seconds: int) -> None:
        """Backend hook of :meth:`advance_time`: mine a block ``seconds`` or more later."""

    # ------------------------------------------------------------------ sending

    def transact(
        self,
        fn: Transactable,
        *,
        sender: str,
        value: int = 0,
        action: str | None = None,
        error_kinds: ErrorKinds | None = None,
    ) -> TxReceipt:
        """Send ``fn`` from ``sender`` with ``value`` wei and return its successful receipt.

        A revert (found while estimating gas, or a mined failure) raises the Cohort error
        ``error_kinds`` maps the custom error's name to, with the message
        ``"<action> rejected: Name(arg, ...)"``; ``action`` defaults to the function name.
        """
        action = action or _default_action(fn)
        kinds: ErrorKinds = error_kinds or {}
        sender = checksum_address(sender, field="sender")
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise BadInputError(f"value: expected a non-negative integer of wei, got {value!r}")
        if sender not in self._signers and sender not in self.accounts():
            raise BadInputError(f"sender: {self.name} chain cannot send from {sender}")
        params: TxParams = {"from": sender, "value": Wei(value)}
        try:
            tx_hash = self._send(fn, params)
        except CohortError:
            raise
        except Exception as exc:  # providers raise heterogeneous types; decode what we can
            raise self._as_cohort_error(exc, fn, action=action, kinds=kinds) from None
        try:
            receipt = self._web3.eth.wait_for_transaction_receipt(
                tx_hash, timeout=self._receipt_timeout_s
            )
        except TimeExhausted:
            raise ProtocolAbort(
                f"{action}: no receipt for {tx_hash.to_0x_hex()} after {self._receipt_timeout_s} s"
            ) from None
        if receipt["status"] != 1:
            raise self._mined_failure(fn, params, receipt, action=action, kinds=kinds)
        log.debug(
            "transaction mined",
            extra=fields(
                provider=self.name,
                action=action,
                sender=sender,
                tx=tx_hash.to_0x_hex(),
                gas_used=receipt["gasUsed"],
                block=receipt["blockNumber"],
            ),
        )
        return receipt

    def _send(self, fn: Transactable, params: TxParams) -> HexBytes:
        sender = str(params["from"])
        signer = self._signers.get(sender)
        if signer is None:  # an unlocked node account (checked by transact)
            return fn.transact(params)
        tx = fn.build_transaction(params)
        tx["nonce"] = Nonce(self.next_nonce(signer.address))
        signed = signer.sign_transaction(cast(dict[str, Any], tx))
        return self._web3.eth.send_raw_transaction(signed.raw_transaction)

    # ------------------------------------------------------------------ reverts

    def _revert_data(self, exc: BaseException) -> bytes | str | None:
        """Raw revert bytes carried by ``exc``, a plain reason string, or None if neither.

        The base class reads web3's ContractLogicError (JSON-RPC nodes put the hex revert
        data in ``error.data``); providers that surface reverts differently override this.
        """
        if isinstance(exc, ContractLogicError):
            data = exc.data
            if isinstance(data, dict):
                data = data.get("data")
            if isinstance(data, str) and re.fullmatch(r"0x(?:[0-9a-fA-F]{2})*", data):
                return bytes.fromhex(data[2:])
            return exc.message
        return None

    def _as_cohort_error(
        self, exc: BaseException, fn: Transactable, *, action: str, kinds: ErrorKinds
    ) -> CohortError:
        data = self._revert_data(exc)
        if isinstance(data, bytes):
            return describe_revert(data, _contract_abi(fn), action=action, kinds=kinds)
        if isinstance(data, str):
            return ProtocolAbort(f"{action} rejected: {data}")
        return ProtocolAbort(f"{action} failed on {self.name} chain: {type(exc).__name__}: {exc}")

    def _mined_failure(
        self,
        fn: Transactable,
        params: TxParams,
        receipt: TxReceipt,
        *,
        action: str,
        kinds: ErrorKinds,
    ) -> CohortError:
        """A transaction that was mined but reverted: replay it as a call for the reason."""
        tx = receipt["transactionHash"].to_0x_hex()
        try:
            if isinstance(fn, ContractFunction):
                fn.call(params)
            else:
                self._web3.eth.call({**params, "data": fn.data_in_transaction})
        except Exception as exc:  # decoded below; anything else is reported generically
            error = self._as_cohort_error(exc, fn, action=action, kinds=kinds)
            return type(error)(f"{error} (tx {tx})")
        return ProtocolAbort(f"{action} reverted in tx {tx} (out of gas or state changed)")


class EmbeddedChain(ChainProvider):
    """In-process EVM (eth-tester over py-evm) with ten funded, unlocked test accounts.

    Deterministic: the same accounts, chain id and addresses on every run. For tests, demos
    and single-machine simulations; state lives only as long as the object.
    """

    name: ClassVar[str] = "embedded"

    def __init__(
        self, *, private_keys: Sequence[bytes] = (), receipt_timeout_s: float = 30.0
    ) -> None:
        from eth_tester import EthereumTester, PyEVMBackend

        tester = EthereumTester(PyEVMBackend())
        self._tester = tester
        super().__init__(
            Web3(EthereumTesterProvider(tester)),
            private_keys=private_keys,
            receipt_timeout_s=receipt_timeout_s,
        )
        self._unlocked = [to_checksum_address(a) for a in self._web3.eth.accounts]

    def accounts(self) -> list[str]:
        return [*self._unlocked, *(a for a in self._signers if a not in self._unlocked)]

    def _advance_time(self, seconds: int) -> None:
        # eth-tester mines one block at (target - 1) and opens the next one at target, so
        # travelling to pending + seconds puts the new latest block >= latest + seconds.
        pending = int(self._web3.eth.get_block("pending")["timestamp"])
        self._tester.time_travel(pending + seconds)

    def _revert_data(self, exc: BaseException) -> bytes | str | None:
        # eth-tester raises TransactionFailed("execution reverted: b'...'") with the raw
        # revert bytes as a Python literal, or with the decoded Error(string) reason.
        from eth_tester.exceptions import TransactionFailed

        if not isinstance(exc, TransactionFailed) or not exc.args:
            return super()._revert_data(exc)
        message = str(exc.args[0])
        prefix = "execution reverted: "
        reason = message[len(prefix) :] if message.startswith(prefix) else message
        if re.fullmatch(r"b(['\"]).*\1", reason, flags=re.DOTALL):
            try:
                literal = ast.literal_eval(reason)
            except (ValueError, SyntaxError):
                return reason
            if isinstance(literal, bytes):
                return literal
        return reason

    def _send(self, fn: Transactable, params: TxParams) -> HexBytes:
        # py-evm estimates gas by binary search, re-running the transaction ~20 times. Here a
        # single eth_call finds any revert (with its data) and the transaction is sent with
        # the block's gas limit as allowance; only the gas actually used is charged.
        if isinstance(fn, ContractFunction):
            fn.call(params)
        else:
            self._web3.eth.call({**params, "data": fn.data_in_transaction})
        limit = int(self._web3.eth.get_block("latest")["gasLimit"])
        return super()._send(fn, {**params, "gas": limit})


class RpcChain(ChainProvider):
    """A JSON-RPC node over HTTP (anvil, a testnet, mainnet) with caller-supplied keys.

    Transactions are signed locally with ``private_keys``; the node never sees a key. With no
    keys the provider is read-only (auditors): :meth:`accounts` is empty.
    """

    name: ClassVar[str] = "rpc"

    def __init__(
        self,
        url: str,
        *,
        private_keys: Sequence[bytes] = (),
        request_timeout_s: float = 30.0,
        receipt_timeout_s: float = 120.0,
    ) -> None:
        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise BadInputError(f"url: expected http(s)://host:port, got {url!r}")
        if request_timeout_s <= 0:
            raise BadInputError(
                f"request_timeout_s: must be positive seconds, got {request_timeout_s}"
            )
        # The chain id is asked for by web3's validation before every call and transaction
        # (two requests of three for a contract read); it is remembered per provider, and
        # nothing else is: every read and receipt goes to the node.
        web3 = Web3(
            HTTPProvider(
                url,
                request_kwargs={"timeout": request_timeout_s},
                cache_allowed_requests=True,
                cacheable_requests={RPCEndpoint("eth_chainId")},
            )
        )
        super().__init__(web3, private_keys=private_keys, receipt_timeout_s=receipt_timeout_s)
        self.url = url
        if not web3.is_connected():
            raise ProtocolAbort(f"no Ethereum JSON-RPC node answers at {url}")

    def accounts(self) -> list[str]:
        return list(self._signers)

    def _advance_time(self, seconds: int) -> None:
        # Development-node methods (anvil, hardhat); a production node refuses them.
        provider = self._web3.provider
        for method, params in (("evm_increaseTime", [seconds]), ("evm_mine", [])):
            try:
                response = provider.make_request(RPCEndpoint(method), params)
            except Exception as exc:  # transport errors from the HTTP provider
                raise ProtocolAbort(f"advance_time: {method} failed at {self.url}: {exc}") from None
            if "error" in response:
                raise ProtocolAbort(
                    f"advance_time: the node at {self.url} refused {method}: {response['error']}"
                )


# ---------------------------------------------------------------------- decoding


def describe_revert(
    data: bytes, abi: Sequence[Mapping[str, Any]], *, action: str, kinds: ErrorKinds
) -> CohortError:
    """Cohort error for raw revert ``data`` from a contract with ``abi``."""
    selector, body = data[:4], data[4:]
    if selector == _ERROR_STRING:
        try:
            (reason,) = abi_decode(["string"], body)
        except DecodingError:
            reason = "0x" + data.hex()
        return ProtocolAbort(f"{action} rejected: {reason}")
    if selector == _PANIC:
        code = int.from_bytes(body[:32], "big") if len(body) >= 32 else -1
        return ProtocolAbort(f"{action} rejected: Panic(0x{code:02x})")
    for entry in abi:
        if entry.get("type") != "error":
            continue
        types = [_abi_type(i) for i in entry.get("inputs", [])]
        name = str(entry["name"])
        if function_signature_to_4byte_selector(f"{name}({','.join(types)})") != selector:
            continue
        try:
            values = abi_decode(types, body)
        except DecodingError:
            break
        args = ", ".join(_format_arg(t, v) for t, v in zip(types, values, strict=True))
        return kinds.get(name, ProtocolAbort)(f"{action} rejected: {name}({args})")
    if not data:
        return ProtocolAbort(f"{action} rejected: reverted without data")
    return ProtocolAbort(f"{action} rejected: unknown revert 0x{data.hex()}")


def _abi_type(param: Mapping[str, Any]) -> str:
    kind = str(param["type"])
    if kind.startswith("tuple"):
        inner = ",".join(_abi_type(c) for c in param.get("components", []))
        return f"({inner}){kind[len('tuple') :]}"
    return kind


def _format_arg(kind: str, value: object) -> str:
    if kind == "address" and isinstance(value, str):
        return to_checksum_address(value)
    if isinstance(value, bytes):
        return "0x" + value.hex()
    return str(value)


def _contract_abi(fn: Transactable) -> Sequence[Mapping[str, Any]]:
    if isinstance(fn, ContractFunction):
        return cast(Sequence[Mapping[str, Any]], fn.contract_abi)
    return cast(Sequence[Mapping[str, Any]], fn.abi)


def _default_action(fn: Transactable) -> str:
    if isinstance(fn, ContractFunction):
        return str(fn.fn_name)
    return "deploy"
