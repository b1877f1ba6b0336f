"""Why storage refuses an instance, as types. Storage knows no DIMSE status: the receive handler
maps each type to one (``receive.handlers.STATUS_FOR``), so the choice is made in one place.

``comment`` goes into the response's Error Comment (LO: at most 64 characters) and the log. It
must never contain PHI.
"""

from __future__ import annotations

from dicom_node.errors import NodeError


class StorageRefusedError(NodeError):
    """An instance the node did not store, and why."""

    def __init__(self, comment: str) -> None:
        super().__init__(comment)
        self.comment = comment[:64]


class InvalidUIDError(StorageRefusedError):
    """A request or data set UID that is not a UID, or would escape the storage root."""


class UnparseableError(StorageRefusedError):
    """The data set's structure or a value the index needs cannot be decoded."""


class MissingAttributeError(StorageRefusedError):
    """A Study or Series Instance UID the node files the instance under is absent."""


class DoesNotMatchRequestError(StorageRefusedError):
    """The data set's own SOP Class/Instance UID is absent or differs from the request's."""


class UIDConflictError(StorageRefusedError):
    """The SOP Instance UID is already stored under another study or series."""


class DiskReserveError(StorageRefusedError):
    """Free space is below the configured reserve."""


class WriteFailedError(StorageRefusedError):
    """The file could not be written durably (disk full, I/O error)."""


class IndexUnavailableError(StorageRefusedError):
    """The file is durable but the index could not record it; a retry finds it."""
