"""The one error of the result builders."""

from __future__ import annotations

from dicom_node.errors import Permanent


class ResultError(Permanent):
    """The result object cannot be built as the standard requires; the message says why."""
