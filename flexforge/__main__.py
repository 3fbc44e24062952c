"""`python -m flexforge` and the `flexforge` console script."""

from __future__ import annotations

import sys


def main() -> None:
    try:
        # A no-op build or plan is answered from the memo before the CLI and its imports load.
        from flexforge.noop import answer

        code = answer(sys.argv[1:])
        if code is not None:
            sys.exit(code)
        from flexforge.cli import main as cli_main

        cli_main()
    except KeyboardInterrupt:  # Ctrl-C before the CLI's own handling is in place (imports)
        print("interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
