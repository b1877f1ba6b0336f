"""④ Jobs: routing rules (which series go to which models) and, next, the job service."""
