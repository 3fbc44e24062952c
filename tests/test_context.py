"""Where a command runs: what a plan with nothing remote or paid leaves unimported."""

from __future__ import annotations

import os
import subprocess
import sys

from flexforge import context, remote
from tests.helpers import Project, png


def test_the_remote_variable_is_the_one_remote_reads() -> None:
    assert context._REMOTE_ENV == remote.REMOTE_ENV


def test_a_draft_plan_with_no_remote_imports_neither_remote_nor_pricing(project: Project) -> None:
    png(project.root / "refs" / "a.png")
    project.manifest("""
        version: 1
        assets:
          a: {prompt: x, references: [refs/a.png]}
    """)
    code = (
        "import sys\n"
        "from flexforge.cli import main\n"
        "sys.argv = ['flexforge', '-C', sys.argv[1], 'plan', '--provider', 'draft']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in sys.modules if m in ('flexforge.remote', 'flexforge.pricing', 'PIL')))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "FLEXFORGE_REMOTE"}
    done = subprocess.run(
        [sys.executable, "-c", code, str(project.root)], capture_output=True, text=True, env=env, check=True
    )
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout + done.stderr
