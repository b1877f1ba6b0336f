"""① Receive: the Storage SCP (pynetdicom). Thin handlers; statuses named in ``statuses``."""
