"""The pull-request comment and the job summary, rendered from a Review: Markdown that stays small.

Every piece of repository text is entity-encoded (a path cannot open a tag, break a table, or
@-mention anyone), and the comment always fits GitHub's 65,536 characters: the first changes get
thumbnails, the rest go compact into `<details>`, and what still does not fit is counted and
left to the job summary.
"""

from __future__ import annotations

import re
from urllib.parse import quote

from flexforge.ci.review import COMMITTED, AssetChange, Review

MARKER = "<!-- flexforge -->"
COMMENT_LIMIT = 65_536
BUDGET = COMMENT_LIMIT - 2_048  # head room for GitHub's own counting and a closing note
THUMBNAIL_ROWS = 20
THUMBNAIL_WIDTH = 160
MARKS = {
    "create": "+",
    "regenerate": "~",
    "restore": "<",
    "drifted": "!",
    "conflict": "!",
    "rename": ">",
    "added": "+",
    "regenerated": "~",
    "restored": "<",
    "edited": "!",
    "renamed": ">",
    "removed": "-",
    "orphaned": "-",
}
_PLAIN = re.compile(r"[A-Za-z0-9 ./(),-]")


def marker(project: str) -> str:
    """The hidden first line that finds this project's comment again; one comment per project."""
    if project in ("", "."):
        return MARKER
    # Nothing in a folder name may end the comment early: no ">" and no "-" survive.
    return f"<!-- flexforge project={text(project).replace('-', '&#45;')} -->"


def text(value: str) -> str:
    """Repository text made inert in Markdown and HTML: anything not plain becomes an entity."""
    return "".join(c if _PLAIN.fullmatch(c) else f"&#{ord(c)};" for c in value)


def money(usd: float) -> str:
    return f"${usd:.2f}" if usd >= 0.01 or usd == 0 else f"${usd:.4f}"


def raw_url(review: Review, sha: str, path: str) -> str:
    return f"{review.server_url}/{review.repository}/raw/{sha}/{quote(path, safe='/')}"


def headline(review: Review) -> str:
    if review.errors:
        n = len(review.errors)
        return f"flexforge: the manifest has {n} error{'s' if n != 1 else ''}"
    pending = len(review.pending)
    committed = sum(1 for c in review.changes if c.kind in COMMITTED)
    if not pending and not committed:
        return "flexforge: no image changes"
    parts = []
    if committed:
        parts.append(f"{committed} image{'s' if committed != 1 else ''} changed in this pull request")
    if pending:
        cost = money(review.estimated_cost_usd) if review.estimated_cost_usd else "no cost"
        parts.append(f"{pending} to build, estimated {cost}")
    return "flexforge: " + "; ".join(parts)


def _counts(review: Review) -> str:
    kinds: dict[str, int] = {}
    for change in review.changes:
        kinds[change.kind] = kinds.get(change.kind, 0) + 1
    shown = ", ".join(f"{n} {kind}" for kind, n in kinds.items())
    unchanged = max(0, review.total_assets - len([c for c in review.changes if c.kind != "orphaned"]))
    return f"{shown + ', ' if shown else ''}{unchanged} unchanged"


def _context(review: Review) -> str:
    bits = [f"project `{text(review.project)}`" if review.project not in ("", ".") else "project root"]
    if review.provider:
        bits.append(f"provider {text(review.provider)}")
    if review.base_sha and review.head_sha:
        bits.append(f"{review.base_sha[:7]} → {review.head_sha[:7]}")
    return " · ".join(bits)


def _change_label(change: AssetChange) -> str:
    label = change.kind + (f" ({', '.join(change.reasons)})" if change.reasons else "")
    return text(label)


def _image(url: str, alt: str) -> str:
    return f'<a href="{url}"><img src="{url}" width="{THUMBNAIL_WIDTH}" alt="{text(alt)}"></a>'


def _before(review: Review, change: AssetChange) -> str:
    if change.before is None or not review.base_sha:
        return "—"
    return _image(raw_url(review, review.base_sha, change.before), f"{change.id} before")


def _after(review: Review, change: AssetChange) -> str:
    if change.kind in ("removed", "orphaned"):
        return "removed"
    if change.after is not None and review.head_sha:
        return _image(raw_url(review, review.head_sha, change.after), f"{change.id} after")
    if change.preview and review.previews_url:
        return f'<a href="{review.previews_url}">draft preview</a>'
    return "built after merge"


def _cost(change: AssetChange) -> str:
    if change.estimated_cost_usd:
        return f"~{money(change.estimated_cost_usd)}"
    return f"{money(change.paid_usd)} paid" if change.paid_usd else ""


def thumbnail_row(review: Review, change: AssetChange) -> str:
    cells = [
        f"`{change.id}`",
        _change_label(change),
        _before(review, change),
        _after(review, change),
        _cost(change),
    ]
    return "| " + " | ".join(cells) + " |"


def compact_row(change: AssetChange) -> str:
    cells = [
        MARKS.get(change.kind, "?"),
        f"`{change.id}`",
        _change_label(change),
        text(change.out),
        _cost(change),
    ]
    return "| " + " | ".join(cells) + " |"


THUMBNAIL_HEAD = "| asset | change | before | after | cost |\n|---|---|---|---|---|"
COMPACT_HEAD = "| | asset | change | output | cost |\n|---|---|---|---|---|"


def _errors(review: Review, limit: int) -> list[str]:
    if not review.errors:
        return []
    lines = ["**Validation errors** (also annotated on the files):", "```"]
    # A fence cannot be closed early from inside: no backtick survives into it.
    lines += [e.replace("`", "'") for e in review.errors[:limit]]
    if len(review.errors) > limit:
        lines.append(f"... and {len(review.errors) - limit} more")
    lines.append("```")
    return lines


def _footer(review: Review) -> list[str]:
    bits = []
    if review.run_url:
        bits.append(f"[full table and logs]({review.run_url})")
    if review.previews_url:
        bits.append(f"[draft previews]({review.previews_url})")
    if any(c.kind in ("create", "regenerate") for c in review.changes):
        bits.append("paid images are never built from a pull request")
    return [f"<sub>{' · '.join(bits)}</sub>"] if bits else []


def render_comment(review: Review) -> str:
    """The sticky comment: under GitHub's limit whatever the number of changes."""
    head = [
        marker(review.project),
        f"### {headline(review)}",
        f"<sub>{_context(review)} · {_counts(review)}</sub>",
        "",
    ]
    head += _errors(review, 50)
    footer = ["", *_footer(review)]
    size = sum(len(x) + 1 for x in head + footer)
    body: list[str] = []
    changes = list(review.changes)
    shown = 0
    thumbs = [thumbnail_row(review, c) for c in changes[:THUMBNAIL_ROWS]]
    if thumbs:
        block = [THUMBNAIL_HEAD, *thumbs]
        cost = sum(len(x) + 1 for x in block)
        if size + cost <= BUDGET:
            body += block
            size += cost
            shown = len(thumbs)
    rest = changes[shown:]
    if rest:
        opening = [
            "",
            f"<details><summary>{len(rest)} more change{'s' if len(rest) != 1 else ''}</summary>",
            "",
            COMPACT_HEAD,
        ]
        closing = ["", "</details>"]
        size += sum(len(x) + 1 for x in opening + closing) + 120  # the "N not shown" line
        rows: list[str] = []
        for change in rest:
            row = compact_row(change)
            if size + len(row) + 1 > BUDGET:
                break
            rows.append(row)
            size += len(row) + 1
        left = len(rest) - len(rows)
        body += opening + rows
        if left:
            body += ["", f"{left} more not shown here: see the job summary."]
        body += closing
    return "\n".join(head + body + footer) + "\n"


def render_summary(review: Review) -> str:
    """The job summary: every change in one table (the runner cuts it at GitHub's 1 MiB)."""
    lines = [f"## {headline(review)}", "", f"{_context(review)} · {_counts(review)}", ""]
    lines += _errors(review, 1000)
    if review.changes:
        lines += ["", COMPACT_HEAD, *(compact_row(c) for c in review.changes)]
    return "\n".join(lines) + "\n"
