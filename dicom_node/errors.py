"""The error taxonomy: every failure is one of these, converted at the stage's boundary.

- ``Rejected``: the peer's request is refused with a named DIMSE status and a readable comment.
- ``Transient``: worth retrying (disk momentarily full, database locked, PACS down).
- ``Permanent``: retrying will not help; an admin reads ``str(exc)``.
"""

from __future__ import annotations


class NodeError(Exception):
    """Base for every error the node raises on purpose."""


class Rejected(NodeError):  # noqa: N818 - the name is the outcome, as in DIMSE
    """A C-STORE (or other DIMSE) request refused with ``status``.

    ``comment`` goes into the response's Error Comment (LO: at most 64 characters) and the log.
    It must never contain PHI.
    """

    def __init__(self, status: int, comment: str) -> None:
        super().__init__(comment)
        self.status = status
        self.comment = comment[:64]


class Transient(NodeError):  # noqa: N818
    """Retry later; nothing is lost."""


class Permanent(NodeError):  # noqa: N818
    """Will not succeed on retry; shown to the admin."""
