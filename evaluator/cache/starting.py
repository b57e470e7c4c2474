"""How the decode pool's processes start: forked from this process when it runs no other thread (cheapest), else
from a fork server of xfverify's own that never imports the caller's main module.

Python's ``forkserver`` and ``spawn`` children import the parent's ``__main__`` again (as ``__mp_main__``): a user's
script without an ``if __name__ == "__main__":`` guard would run again in every decode process, and its calls of
xfverify start pools of their own there (a deadlock, or a broken pool). The decode processes need nothing of it: what
they run is xfverify's, so they are started with the preparation data of the standard fork server minus the main
module, from a server that has imported the decoding module once.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
import threading
from multiprocessing import context, forkserver, get_context, popen_forkserver, process, reduction, spawn, util

_MAIN_KEYS = ("init_main_from_path", "init_main_from_name")
# The fork server listens on a socket in multiprocessing's temporary folder (pymp-XXXXXXXX/listener-XXXXXXXX, made
# in TMPDIR); the path must fit in sun_path (108 bytes on Linux, 104 on macOS), counting its final NUL.
_SOCKET_PATH_ROOM = 103 - len("/pymp-xxxxxxxx/listener-xxxxxxxx")
_SHORT_FOLDERS = ("/tmp", "/var/tmp", "/usr/tmp")
_server = forkserver.ForkServer()
_server.set_forkserver_preload(["xfverify.evaluator.cache.decoding"])


def _socket_folder_that_fits() -> None:
    """Under a long TMPDIR (a deep home, a test's own folder) the fork server's socket path would not fit, and no
    decode process could start ("AF_UNIX path too long"): its temporary folder is then made in the first standard
    short one, cleaned up at exit as multiprocessing cleans up its own (what CPython 3.13 does itself)."""
    config = process.current_process()._config
    if config.get("tempdir") or len(tempfile.gettempdir()) <= _SOCKET_PATH_ROOM:
        return
    for folder in _SHORT_FOLDERS:
        if os.path.isdir(folder) and os.access(folder, os.W_OK | os.X_OK):
            config["tempdir"] = tempfile.mkdtemp(prefix="pymp-", dir=folder)
            util.Finalize(None, util._remove_temp_dir, args=(shutil.rmtree, config["tempdir"]), exitpriority=-100)
            return


class _PopenWithoutMain(popen_forkserver.Popen):
    """``popen_forkserver.Popen`` whose child is forked by ``_server`` and not told of the parent's main module."""

    def _launch(self, process_obj) -> None:
        prep_data = spawn.get_preparation_data(process_obj._name)
        for key in _MAIN_KEYS:
            prep_data.pop(key, None)
        buf = io.BytesIO()
        context.set_spawning_popen(self)
        try:
            reduction.dump(prep_data, buf)
            reduction.dump(process_obj, buf)
        finally:
            context.set_spawning_popen(None)
        _socket_folder_that_fits()
        self.sentinel, w = _server.connect_to_new_process(self._fds)
        parent_w = os.dup(w)  # the child's sentinel of this process, as the standard Popen keeps it
        self.finalizer = util.Finalize(self, util.close_fds, (parent_w, self.sentinel))
        with open(w, "wb", closefd=True) as pipe:
            pipe.write(buf.getbuffer())
        self.pid = forkserver.read_signed(self.sentinel)


class _ProcessWithoutMain(process.BaseProcess):
    _start_method = "forkserver"

    @staticmethod
    def _Popen(process_obj):
        return _PopenWithoutMain(process_obj)


class _ContextWithoutMain(context.BaseContext):
    _name = "forkserver"
    Process = _ProcessWithoutMain


WITHOUT_MAIN = _ContextWithoutMain()


def pool_context() -> context.BaseContext:
    """fork when this process runs no other thread, else xfverify's fork server (fork is unsafe with threads)."""
    return get_context("fork") if threading.active_count() == 1 else WITHOUT_MAIN
