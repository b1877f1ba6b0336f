"""Classical labelers: documented, deterministic teachers for reference models and for
``dicom-node models evaluate`` when a site has no reference segmentations."""
