"""Audit: the event vocabulary and the recorder (append-only ``audit_events``)."""
