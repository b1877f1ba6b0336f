"""The error taxonomy: every failure is one of these, converted at the stage's boundary.

- ``storage.errors.StorageRefusedError``: an instance refused, by type; the receive handler
  maps each type to a named DIMSE status.
- ``Transient``: worth retrying (disk momentarily full, database locked, PACS down).
- ``Permanent``: retrying will not help; an admin reads ``str(exc)``.
"""

from __future__ import annotations


class NodeError(Exception):
    """Base for every error the node raises on purpose."""


class Transient(NodeError):  # noqa: N818
    """Retry later; nothing is lost."""


class Permanent(NodeError):  # noqa: N818
    """Will not succeed on retry; shown to the admin."""


class StartupError(Permanent):
    """The node cannot start as configured; the message says why and what to change."""
