"""Named DIMSE statuses (PS3.4 Annex B.2.3, PS3.7 Annex C): the SCP's answers and what the SCU
reads back. A leaf module: it imports nothing of the node's, so every layer may use it. No hex
status literal elsewhere.

The PS3.4 C-STORE failure classes leave the low byte to the implementation: the node uses it to
say *which* check failed, so an admin reading a sender's log can tell them apart.
"""

from __future__ import annotations

from typing import Final

SUCCESS: Final = 0x0000

# Out of Resources (0xA7xx): senders usually retry these.
OUT_OF_RESOURCES_DISK_RESERVE: Final = 0xA700
OUT_OF_RESOURCES_WRITE_FAILED: Final = 0xA701
OUT_OF_RESOURCES_INDEX_BUSY: Final = 0xA702

# Error: Data Set does not match SOP Class (0xA9xx).
DATASET_DOES_NOT_MATCH_SOP_CLASS: Final = 0xA900

# Error: Cannot understand (0xCxxx): permanent for this instance.
CANNOT_UNDERSTAND_UNPARSEABLE: Final = 0xC000
CANNOT_UNDERSTAND_INVALID_UID: Final = 0xC001
CANNOT_UNDERSTAND_MISSING_ATTRIBUTE: Final = 0xC002
# the SOP Instance UID is already stored under another Study/Series Instance UID
CANNOT_UNDERSTAND_UID_CONFLICT: Final = 0xC003

# Warning: the instance was stored, with a caveat the sender may log (PS3.4 B.2.3).
WARNING_COERCION_OF_DATA_ELEMENTS: Final = 0xB000
WARNING_ELEMENTS_DISCARDED: Final = 0xB006
WARNING_DATASET_DOES_NOT_MATCH_SOP_CLASS: Final = 0xB007

# General failures a peer SCP may answer with (PS3.7 C.5).
SOP_CLASS_NOT_SUPPORTED: Final = 0x0122
NOT_AUTHORIZED: Final = 0x0124
DUPLICATE_INVOCATION: Final = 0x0210
UNRECOGNIZED_OPERATION: Final = 0x0211
MISTYPED_ARGUMENT: Final = 0x0212
RESOURCE_LIMITATION: Final = 0x0213

NAMES: Final[dict[int, str]] = {
    SUCCESS: "Success",
    OUT_OF_RESOURCES_DISK_RESERVE: "Out of Resources: disk reserve reached",
    OUT_OF_RESOURCES_WRITE_FAILED: "Out of Resources: write failed",
    OUT_OF_RESOURCES_INDEX_BUSY: "Out of Resources: index unavailable",
    DATASET_DOES_NOT_MATCH_SOP_CLASS: "Error: Data Set does not match SOP Class",
    CANNOT_UNDERSTAND_UNPARSEABLE: "Error: Cannot understand (unparseable data set)",
    CANNOT_UNDERSTAND_INVALID_UID: "Error: Cannot understand (invalid UID)",
    CANNOT_UNDERSTAND_MISSING_ATTRIBUTE: "Error: Cannot understand (missing attribute)",
    CANNOT_UNDERSTAND_UID_CONFLICT: "Error: Cannot understand (SOP Instance UID conflict)",
}
"""What the node's own answers mean, low byte included (the receive side's logs)."""

STANDARD_NAMES: Final[dict[int, str]] = {
    SUCCESS: "Success",
    WARNING_COERCION_OF_DATA_ELEMENTS: "Warning: coercion of data elements",
    WARNING_ELEMENTS_DISCARDED: "Warning: elements discarded",
    WARNING_DATASET_DOES_NOT_MATCH_SOP_CLASS: "Warning: data set does not match SOP Class",
    SOP_CLASS_NOT_SUPPORTED: "Failure: SOP Class not supported",
    NOT_AUTHORIZED: "Failure: not authorized",
    DUPLICATE_INVOCATION: "Failure: duplicate invocation (Message ID already in use)",
    UNRECOGNIZED_OPERATION: "Failure: unrecognized operation",
    MISTYPED_ARGUMENT: "Failure: mistyped argument",
    RESOURCE_LIMITATION: "Failure: resource limitation",
}
"""The statuses the standard fixes to the last bit; in the 0xA7xx, 0xA9xx and 0xCxxx classes
the low byte is each implementation's own."""


def is_warning(status: int) -> bool:
    """0xB000-0xBFFF: stored, with a caveat (PS3.4 B.2.3)."""
    return 0xB000 <= status <= 0xBFFF


def is_out_of_resources(status: int) -> bool:
    """0xA7xx: the peer could not store it now (PS3.4 B.2.3)."""
    return status & 0xFF00 == 0xA700


def meaning(status: int) -> str:
    """What a peer's status says, by the standard alone: its name, else its class."""
    if status in STANDARD_NAMES:
        return STANDARD_NAMES[status]
    if is_warning(status):
        return "Warning"
    if is_out_of_resources(status):
        return "Out of Resources"
    if status & 0xF000 == 0xC000:
        return "Error: Cannot understand"
    if status & 0xFF00 == 0xA900:
        return "Error: Data Set does not match SOP Class"
    return "Failure"
