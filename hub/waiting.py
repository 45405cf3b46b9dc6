"""Waiting for a helper thread that still uses the caller's files, even through Ctrl-C.

A copy or a merge hands writes to a second thread; the caller closes the files once that thread
is done. If a Ctrl-C interrupted the wait, the caller would close (and the process might reuse)
descriptors the thread is still writing through. So the wait is retried until it completes, and
the interrupt is raised afterwards: Ctrl-C still stops the work, only a moment later.
"""

from __future__ import annotations

from typing import Callable

__all__ = ["wait_through_interrupts"]


def wait_through_interrupts(wait: Callable[[], object]) -> None:
    """Call ``wait`` until it returns without a ``KeyboardInterrupt``; then re-raise the interrupt."""
    interrupted: KeyboardInterrupt | None = None
    while True:
        try:
            wait()
            break
        except KeyboardInterrupt as e:
            interrupted = e
    if interrupted is not None:
        raise interrupted
