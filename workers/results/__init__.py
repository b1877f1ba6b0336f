"""Results as DICOM: Segmentation (and, next, TID 1500 SR) built with highdicom."""
