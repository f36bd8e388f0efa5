"""One exception root for Cohort, with distinct types callers can tell apart.

* :class:`BadInputError` - malformed data from a user or a peer (a CSV with a bad cell,
  a wrong-shaped or NaN update, an unknown option). Fix the input and retry.
* :class:`VerificationError` - something failed a cryptographic or consistency check
  (forged signature, wrong payload hash, replayed envelope, mismatching aggregate). This
  signals tampering, never a typo.
* :class:`ProtocolAbort` - the protocol cannot go on (no quorum, budget exhausted for
  everyone, too few clients). The round or study stops with a reason.

Each also subclasses the closest built-in so generic callers keep working.
Messages never carry secret material: name the field, the party and the reason only.
"""

from __future__ import annotations


class CohortError(Exception):
    """Root of every error Cohort raises on purpose."""


class BadInputError(CohortError, ValueError):
    """Input that does not have the expected form. The message names what is wrong."""


class ConfigError(BadInputError):
    """A configuration value out of range; the message names the parameter and its unit."""


class VerificationError(CohortError, ValueError):
    """A signature, hash, membership or replay check failed: treat as tampering."""


class ProtocolAbort(CohortError, RuntimeError):
    """The protocol cannot continue (no quorum, too few participants, exhausted budget)."""


class BudgetExhausted(ProtocolAbort):
    """Training this round would take a data owner past its own epsilon cap."""
