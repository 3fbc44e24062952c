"""Draft previews of what a pull request would build: the free local renderer, in a scratch copy.

The copy is made of hard links (outputs are replaced by rename, never written in place, so the
checkout is never touched) without `.flexforge/`, and only the first assets the comment shows are
rendered, with what they need.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

from flexforge.ci.review import Review
from flexforge.context import GlobalOptions
from flexforge.paths import STATE_DIR

MAX_PREVIEWS = 20
PREVIEWED = ("create", "regenerate")


def _link_or_copy(src: str, dst: str) -> str:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
    return dst


def render_previews(project_root: Path, review: Review, out_dir: Path, previews_url: str) -> Review:
    """Render previews of the pending images into `out_dir`; the review, naming each preview."""
    from flexforge.commands.build import build
    from flexforge.options import BuildFlags, PlanOptions

    wanted = [c for c in review.changes if c.kind in PREVIEWED][:MAX_PREVIEWS]
    if not wanted:
        return review
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="flexforge-previews-") as tmp:
        scratch = Path(tmp) / "project"
        shutil.copytree(
            project_root,
            scratch,
            symlinks=True,  # a link stays a link: flexforge's own checks decide about it
            ignore=shutil.ignore_patterns(STATE_DIR, ".git"),
            copy_function=_link_or_copy,
        )
        opts = GlobalOptions(directory=scratch, quiet=True)
        targets = PlanOptions(targets=frozenset(c.id for c in wanted))
        build(opts, targets, "draft", BuildFlags(), dry_run=False, frozen=False)
        named: dict[str, str] = {}
        for change in wanted:
            rel = (
                change.out.removeprefix(review.project + "/")
                if review.project not in ("", ".")
                else change.out
            )
            made = scratch / rel
            if made.is_file():
                name = f"{change.id}{made.suffix}"
                shutil.copyfile(made, out_dir / name)
                named[change.id] = name
    changes = tuple(replace(c, preview=named.get(c.id)) for c in review.changes)
    return replace(review, changes=changes, previews_url=previews_url if named else "")
