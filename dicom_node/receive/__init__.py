"""① Receive: the Storage SCP (pynetdicom). Handlers are thin; statuses are named in ``statuses``."""
