"""A process must not outlive the run that started it: it ends itself once that run has exited."""

from __future__ import annotations

import os
import time

ORPHANED_EXIT = 3


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # there, but another user's
        return True
    return True


def exit_when_orphaned(parent: int, poll_s: float = 0.5) -> None:
    """A process whose run died (killed, crashed) must not wait for shards or data forever, nor keep a GPU or
    the terminal's output: a watcher thread ends it once ``parent`` has exited (at once if it already has).
    ``parent`` is the run that launched it (a framework worker: ``XFVERIFY_RUN_PID``, so a run that dies before
    its worker starts watching is still noticed), or the run that started it through a fork server (a decode
    process)."""
    import select
    import threading

    def watch() -> None:
        try:
            handle = os.pidfd_open(parent)  # readable once that process has exited, even before it is reaped
        except ProcessLookupError:
            os._exit(ORPHANED_EXIT)
        except (AttributeError, OSError):  # no pidfd (not Linux): poll for the process instead
            while _exists(parent):
                time.sleep(poll_s)
            os._exit(ORPHANED_EXIT)
        select.select([handle], [], [])
        os._exit(ORPHANED_EXIT)

    threading.Thread(target=watch, name="xfverify-parent-watch", daemon=True).start()
