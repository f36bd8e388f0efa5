"""How a committee member reaches the other members for copies of uploads (Fetch over gRPC).

Run by a committee member during Replicate (:meth:`CommitteeMember.replicate
<cohort.aggregator.member.CommitteeMember.replicate>`). The channel to each peer is built
from the study manifest exactly as the coordinator's and the data owners' are: the study
CA, the peer's member id as the certificate name and its pinned fingerprint
(:class:`~cohort.crypto.tls.ChannelTls`). One client per peer endpoint, reused across
fetches; closed with the member.
"""

from __future__ import annotations

import threading

from cohort.aggregator.client import MemberClient
from cohort.aggregator.replication import FetchRequest
from cohort.crypto.tls import ChannelTls
from cohort.federation.manifest import CommitteeEntry, Manifest

FETCH_TIMEOUT_S = 300.0
"""Longest wait for one copy (a 1M-value CKKS upload is ~28 MB)."""


class PeerFetcher:
    """A :data:`~cohort.aggregator.replication.Fetcher` over gRPC and pinned TLS."""

    def __init__(self, *, timeout_s: float = FETCH_TIMEOUT_S) -> None:
        self._timeout = timeout_s
        self._lock = threading.Lock()
        self._clients: dict[tuple[str, str, bytes, bytes], MemberClient] = {}

    def __call__(self, manifest: Manifest, peer: CommitteeEntry, request: FetchRequest) -> bytes:
        return self._client(manifest, peer).fetch(request)

    def _client(self, manifest: Manifest, peer: CommitteeEntry) -> MemberClient:
        ca = manifest.tls_ca.encode("ascii")
        key = (peer.endpoint, peer.member_id, peer.tls_fingerprint, ca)
        with self._lock:
            client = self._clients.get(key)
            if client is None:
                tls = ChannelTls(ca, peer.member_id, peer.tls_fingerprint or None) if ca else None
                client = MemberClient(peer.endpoint, tls=tls, upload_timeout_s=self._timeout)
                self._clients[key] = client
            return client

    def close(self) -> None:
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            client.close()
