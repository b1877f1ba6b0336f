"""Named DIMSE statuses (PS3.4 Annex B.2.3, PS3.7 Annex C). No hex literal elsewhere.

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

# Warning: the instance was stored, with a caveat the sender may log.
WARNING_ELEMENTS_DISCARDED: Final = 0xB006

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
