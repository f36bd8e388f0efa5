"""Typed schemas of the Flower messages between the coordinator and the data owners.

Each message is a frozen dataclass with ``to_record()`` (sender side) and ``from_record()``
(receiver side). Records are decoded once, here, at the boundary: a missing or mistyped
field raises :class:`~cohort.errors.BadInputError` naming the message and the field, and no
other module reads string-keyed records.

Message types (Flower ``<category>.<action>``):

=====================  ==================================  ===================================
type                   coordinator -> data owner           data owner -> coordinator
=====================  ==================================  ===================================
``query.enroll``       :class:`EnrollRequest`              :class:`EnrollReply`
``query.keygen``       :class:`KeygenRequest`              :class:`KeygenReply`
``query.install_key``  :class:`InstallKeyRequest`          :class:`InstallKeyReply`
``train``              :class:`TrainInstruction`           :class:`TrainReceipt` (+ update in
                       (+ global model; + the previous     ``none`` mode only; + the reveal's
                       round's :class:`DecryptRequest`     :class:`DecryptReply` and, from
                       when it is revealed here)           one owner, the decrypted sum)
``query.decrypt``      :class:`DecryptRequest`             :class:`DecryptReply` (+ aggregate)
=====================  ==================================  ===================================

A train message can carry the previous round's reveal (:mod:`cohort.federation.reveal`):
its :class:`DecryptRequest` and the reply's :class:`DecryptReply` ride in the same config
record under the :data:`REVEAL` prefix (:func:`embed`, :func:`embedded`), so the message
keeps its three content objects.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from cohort.crypto.hashing import Tag, tagged_hash
from cohort.errors import BadInputError

ENROLL = "query.enroll"
KEYGEN = "query.keygen"
INSTALL_KEY = "query.install_key"
TRAIN = "train"
DECRYPT = "query.decrypt"

_CONFIG_KEY = "cohort"
_ARRAY_KEY = "arrays"
_FLAT = "flat"

T = TypeVar("T", bound="_Schema")


@dataclass(frozen=True)
class _Schema:
    """Base: a flat dataclass of str/int/float/bytes/bool and lists of them."""

    MESSAGE: ClassVar[str] = ""

    def to_config(self) -> ConfigRecord:
        return ConfigRecord(self._values())

    def _values(self, prefix: str = "") -> dict[str, Any]:
        values: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            values[prefix + f.name] = list(value) if isinstance(value, tuple) else value
        return values

    def to_record(self) -> RecordDict:
        return RecordDict({_CONFIG_KEY: self.to_config()})

    def to_json(self) -> dict[str, Any]:
        """The fields as JSON values, for a party's own stored records: bytes as
        ``{"hex": ...}``, tuples as lists (:meth:`from_json` reads them back)."""
        return {k: _to_json(v) for k, v in self._values().items()}

    @classmethod
    def from_json(cls: type[T], data: Mapping[str, Any]) -> T:
        """The schema :meth:`to_json` wrote, every field checked as a message's is
        (BadInputError; a malformed hex string is a ValueError too)."""
        return cls.from_mapping({k: _from_json(v) for k, v in data.items()})

    @classmethod
    def from_record(cls: type[T], content: RecordDict) -> T:
        if _CONFIG_KEY not in content.config_records:
            raise BadInputError(
                f"{cls.MESSAGE or cls.__name__}: message has no '{_CONFIG_KEY}' record"
            )
        return cls.from_mapping(content.config_records[_CONFIG_KEY])

    @classmethod
    def from_mapping(cls: type[T], record: Mapping[str, Any], prefix: str = "") -> T:
        name = cls.MESSAGE or cls.__name__
        kwargs: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            key = prefix + f.name
            if key not in record:
                if f.default is not dataclasses.MISSING:
                    continue  # a field added later, with its default (older stored records)
                raise BadInputError(f"{name}: missing field '{key}'")
            kwargs[f.name] = _coerce(name, key, str(f.type), record[key])
        return cls(**kwargs)


def _to_json(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"hex": value.hex()}
    if isinstance(value, list):
        return [_to_json(v) for v in value]
    return value


def _from_json(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"hex"}:
        return bytes.fromhex(value["hex"])
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    return value


def _coerce(message: str, name: str, annotation: str, value: Any) -> Any:
    expected: dict[str, type | tuple[type, ...]] = {
        "str": str,
        "int": int,
        "float": (float, int),
        "bytes": bytes,
        "bool": bool,
    }
    if annotation.startswith("tuple["):
        inner = annotation[len("tuple[") : -len(", ...]")]
        if not isinstance(value, list | tuple):
            raise BadInputError(
                f"{message}: field '{name}' must be a list, got {type(value).__name__}"
            )
        kind = expected.get(inner)
        if kind is None or not all(isinstance(v, kind) for v in value):
            raise BadInputError(f"{message}: field '{name}' must be a list of {inner}")
        return tuple(value)
    kind = expected.get(annotation)
    if kind is None:
        raise BadInputError(f"{message}: field '{name}' has unsupported type {annotation}")
    if isinstance(value, bool) and annotation != "bool":
        raise BadInputError(f"{message}: field '{name}' must be {annotation}, got bool")
    if not isinstance(value, kind):
        raise BadInputError(
            f"{message}: field '{name}' must be {annotation}, got {type(value).__name__}"
        )
    if annotation == "float":
        return float(typing.cast(float, value))
    return value


# ---------------------------------------------------------------- enrolment and keys
#
# Every request names the study by its manifest hash and carries the round's work only:
# terms (mode, committee, thresholds, DP, model, dealer, roster) come from the manifest the
# data owner's operator approved, never from these messages.


@dataclass(frozen=True)
class EnrollRequest(_Schema):
    MESSAGE: ClassVar[str] = ENROLL
    study_id: str


@dataclass(frozen=True)
class EnrollReply(_Schema):
    """Which roster entry this node is, and its data's size (its keys are in the manifest)."""

    MESSAGE: ClassVar[str] = ENROLL
    party_id: str
    examples: int
    features: int


@dataclass(frozen=True)
class KeygenRequest(_Schema):
    """To the manifest's key dealer: create the study's CKKS context (once)."""

    MESSAGE: ClassVar[str] = KEYGEN
    study_id: str


@dataclass(frozen=True)
class KeygenReply(_Schema):
    """The public context with the dealer's signature, and one Box per other roster owner."""

    MESSAGE: ClassVar[str] = KEYGEN
    party_id: str
    public_context: bytes
    fingerprint: bytes
    dealer_signature: bytes
    recipients: tuple[str, ...]
    boxes: tuple[bytes, ...]


@dataclass(frozen=True)
class InstallKeyRequest(_Schema):
    """A sealed CKKS secret context from the dealer (Box: only the recipient can open it)."""

    MESSAGE: ClassVar[str] = INSTALL_KEY
    study_id: str
    box: bytes
    fingerprint: bytes
    dealer_signature: bytes


@dataclass(frozen=True)
class InstallKeyReply(_Schema):
    MESSAGE: ClassVar[str] = INSTALL_KEY
    party_id: str
    fingerprint: bytes


# ---------------------------------------------------------------- training round


@dataclass(frozen=True)
class TrainInstruction(_Schema):
    """Round r of an approved study; the global model travels beside it as an ArrayRecord."""

    MESSAGE: ClassVar[str] = TRAIN
    study_id: str
    round: int
    weight_unit: int  # largest enrolled example count: owners weight by examples / weight_unit
    # With the previous round's reveal embedded (:func:`embed`): the weight of its client set,
    # sum(examples) / weight_unit, by which the owner divides the sum it decrypts; else 0.0
    reveal_weight: float = 0.0


@dataclass(frozen=True)
class TrainReceipt(_Schema):
    """A data owner's reply: what it did, never the update itself (in ``ckks`` mode)."""

    MESSAGE: ClassVar[str] = TRAIN
    party_id: str
    status: str  # "ok" | "declined" | "failed"
    reason: str
    examples: int
    epsilon: float
    payload_hash: bytes
    delivered: tuple[str, ...]  # committee members that accepted the upload (one, in ckks)
    receipts: tuple[bytes, ...]  # each one's signed upload receipt, in the same order
    # the owner's signed LedgerCommitment (cohort.clients.ledger_commitment) for the round,
    # forwarded to the committee to attest on-chain; empty when the round was not trained
    ledger_commitment: bytes = b""
    # MPC: the hash of the share each delivered member took, in ``delivered`` order (each
    # member's payload differs); empty in the modes with one payload (``payload_hash``)
    payload_hashes: tuple[bytes, ...] = ()


@dataclass(frozen=True)
class DecryptRequest(_Schema):
    """Coordinator -> a data owner of S: the quorum-backed aggregate of client set S.

    ``return_vector`` false asks for the signed hash of the plaintext only: the owner that
    checks another's decryption need not send the whole sum back (it changes only what the
    reply carries, never what the owner checks before it decrypts)."""

    MESSAGE: ClassVar[str] = DECRYPT
    study_id: str
    round: int
    client_ids: tuple[str, ...]
    aggregate: bytes
    aggregate_hash: bytes
    member_ids: tuple[str, ...]
    member_signatures: tuple[bytes, ...]
    return_vector: bool = True


@dataclass(frozen=True)
class DecryptReply(_Schema):
    """The decryptor's signature covers the aggregate hash and the hash of what it returns,
    so a wrong decryption is attributable (see :func:`decryption_digest`)."""

    MESSAGE: ClassVar[str] = DECRYPT
    party_id: str
    round: int
    length: int
    plain_hash: bytes
    signature: bytes


#: Key prefix of a schema embedded in another message's config record (:func:`embed`).
REVEAL = "reveal."


def embed(content: RecordDict, part: _Schema) -> RecordDict:
    """Add ``part``'s fields to ``content``'s config record, each under :data:`REVEAL`."""
    if _CONFIG_KEY not in content.config_records:
        content[_CONFIG_KEY] = ConfigRecord()
    record = content.config_records[_CONFIG_KEY]
    for key, value in part._values(REVEAL).items():
        record[key] = value
    return content


def embedded(content: RecordDict, cls: type[T]) -> T | None:
    """The ``cls`` that :func:`embed` put in ``content``; None when it carries none."""
    record = content.config_records.get(_CONFIG_KEY)
    if record is None or not any(key.startswith(REVEAL) for key in record):
        return None
    return cls.from_mapping(record, REVEAL)


# ---------------------------------------------------------------- vectors
#
# A message's one flat float vector (the global model, a plaintext update in ``none`` mode, a
# decrypted aggregate) travels as little-endian bytes inside the message's own config record,
# beside the schema's fields: Flower moves each record and each array (and each array's
# chunk) of a message as a separate object, one request each way through the SuperLink, so
# an ArrayRecord would cost three more objects per message. A vector over
# :data:`INLINE_VECTOR_MAX` bytes goes as an ArrayRecord, which Flower splits into chunks.
# Either way the reader applies the same checks (1-D, length, every value finite).

#: The config-record keys of an inline vector: its bytes and their NumPy dtype.
VECTOR_KEYS = ("vector", "vector-dtype")
#: Largest vector (bytes) carried inline; Flower's own array chunk is 5 MB.
INLINE_VECTOR_MAX = 1 << 20
_DTYPES: dict[str, np.dtype[Any]] = {"<f4": np.dtype("<f4"), "<f8": np.dtype("<f8")}


def vector_record(vector: np.ndarray) -> ArrayRecord:
    """One flat float vector as an ArrayRecord."""
    return ArrayRecord({_FLAT: Array(np.ascontiguousarray(vector))})


def put_vector(content: RecordDict, vector: np.ndarray) -> RecordDict:
    """Add ``vector`` to ``content`` (inline if 1-D float32/float64 and small); returns it."""
    array = np.asarray(vector)
    dtype = array.dtype.newbyteorder("<").str if array.dtype.kind == "f" else ""
    if array.ndim != 1 or dtype not in _DTYPES or array.nbytes > INLINE_VECTOR_MAX:
        content[_ARRAY_KEY] = vector_record(array)
        return content
    if _CONFIG_KEY not in content.config_records:
        content[_CONFIG_KEY] = ConfigRecord()
    record = content.config_records[_CONFIG_KEY]
    record[VECTOR_KEYS[0]] = np.ascontiguousarray(array, dtype=_DTYPES[dtype]).tobytes()
    record[VECTOR_KEYS[1]] = dtype
    return content


def _raw_vector(content: RecordDict, message: str) -> np.ndarray:
    config = content.config_records.get(_CONFIG_KEY)
    inline = config is not None and VECTOR_KEYS[0] in config
    if inline and _ARRAY_KEY in content.array_records:
        raise BadInputError(f"{message}: message carries two vectors")
    if not inline:
        if _ARRAY_KEY not in content.array_records:
            raise BadInputError(f"{message}: message carries no vector")
        record = content.array_records[_ARRAY_KEY]
        if _FLAT not in record:
            raise BadInputError(f"{message}: array record has no '{_FLAT}' array")
        return np.asarray(record[_FLAT].numpy())
    assert config is not None
    data, dtype = config[VECTOR_KEYS[0]], config.get(VECTOR_KEYS[1])
    if not isinstance(data, bytes) or not isinstance(dtype, str) or dtype not in _DTYPES:
        raise BadInputError(f"{message}: vector must be bytes of dtype {' or '.join(_DTYPES)}")
    if len(data) % _DTYPES[dtype].itemsize:
        raise BadInputError(f"{message}: vector bytes are not whole {dtype} values")
    return np.frombuffer(data, dtype=_DTYPES[dtype]).copy()


def get_vector(content: RecordDict, *, message: str, length: int | None = None) -> np.ndarray:
    """Read the flat vector of a message; BadInputError on absence, wrong shape or NaN."""
    vector = _raw_vector(content, message)
    if vector.ndim != 1:
        raise BadInputError(f"{message}: expected a 1-D vector, got shape {vector.shape}")
    if length is not None and vector.shape[0] != length:
        raise BadInputError(f"{message}: expected {length} values, got {vector.shape[0]}")
    if not np.all(np.isfinite(vector)):
        bad = int(np.flatnonzero(~np.isfinite(vector))[0])
        raise BadInputError(f"{message}: value at index {bad} is not finite")
    return vector


def has_vector(content: RecordDict) -> bool:
    """Whether ``content`` carries a vector (inline or as an array record), checked or not."""
    config = content.config_records.get(_CONFIG_KEY)
    return _ARRAY_KEY in content.array_records or (config is not None and VECTOR_KEYS[0] in config)


def describe_vector(content: RecordDict) -> tuple[str, str, int] | None:
    """(record, array, values) of the inline vector of ``content``, named as its ArrayRecord
    would be; None when none is inline. Describes a message without decoding it
    (:mod:`cohort.federation.transcript`); an undecodable vector counts 0 values."""
    config = content.config_records.get(_CONFIG_KEY)
    if config is None or VECTOR_KEYS[0] not in config:
        return None
    data, dtype = config[VECTOR_KEYS[0]], config.get(VECTOR_KEYS[1])
    if not isinstance(data, bytes) or not isinstance(dtype, str) or dtype not in _DTYPES:
        return _ARRAY_KEY, _FLAT, 0
    return _ARRAY_KEY, _FLAT, len(data) // _DTYPES[dtype].itemsize


def plaintext_hash(vector: np.ndarray) -> bytes:
    """``tagged_hash(Tag.PLAINTEXT, little-endian float64 bytes)`` of a decrypted aggregate."""
    return tagged_hash(Tag.PLAINTEXT, np.ascontiguousarray(vector, dtype="<f8").tobytes())


def decryption_digest(
    *, study_id: str, round: int, aggregate_hash: bytes, plain_hash: bytes
) -> bytes:
    """What a decryptor signs: ``tagged_hash(DECRYPTION, study, u64 round, aggregate, plain)``.

    Two owners who decrypt one aggregate must return the same plaintext hash; a differing
    one is a wrong decryption, attributable to the owner who signed it.
    """
    return tagged_hash(
        Tag.DECRYPTION,
        bytes.fromhex(study_id),
        round.to_bytes(8, "big"),
        aggregate_hash,
        plain_hash,
    )
