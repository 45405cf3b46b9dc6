"""The disconnect watcher outlives any one connection's check: the 5-minute soak killed its thread
with a check that raised (a channel closed meanwhile), and from then on no client that left had
its work cancelled, so dropped requests held engine rows until they finished."""

from __future__ import annotations

import threading

from adapterhub.server.http.disconnect import DisconnectWatcher


def test_a_check_that_raises_counts_as_gone_and_the_others_are_still_watched():
    watcher = DisconnectWatcher(interval_s=0.01)
    broken_gone, later_gone = threading.Event(), threading.Event()
    leave = threading.Event()

    def broken() -> bool:
        raise AttributeError("'NoneType' object has no attribute 'getsockopt'")

    with watcher.watch(broken, broken_gone.set), watcher.watch(leave.is_set, later_gone.set):
        assert broken_gone.wait(5)  # a check that fails: the client is taken as gone
        leave.set()  # another client leaves after that failure
        assert later_gone.wait(5)  # still noticed: the watcher thread lives on
