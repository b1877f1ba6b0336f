"""The node's child processes (SCP processes, embedded workers) die with the node's supervisor,
however it dies (kill -9, the OOM killer): no orphan keeps serving the port without a sweeper
behind it, keeps a restarted node from binding it, or claims jobs for a node that is gone.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing as mp
import os
import signal

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent() -> None:
    """Ask Linux for SIGKILL when the parent dies; then, if it already died (a spawned child
    spends seconds importing before it gets here), leave at once. Elsewhere the supervisor's own
    shutdown stops its children."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    parent = mp.parent_process()
    if parent is not None and os.getppid() != parent.pid:
        os._exit(1)  # the supervisor died before the line above: nobody to work for
