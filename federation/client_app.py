"""Cohort's Flower ClientApp: the data owner's entry point.

Each handler decodes one message with :mod:`cohort.federation.wire`, runs the matching step
of :mod:`cohort.federation.hospital` and encodes the reply. The owner's local settings (data,
key store, own epsilon cap) come from the SuperNode, never from the coordinator:

* deployment: ``cohort node start --config hospital.toml`` starts a SuperNode whose
  node-config names that file (``config-file="/etc/cohort/hospital.toml"``); the ClientApp
  reads the hospital's data path, policy and work directory from it, on the node (see
  :mod:`cohort.federation.deploy_config`). A bare ``flower-supernode --node-config
  'party-id="h1" workdir="/srv/cohort" data="/data/h1.csv" epsilon-cap=3.0'`` works too;
* ``cohort simulate``: :func:`make_client_app` with a resolver from Flower's partition id
  to :class:`~cohort.federation.hospital.HospitalSettings`.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from cohort.errors import BadInputError, VerificationError
from cohort.federation import hospital, wire
from cohort.federation.policy import HospitalPolicy
from cohort.logs import fields, get_logger

SettingsResolver = Callable[[Context], hospital.HospitalSettings]
Handler = Callable[[Message, Context], Message]

log = get_logger(__name__)


_POLICY_KEYS = ("epsilon-cap", "delta", "min-clients", "modes", "noise-seed", "chain-url")


def settings_from_node_config(context: Context) -> hospital.HospitalSettings:
    """Read a deployed SuperNode's ``--node-config`` into HospitalSettings.

    ``party-id``, ``workdir``, ``data`` and ``epsilon-cap`` are required; ``delta``,
    ``min-clients``, ``modes`` (comma-separated), ``noise-seed``, ``chain-url``,
    ``label-column`` and ``dataset-id`` are optional. A model name is only ever looked up in
    the built-in architectures (and the operator's own registry), never imported from a
    value the coordinator can influence.
    """
    cfg = context.node_config
    if "config-file" in cfg:
        return _hospital_file(str(cfg["config-file"]))
    missing = [k for k in ("party-id", "workdir", "data", "epsilon-cap") if k not in cfg]
    if missing:
        raise BadInputError(f"SuperNode node-config is missing {', '.join(missing)}")
    policy = HospitalPolicy.from_mapping({k: cfg[k] for k in _POLICY_KEYS if k in cfg})
    return hospital.HospitalSettings(
        party_id=str(cfg["party-id"]),
        workdir=str(cfg["workdir"]),
        data=str(cfg["data"]),
        policy=policy,
        label_column=str(cfg.get("label-column", "label")),
        dataset_id=str(cfg.get("dataset-id", "default")),
    )


def _hospital_file(path: str) -> hospital.HospitalSettings:
    from cohort.federation.deploy_config import HospitalConfig

    return HospitalConfig.load(Path(path)).settings()


def _with_memo(resolve: SettingsResolver) -> SettingsResolver:
    """Resolve the owner's settings and point the accounting memo at its work directory."""

    def settings(context: Context) -> hospital.HospitalSettings:
        from cohort.clients.accounting import use_disk_memo

        resolved = resolve(context)
        use_disk_memo(Path(resolved.workdir) / "cache" / "accounting")
        return resolved

    return settings


def _traced(handler: Handler) -> Handler:
    """``handler``, logging one ``message handled`` line per message at INFO: its type, its
    id (the coordinator's reply names it), when the handler started, how long it ran and
    the CPU seconds its process spent meanwhile (``cpu_s``: in a deployed task fork the
    handler's own; in a simulation's actor, which runs one message at a time, the handler's
    plus the actor's idle runtime threads).

    With the SuperNode's ``message pulled`` and ``reply pushed`` lines
    (:mod:`cohort.federation.supernode_loop`) and the coordinator's ``rounds[].exchanges``
    they time each hop of a message exchange (``bench/deploy.py``). Ids and times only.
    """

    @functools.wraps(handler)
    def traced(msg: Message, context: Context) -> Message:
        started = time.time()
        cpu = time.process_time()
        ok = False
        try:
            reply = handler(msg, context)
            ok = True
            return reply
        finally:
            log.info(
                "message handled",
                extra=fields(
                    type=msg.metadata.message_type,
                    message=msg.metadata.message_id,
                    started=round(started, 3),
                    seconds=round(time.time() - started, 3),
                    cpu_s=round(time.process_time() - cpu, 3),
                    ok=ok,
                ),
            )

    return traced


#: Work a handler left for once its reply has gone (see :func:`after_reply`).
_after_reply: list[Callable[[], object]] = []
#: True in a warm runner's task fork (:func:`_fork_task`), which runs that work.
_in_warm_fork = False
#: The niceness that work runs at: the study's processes on the same cores come first.
AFTER_REPLY_NICE = 10


def after_reply(work: Callable[[], object]) -> None:
    """Run ``work`` after this message's reply has left, if this is a warm task fork.

    A warm fork (``[hospital] clientapp = "warm"``) runs it once Flower's ``run_clientapp``
    has pushed the reply and the task's context to the SuperNode, at niceness
    :data:`AFTER_REPLY_NICE`, before the fork exits; Flower ends the process at most 5 s
    after that. Elsewhere (``cohort simulate``, Flower's own ``flwr-clientapp``) it is
    dropped: only work that prepares a later message belongs here, never part of this
    one's answer. A failure is logged as its type only and changes nothing already sent.
    """
    if _in_warm_fork:
        _after_reply.append(work)


def _run_after_reply() -> None:
    with contextlib.suppress(OSError):
        os.nice(AFTER_REPLY_NICE)
    while _after_reply:
        work = _after_reply.pop(0)
        try:
            work()
        except Exception as exc:
            log.warning("after-reply work failed", extra=fields(error=type(exc).__name__))


def make_client_app(resolve: SettingsResolver) -> ClientApp:
    """Build the ClientApp; ``resolve`` gives the owner's local settings for a node."""
    app = ClientApp()
    resolve = _with_memo(resolve)

    @app.query("enroll")
    @_traced
    def _enroll(msg: Message, context: Context) -> Message:
        request = wire.EnrollRequest.from_record(msg.content)
        settings = resolve(context)
        reply = hospital.enroll(settings, request)
        after_reply(functools.partial(hospital.foresee_study, settings, request.study_id))
        return Message(reply.to_record(), reply_to=msg)

    @app.query("keygen")
    @_traced
    def _keygen(msg: Message, context: Context) -> Message:
        reply = hospital.keygen(resolve(context), wire.KeygenRequest.from_record(msg.content))
        return Message(reply.to_record(), reply_to=msg)

    @app.query("install_key")
    @_traced
    def _install_key(msg: Message, context: Context) -> Message:
        reply = hospital.install_key(
            resolve(context), wire.InstallKeyRequest.from_record(msg.content)
        )
        return Message(reply.to_record(), reply_to=msg)

    @app.train()
    @_traced
    def _train(msg: Message, context: Context) -> Message:
        instruction = wire.TrainInstruction.from_record(msg.content)
        global_model = wire.get_vector(msg.content, message=wire.TRAIN)
        reveal = wire.embedded(msg.content, wire.DecryptRequest)
        settings = resolve(context)
        outcome = hospital.train(settings, instruction, global_model, reveal)
        if outcome.receipt.status == "ok":
            after_reply(
                functools.partial(hospital.foresee_next_round, settings, instruction.study_id)
            )
        content = outcome.receipt.to_record()
        if outcome.update is not None:
            wire.put_vector(content, outcome.update)
        if outcome.revealed is not None:
            answer, vector = outcome.revealed
            wire.embed(content, answer)
            if reveal is not None and reveal.return_vector:
                wire.put_vector(content, vector)
        return Message(content, reply_to=msg)

    @app.query("decrypt")
    @_traced
    def _decrypt(msg: Message, context: Context) -> Message:
        request = wire.DecryptRequest.from_record(msg.content)
        reply, vector = hospital.decrypt(resolve(context), request)
        content = reply.to_record()
        if request.return_vector:  # else the signed hash alone: a check of another's sum
            wire.put_vector(content, vector)
        return Message(content, reply_to=msg)

    return app


app = make_client_app(settings_from_node_config)


# --------------------------------------------------------------------------- warm runner

TASK_POLL_S = 0.05  # how often the runner asks its own SuperNode for a task, without a pipe
_CHILD_STOP_S = 10.0
# What a message imports only when it gets there (Opacus pulls in SciPy: ~1,300 modules,
# 2-5 s here; torch's first optimizer step and Opacus's grad samplers pull in TorchDynamo
# and functorch: ~190 modules, 1-2 s, and several seconds with three hospitals on two
# cores): the runner imports them once, before it forks any task. Imports only; no torch op
# runs in the runner, so no thread pool exists to be copied into a fork.
WARM_IMPORTS = (
    "cohort.clients.dp_sgd",
    "opacus.validators",
    "opacus.accountants",
    "opacus.accountants.utils",
    "scipy.special",
    "scipy.optimize",
    "torch._dynamo",
    "torch._functorch.make_functional",
    "torch._functorch.deprecated",
    "torch.nn.utils._expanded_weights",
    "torch.onnx",
    # first used by every message (the identity's key store; the committee's channels; the
    # owner's mode table): a few milliseconds each, in every fork
    "cryptography.hazmat.backends.openssl",
    "grpc.experimental",
    "cohort.federation.modes.mpc.owner",
    "cohort.federation.modes.none.owner",
)


def serve_tasks(
    runtime_api_address: str,
    *,
    running: Callable[[], bool],
    poll_s: float = TASK_POLL_S,
    threads: int = 0,
    wake_fd: int | None = None,
    fresh_interpreter: bool = False,
) -> None:
    """Run a SuperNode's ClientApp tasks (``flower-supernode --isolation process``).

    Run by ``cohort node start`` in place of Flower's SuperExec, which starts a cold
    ``flwr-clientapp`` process per message (seconds of torch, Opacus and TenSEAL imports
    each). This process has the ClientApp imported already (this module); each task the
    SuperNode hands out runs in a fresh fork of it, through Flower's own ``run_clientapp``
    with that task's token, so a message costs no imports and nothing one message leaves in
    memory reaches the next. ``threads`` (>= 1) sets each task's torch threads; 0 leaves
    torch's default (one per core). With ``wake_fd``, the read end of the pipe on which the
    node announces each task it creates (:mod:`cohort.federation.supernode_loop`), the runner
    asks for a task when a byte arrives (and every ``TASK_FALLBACK_S`` regardless); without
    it, every ``poll_s``. Returns once ``running()`` is false, after stopping the children
    still at work.

    With ``fresh_interpreter`` (``[hospital] clientapp = "subprocess"``) each task runs in a
    new interpreter instead (:mod:`cohort.federation.task_process`), under the same checks,
    and this process imports nothing for it.
    """
    import importlib
    import signal
    import time

    from flwr.proto.runtime_pb2 import AcquireTaskRequest
    from flwr.supercore.constant import TaskType
    from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor
    from flwr.supercore.runtime import RuntimeHttpClient

    from cohort.federation.flower_waits import tune_object_transfers
    from cohort.federation.supernode_loop import wait_for_task

    if not fresh_interpreter:
        for name in WARM_IMPORTS:
            importlib.import_module(name)
        tune_object_transfers()  # inherited by every task's fork
        _install_each_fab_once()
    start_task = _spawn_task if fresh_interpreter else _fork_task
    client = RuntimeHttpClient.from_server_address(
        server_address=runtime_api_address,
        insecure=True,
        root_certificates=None,
        interceptors=[RuntimeVersionHttpInterceptor(component_name="SuperExec")],
    )
    request = AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP.value])
    children: set[int] = set()
    try:
        while running():
            children = {pid for pid in children if not _reaped(pid, log)}
            try:
                response = client.AcquireTask(request)
            except Exception:  # the node is starting or stopping: ask again
                time.sleep(max(poll_s, 0.5))
                continue
            if response.HasField("task") and response.token:
                children.add(start_task(runtime_api_address, response.token, threads))
                log.info("clientapp task", extra=fields(task_id=response.task.task_id))
                continue
            if wake_fd is None or not wait_for_task(wake_fd):
                wake_fd = None  # no pipe, or the node closed it: ask every poll_s
                time.sleep(poll_s)
    finally:
        client.close()
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + _CHILD_STOP_S
        for pid in children:
            while os.waitpid(pid, os.WNOHANG) == (0, 0) and time.monotonic() < deadline:
                time.sleep(0.05)
            with contextlib.suppress(ChildProcessError, ProcessLookupError):
                if os.waitpid(pid, os.WNOHANG) == (0, 0):
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)


def _reaped(pid: int, log: logging.Logger) -> bool:
    """True once task process ``pid`` has exited, logging its exit code, its CPU seconds and
    its minor page faults (a fork's: the pages it copied from the runner or newly touched)."""
    done, status, usage = os.wait4(pid, os.WNOHANG)
    if not done:
        return False
    code = os.waitstatus_to_exitcode(status)
    log.log(
        logging.INFO if code == 0 else logging.WARNING,
        "clientapp task finished",
        extra=fields(
            pid=pid,
            exit_code=code,
            cpu_s=round(usage.ru_utime + usage.ru_stime, 3),
            page_faults=usage.ru_minflt,
        ),
    )
    return True


#: Under the node's FLWR_HOME: one file per FAB (named by its SHA-256) this node installed.
VERIFIED_FABS = "cohort-installed-fabs"


def _install_each_fab_once() -> None:
    """Flower's ``run_clientapp`` extracts the run's FAB and verifies every file's hash for
    each message (0.3 s here), although it installs a FAB only once. Here a FAB whose bytes
    this node has already installed, verified, is not extracted again: Flower's
    ``install_from_fab`` runs for the first message with those bytes (same SHA-256) and
    writes a marker naming the installed folder; later messages with the same bytes
    reuse that folder, as Flower itself does once it exists."""
    import hashlib

    from flwr.supercore.utils import get_flwr_home
    from flwr.supernode.runtime import run_clientapp as flower_task

    from cohort.files import write_atomic

    install = getattr(flower_task, "install_from_fab", None)
    if install is None:
        raise RuntimeError("this flwr's run_clientapp has no install_from_fab (1.42 expected)")

    def install_once(fab_file: Path | bytes, *args: Any, **kwargs: Any) -> Path:
        if not isinstance(fab_file, bytes):
            return Path(install(fab_file, *args, **kwargs))
        check_fab_carries_no_code(fab_file)
        marker = get_flwr_home() / VERIFIED_FABS / hashlib.sha256(fab_file).hexdigest()
        with contextlib.suppress(OSError, UnicodeDecodeError):
            installed = Path(marker.read_text(encoding="utf-8"))
            if installed.is_dir():
                return installed
        installed = Path(install(fab_file, *args, **kwargs))
        marker.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(marker, str(installed.resolve()).encode("utf-8"))
        return installed

    setattr(flower_task, "install_from_fab", install_once)  # noqa: B010 (a module global)


#: What a Cohort FAB may hold (federation/FAB.md): Flower's pyproject.toml and .info/, notes.
_FAB_FILES = ("pyproject.toml",)


def check_fab_carries_no_code(fab: bytes) -> None:
    """VerificationError unless the run's FAB holds only Flower's ``pyproject.toml`` and
    ``.info/`` files and Markdown notes, as Cohort's own FAB does (federation/FAB.md).

    A node runs the Cohort its operator installed; Flower puts a FAB's folder first on the
    import path of a fresh ClientApp process, so a bundle with modules in it is refused
    before it is installed, whatever they are called.
    """
    import io
    import zipfile

    try:
        names = zipfile.ZipFile(io.BytesIO(fab)).namelist()
    except zipfile.BadZipFile:
        raise VerificationError("the run's app bundle (FAB) is not a zip archive") from None
    for name in names:
        if name in _FAB_FILES or name.startswith(".info/") or name.endswith(".md"):
            continue
        raise VerificationError(
            f"the run's app bundle carries {name[:80]!r}: this node runs the Cohort its "
            "operator installed, not code sent with a run (refused before installing it)"
        )


def run_task(runtime_api_address: str, token: str, *, parent_pid: int, threads: int) -> None:
    """Flower's own ``run_clientapp`` for the task ``token`` names, from this node's runtime
    API, with ``threads`` torch threads (0: torch's default); ends with ``SystemExit`` as
    Flower does. Run in each task process, a warm fork or a new interpreter."""
    from flwr.supernode.runtime.run_clientapp import run_clientapp

    if threads:
        import torch

        torch.set_num_threads(threads)
    run_clientapp(
        runtime_api_address=runtime_api_address,
        token=token,
        insecure=True,
        parent_pid=parent_pid,
        runtime_dependency_install=False,
    )


def _spawn_task(runtime_api_address: str, token: str, threads: int = 0) -> int:
    """Start one fresh interpreter that runs one task (:mod:`cohort.federation.task_process`);
    its pid. The token goes to its standard input, not its command line."""
    import sys

    from cohort.logs import ROOT

    # the task logs at this runner's level, however it was set (--log-level or the variable)
    level = logging.getLevelName(logging.getLogger(ROOT).getEffectiveLevel())
    env = {**os.environ, "COHORT_LOG_LEVEL": level}
    read, write = os.pipe()
    try:
        argv = [sys.executable, "-m", "cohort.federation.task_process"]
        argv += [runtime_api_address, str(threads), str(os.getpid())]
        pid = os.posix_spawn(
            sys.executable, argv, env, file_actions=[(os.POSIX_SPAWN_DUP2, read, 0)]
        )
    finally:
        os.close(read)
    try:  # a token is a few hundred bytes: the pipe holds it whether or not the child reads
        os.write(write, token.encode("ascii"))
    finally:
        os.close(write)
    return pid


def _fork_task(runtime_api_address: str, token: str, threads: int = 0) -> int:
    """Fork one child that runs one task with Flower's ``run_clientapp``, then the work its
    handler left for after the reply (:func:`after_reply`); its pid."""
    global _in_warm_fork
    import signal
    import sys
    import traceback

    parent = os.getpid()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:  # the child: never returns into the runner's loop
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        _in_warm_fork = True
        try:
            run_task(runtime_api_address, token, parent_pid=parent, threads=threads)
            code = 0
        except SystemExit as exc:  # flwr_exit ends every task this way
            code = exc.code if isinstance(exc.code, int) else 1
        if code == 0:  # the reply and the task's context are at the SuperNode
            _run_after_reply()
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
