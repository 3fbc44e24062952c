"""`flexforge ci ...`: what the GitHub Action runs (review a pull request, check, build, comment)."""

from __future__ import annotations

from pathlib import Path

from flexforge.ci.action import Inputs
from flexforge.context import GlobalOptions


def ci_run(opts: GlobalOptions, inputs: Inputs) -> int:
    from flexforge.ci.action import run_from_env

    return run_from_env(opts, inputs)


def ci_comment(review_file: Path, token: str) -> int:
    from flexforge.ci.action import comment_from_review

    return comment_from_review(review_file, token)
