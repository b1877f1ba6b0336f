"""⑦ Admin: the CLI (``dicom-node``); the web UI and metrics come later."""
