"""`python -m flexforge` and the `flexforge` console script."""

from __future__ import annotations

import gc
import os
import sys


def main() -> None:
    try:
        # A no-op build or plan is answered from the memo before the CLI and its imports load.
        from flexforge.noop import answer

        try:
            code = answer(sys.argv[1:])
            if code is not None:
                sys.stdout.flush()
                # Nothing else to flush or close: skip the interpreter's teardown (freeing every
                # path of a big project one object at a time).
                os._exit(code)
        except BrokenPipeError:  # `flexforge plan | true`: as the CLI itself exits then
            from flexforge.errors import EXIT_BROKEN_PIPE

            os._exit(EXIT_BROKEN_PIPE)
        except OSError:
            pass  # stdout refused the answer (a full disk): the CLI reports it in its own words
        from flexforge.cli import main as cli_main

        # What the imports made lives as long as the process: the cyclic collector need not
        # scan it again each time a command's manifest, lock and plan (many thousands of young
        # objects) set off a full collection, which cost a cold plan a tenth of its time.
        gc.freeze()
        try:
            cli_main()
        except SystemExit as done:
            _leave(done)
    except KeyboardInterrupt:  # Ctrl-C before the CLI's own handling is in place (imports)
        print("interrupted", file=sys.stderr)
        sys.exit(130)


def _leave(done: SystemExit) -> None:
    """Exit with the command's code, without the interpreter's teardown once nothing is left
    running: freeing a command's manifest, lock and plan one object at a time took a 200-asset
    build 55 ms after its last image was written. A thread still at work (none should be),
    a message for the exit, or output that cannot be flushed: the normal exit handles it."""
    import threading

    code = done.code
    if code is None:
        code = 0
    busy = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon]
    if not isinstance(code, int) or busy:
        raise done
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except OSError:  # a closed pipe or a full disk: as Python itself would report it
        raise done from None
    os._exit(code)


if __name__ == "__main__":
    main()
