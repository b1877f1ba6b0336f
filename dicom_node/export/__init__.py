"""⑥ export: the durable outbox of result objects, and the C-STORE SCU that empties it."""
