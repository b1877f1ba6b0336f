"""Read models: one module per view, each returning typed rows (frozen dataclasses) that the
CLI prints and the web renders, so both show the same thing. No patient names or IDs are ever
selected; the accession number only when ``[admin] show_accession`` says so (else its hash).

=================  ==========================================================
module             view
=================  ==========================================================
``studies``        the study list and its filter
``timeline``       one study: stages, series, rules, jobs, exports, events
``dashboard``      totals and per-bucket series over a window
``jobs``           jobs and outbox rows
``destinations``   per destination: outbox states and circuit
``audit``          the audit log, its filter and its CSV
``models``         installed models and their monitoring statistics
=================  ==========================================================
"""
