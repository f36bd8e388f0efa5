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

from collections.abc import Callable
from pathlib import Path

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from cohort.errors import BadInputError
from cohort.federation import hospital, wire
from cohort.federation.policy import HospitalPolicy

SettingsResolver = Callable[[Context], hospital.HospitalSettings]


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


def make_client_app(resolve: SettingsResolver) -> ClientApp:
    """Build the ClientApp; ``resolve`` gives the owner's local settings for a node."""
    app = ClientApp()
    resolve = _with_memo(resolve)

    @app.query("enroll")
    def _enroll(msg: Message, context: Context) -> Message:
        reply = hospital.enroll(resolve(context), wire.EnrollRequest.from_record(msg.content))
        return Message(reply.to_record(), reply_to=msg)

    @app.query("keygen")
    def _keygen(msg: Message, context: Context) -> Message:
        reply = hospital.keygen(resolve(context), wire.KeygenRequest.from_record(msg.content))
        return Message(reply.to_record(), reply_to=msg)

    @app.query("install_key")
    def _install_key(msg: Message, context: Context) -> Message:
        reply = hospital.install_key(
            resolve(context), wire.InstallKeyRequest.from_record(msg.content)
        )
        return Message(reply.to_record(), reply_to=msg)

    @app.train()
    def _train(msg: Message, context: Context) -> Message:
        instruction = wire.TrainInstruction.from_record(msg.content)
        global_model = wire.get_vector(msg.content, message=wire.TRAIN)
        outcome = hospital.train(resolve(context), instruction, global_model)
        content = outcome.receipt.to_record()
        if outcome.update is not None:
            wire.put_vector(content, outcome.update)
        return Message(content, reply_to=msg)

    @app.query("decrypt")
    def _decrypt(msg: Message, context: Context) -> Message:
        reply, vector = hospital.decrypt(
            resolve(context), wire.DecryptRequest.from_record(msg.content)
        )
        return Message(wire.put_vector(reply.to_record(), vector), reply_to=msg)

    return app


app = make_client_app(settings_from_node_config)
