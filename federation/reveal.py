"""A round's sum revealed beside the next round's training: one message exchange, not two.

Run by the coordinator and by each data owner. In CKKS mode the coordinator used to send
the round's quorum-signed, finalized aggregate to two owners of its client set S to decrypt
(one message exchange), apply the mean update itself, and only then send the new model out
for the next round (a second exchange). When every owner the next round trains is in S, it
now sends the next round's train message with the current model, the round's
:class:`~cohort.federation.wire.DecryptRequest` and the weight of S embedded
(:func:`cohort.federation.wire.embed`). Each owner

1. decrypts the aggregate under exactly the checks of a decryption message (round, client
   set and local ``min_clients``, the quorum's signatures, the contract's finalization when
   its policy names a chain, at most one aggregate per round, see
   :func:`cohort.federation.modes.ckks.owner.decrypt`),
2. applies the mean update itself (:func:`next_model`, the coordinator's own arithmetic),
3. trains the next round from that model, and
4. returns its receipt with its signed decryption; the owner the rotation names first also
   returns the decrypted sum, the others its signed hash only.

The coordinator checks the decryptions as it checks decryption replies (two owners agreeing
on the signed hash, one of them with the sum that hashes to it), applies the same mean
update, evaluates, and concludes the previous round. An owner whose decryption disagrees
with the agreed one is a faulty decryptor and its training (from another model) is not used;
when no two agree, the coordinator asks further owners with decryption messages, as before.
Whatever the coordinator sends, an owner decrypts only what it would decrypt when asked
directly, and it learns nothing it would not: the new global model it trains is the model
it would have been sent. The weight only scales the model the coordinator chooses anyway; an
owner refuses one that is not finite or outside (0, |S|].

The coordinator reveals with decryption messages, as before, after the last round, when an
owner of the next round is not in S (it could not decrypt), and in the modes whose sum the
committee reveals itself (MPC, none).
"""

from __future__ import annotations

import math

import numpy as np

from cohort.errors import BadInputError
from cohort.federation import wire


def next_model(
    global_vec: np.ndarray, total: np.ndarray, *, weight: float, server_lr: float
) -> np.ndarray:
    """The model after a round: ``global + server_lr * total / weight`` in float64, as
    float32. Owners sent ``update * examples / weight_unit``; ``weight`` is the sum over S
    of ``examples / weight_unit``. The coordinator and every revealing owner compute it
    with this one function, so they hold the same bits."""
    mean = np.asarray(total, dtype=np.float64) / weight
    return (global_vec.astype(np.float64) + server_lr * mean).astype(np.float32)


def check_reveal(instruction: wire.TrainInstruction, request: wire.DecryptRequest) -> None:
    """What a train message's embedded reveal must be before an owner decrypts anything:
    the round just before the one it trains, with a usable weight of its client set."""
    if request.study_id != instruction.study_id:
        raise BadInputError(
            f"train round {instruction.round}: the reveal names study {request.study_id[:16]}"
        )
    if request.round != instruction.round - 1:
        raise BadInputError(
            f"train round {instruction.round}: the reveal is of round {request.round}, "
            f"only round {instruction.round - 1} rides with it"
        )
    weight = instruction.reveal_weight
    if not math.isfinite(weight) or not 0.0 < weight <= len(request.client_ids):
        raise BadInputError(
            f"train round {instruction.round}: reveal weight {weight!r} is outside "
            f"(0, {len(request.client_ids)}]"
        )


__all__ = ["check_reveal", "next_model"]
