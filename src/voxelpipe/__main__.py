"""``python -m voxelpipe``."""
import atexit
import os
import sys
import threading

from voxelpipe.cli import main


def exit_now(code: int) -> None:
    """End the process with ``code`` once the command has returned: run the exit hooks (worker pools stopped,
    logging flushed, finalizers), flush the standard streams, then leave without tearing down every imported
    module one by one (numba, zarr, pydicom: 0.1-0.5 s that change no output). While a non-daemon thread still
    runs, the process exits the normal way (that thread is waited for)."""
    if any(t is not threading.main_thread() and not t.daemon and t.is_alive() for t in threading.enumerate()):
        sys.exit(code)
    atexit._run_exitfuncs()  # the hooks a normal exit runs; the stdlib has no public name for this
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed or broken pipe: nothing left to write to
            pass
    os._exit(code)


if __name__ == "__main__":
    exit_now(main())
