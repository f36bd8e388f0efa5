"""Run one MPC norm check as a committee member: the party in a fresh forked process.

Run by each participating committee member (``job.rank``); the rank-0 member also starts
the TTP process when ``start_ttp``. CrypTen's communicator is process-global, so it never
runs inside the member's long-running service: each check gets new processes, which are
killed on every path out of :func:`check_norms`. They are forked from a forkserver
(:data:`START_METHOD`, started by the first check) that has torch and CrypTen imported but
never initialises CrypTen, so a check skips the imports (several seconds on 2 cores) and
still starts with a fresh communicator; each process reseeds torch's RNG from
``os.urandom`` (:func:`cohort.crypto.crypten_norm.party_session`, :func:`run_ttp`).
Failures become :class:`~cohort.errors.ProtocolAbort` naming the stage (rendezvous,
compute, TTP); no share, value or exception text from the party reaches a log or a
message, only exception types.
"""

from __future__ import annotations

import logging
import multiprocessing
import time
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Final

from cohort.aggregator.mpc_member import NORM_CHECK_PRELOAD, NORM_CHECK_START_METHOD
from cohort.crypto.crypten_compat import load_crypten
from cohort.crypto.crypten_norm import NormCheckJob, norm_bits, party_session, run_ttp
from cohort.errors import ProtocolAbort

# Imported, never initialised, here: the forkserver preloads this module, so a check's
# processes start with CrypTen loaded (about 0.3-1 s each otherwise).
load_crypten()

log = logging.getLogger(__name__)

#: Seconds a finished party or TTP gets to leave before it is killed.
EXIT_GRACE_S = 5.0
POLL_S = 0.05
#: Start method of the party/TTP processes, and what its server imports once (a serving
#: member starts it early, :func:`~cohort.aggregator.mpc_member.warm_norm_checks`; otherwise
#: the first check does). ``__main__`` is multiprocessing's default.
START_METHOD: Final = NORM_CHECK_START_METHOD
PRELOAD = list(NORM_CHECK_PRELOAD)
JOINED = "joined"
RESULT = "result"
ERROR = "error"


def _party_main(job: NormCheckJob, conn: Connection) -> None:
    """Child process: join, report, compute, report the bits (or the error type)."""
    stage = "rendezvous"
    try:
        with party_session(job):
            conn.send((JOINED, None))
            stage = "compute"
            bits = norm_bits(job)
            conn.send((RESULT, bits))
    except BaseException as exc:  # report the type only: the text may carry values
        conn.send((ERROR, f"{stage}: {type(exc).__name__}"))
    finally:
        conn.close()


def _ttp_main(rendezvous: str, world_size: int, timeout_s: float) -> None:
    run_ttp(rendezvous, world_size, timeout_s)


def _stop(processes: list[BaseProcess], grace_s: float) -> None:
    deadline = time.monotonic() + grace_s
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
    for process in processes:
        if process.is_alive():
            process.kill()
            process.join()
        process.close()


def check_norms(job: NormCheckJob, *, start_ttp: bool) -> list[bool]:
    """Accept bit per client (``||update|| <= job.bound``), computed in MPC with the other
    members. Raises :class:`ProtocolAbort` when a peer or the TTP never joins, a process dies
    or ``job.timeout_s`` passes; the subprocesses are gone when this returns or raises."""
    if start_ttp and job.rank != 0:
        raise ProtocolAbort("norm check: only the rank-0 member starts the TTP")
    ctx = multiprocessing.get_context(START_METHOD)
    ctx.set_forkserver_preload(PRELOAD)
    receiver, sender = ctx.Pipe(duplex=False)
    party = ctx.Process(target=_party_main, args=(job, sender), name=f"norm-party-{job.rank}")
    processes: list[BaseProcess] = [party]
    ttp: BaseProcess | None = None
    if start_ttp:
        ttp = ctx.Process(
            target=_ttp_main, args=(job.rendezvous, job.world_size, job.timeout_s), name="norm-ttp"
        )
        processes.append(ttp)
    stage = "rendezvous"
    deadline = time.monotonic() + job.timeout_s
    started: list[BaseProcess] = []
    finished = False  # a party that delivered its bits gets a grace period to shut down
    try:
        for process in processes:
            process.start()
            started.append(process)
        sender.close()
        while True:
            if receiver.poll(POLL_S):
                try:
                    kind, payload = receiver.recv()
                except EOFError:
                    raise ProtocolAbort(
                        f"norm check: party {job.rank} exited during {stage} "
                        f"(code {party.exitcode})"
                    ) from None
                if kind == JOINED:
                    stage = "compute"
                    log.info("norm check: party %d joined", job.rank)
                elif kind == RESULT:
                    finished = True
                    log.debug("norm check: party %d has its bits", job.rank)
                    return list(payload)
                elif stage == "rendezvous":
                    raise ProtocolAbort(
                        f"norm check: party {job.rank} failed during {payload} "
                        "(a peer or the TTP never joined)"
                    )
                else:
                    raise ProtocolAbort(f"norm check: party {job.rank} failed during {payload}")
                continue
            if ttp is not None and ttp.exitcode is not None and not receiver.poll():
                # The TTP's rendezvous has the same timeout as this wait: when a peer never
                # joins, either may give up first.
                why = ": a peer never joined, or the TTP failed" if stage == "rendezvous" else ""
                raise ProtocolAbort(
                    f"norm check: TTP died during {stage} (code {ttp.exitcode}){why}"
                )
            if time.monotonic() > deadline:
                what = "a peer or the TTP never joined" if stage == "rendezvous" else "no result"
                raise ProtocolAbort(
                    f"norm check: timed out after {job.timeout_s:g} s during {stage}: {what}"
                )
    finally:
        receiver.close()
        sender.close()
        _stop(started, EXIT_GRACE_S if finished else 0.0)
