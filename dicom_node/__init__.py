"""dicom-node: a DICOM-native PACS integration node.

The control plane (this package) never imports torch; the data plane lives in ``workers``.
"""

__version__ = "0.1.0"
