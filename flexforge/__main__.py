"""`python -m flexforge` and the `flexforge` console script."""

from __future__ import annotations

import sys


def main() -> None:
    # A no-op build or plan is answered from the memo before the CLI and its imports load.
    from flexforge.noop import answer

    code = answer(sys.argv[1:])
    if code is not None:
        sys.exit(code)
    from flexforge.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
