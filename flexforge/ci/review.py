"""What a pull request changes in the image set: the data the comment and summary are rendered from.

Kept apart from where the data comes from (today `plan --json` plus the lock at the base and head
commits), so that it can switch to `flexforge diff --json` without touching the renderer. It is
also what crosses from the untrusted pull-request job to the commenting job as an artifact, so
`from_json` checks every field before anything is rendered.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from typing import Any

from flexforge.errors import FlexforgeError

REVIEW_VERSION = 1
# Kinds of change: the plan's pending actions, and what the pull request already committed.
PENDING = ("create", "regenerate", "restore", "drifted", "conflict", "rename")
# What the commits changed, in `flexforge diff`'s words (flexforge.report.CHANGES).
COMMITTED = ("added", "regenerated", "restored", "edited", "renamed", "removed")
KINDS = (*PENDING, *COMMITTED, "orphaned")
MAX_REVIEW_BYTES = 64 * 1024 * 1024
_SHA = re.compile(r"^[0-9a-f]{40}\Z|^\Z")
_REPO = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+\Z|^\Z")
_ID = re.compile(r"^[a-z0-9][a-z0-9_-]*\Z")


@dataclass(frozen=True, slots=True)
class AssetChange:
    id: str
    kind: str
    reasons: tuple[str, ...] = ()
    out: str = ""  # the output's path from the repository root
    model: str = ""
    estimated_cost_usd: float = 0.0
    before: str | None = None  # path at the base commit, when the base lock had an image
    after: str | None = None  # path at the head commit, when the head commit holds the new image
    preview: str | None = None  # file name of a draft preview in the previews artifact
    paid_usd: float = 0.0  # what a committed new image cost (the API's report, from the lock)


@dataclass(frozen=True, slots=True)
class Review:
    repository: str = ""  # owner/name
    server_url: str = "https://github.com"
    base_sha: str = ""
    head_sha: str = ""
    project: str = "."  # the manifest's folder from the repository root
    provider: str = ""
    changes: tuple[AssetChange, ...] = ()
    total_assets: int = 0
    estimated_cost_usd: float = 0.0
    errors: tuple[str, ...] = ()  # validation errors, one line each
    previews_url: str = ""
    run_url: str = ""
    pull_request: int = 0

    @property
    def pending(self) -> tuple[AssetChange, ...]:
        return tuple(c for c in self.changes if c.kind in PENDING)

    def count(self, kind: str) -> int:
        return sum(1 for c in self.changes if c.kind == kind)

    def to_json(self) -> str:
        return json.dumps({"version": REVIEW_VERSION, **asdict(self)}, indent=1, allow_nan=False)


def from_json(data: bytes) -> Review:
    """A review read back from a file another job wrote: every field checked, nothing trusted."""
    if len(data) > MAX_REVIEW_BYTES:
        raise FlexforgeError(f"review data over {MAX_REVIEW_BYTES} bytes")
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise FlexforgeError(f"review data is not JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("version") != REVIEW_VERSION:
        raise FlexforgeError(f"review data is not version {REVIEW_VERSION} of flexforge's review")
    changes = doc.get("changes")
    if not isinstance(changes, list):
        raise FlexforgeError("review data: 'changes' is not a list")
    review = Review(
        repository=_str(doc, "repository", _REPO),
        server_url=_url(doc.get("server_url", "https://github.com")),
        base_sha=_str(doc, "base_sha", _SHA),
        head_sha=_str(doc, "head_sha", _SHA),
        project=_str(doc, "project"),
        provider=_str(doc, "provider"),
        changes=tuple(_change(c, i) for i, c in enumerate(changes)),
        total_assets=_count(doc.get("total_assets", 0), "total_assets"),
        estimated_cost_usd=_money(doc.get("estimated_cost_usd", 0.0), "estimated_cost_usd"),
        errors=tuple(_text(e, "errors") for e in _list(doc.get("errors", []), "errors")),
        previews_url=_url(doc.get("previews_url", "")),
        run_url=_url(doc.get("run_url", "")),
        pull_request=_count(doc.get("pull_request", 0), "pull_request"),
    )
    return review


def _change(value: Any, index: int) -> AssetChange:
    where = f"changes[{index}]"
    if not isinstance(value, dict):
        raise FlexforgeError(f"review data: {where} is not an object")
    asset_id = _text(value.get("id"), f"{where}.id")
    kind = _text(value.get("kind"), f"{where}.kind")
    if not _ID.match(asset_id):
        raise FlexforgeError(f"review data: {where}.id is not an asset id")
    if kind not in KINDS:
        raise FlexforgeError(f"review data: {where}.kind {kind!r} is not one of {', '.join(KINDS)}")
    return AssetChange(
        id=asset_id,
        kind=kind,
        reasons=tuple(_text(r, f"{where}.reasons") for r in _list(value.get("reasons", []), where)),
        out=_text(value.get("out", ""), f"{where}.out"),
        model=_text(value.get("model", ""), f"{where}.model"),
        estimated_cost_usd=_money(value.get("estimated_cost_usd", 0.0), f"{where}.estimated_cost_usd"),
        before=_optional(value.get("before"), f"{where}.before"),
        after=_optional(value.get("after"), f"{where}.after"),
        preview=_optional(value.get("preview"), f"{where}.preview"),
        paid_usd=_money(value.get("paid_usd", 0.0), f"{where}.paid_usd"),
    )


def _str(doc: dict[str, Any], name: str, pattern: re.Pattern[str] | None = None) -> str:
    value = _text(doc.get(name, ""), name)
    if pattern is not None and not pattern.match(value):
        raise FlexforgeError(f"review data: {name} {value[:80]!r} is malformed")
    return value


def _text(value: Any, name: str, limit: int = 4096) -> str:
    if not isinstance(value, str) or len(value) > limit:
        raise FlexforgeError(f"review data: {name} is not a string of at most {limit} characters")
    return value


def _optional(value: Any, name: str) -> str | None:
    return None if value is None else _text(value, name)


def _list(value: Any, name: str) -> list[Any]:
    if not isinstance(value, list):
        raise FlexforgeError(f"review data: {name} is not a list")
    return value


def _count(value: Any, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise FlexforgeError(f"review data: {name} is not a count")
    return value


def _money(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1e9:
        raise FlexforgeError(f"review data: {name} is not an amount in USD")
    return float(value)


def _url(value: Any) -> str:
    text = _text(value, "url")
    if text and not re.match(
        r"^https?://[A-Za-z0-9.:\[\]-]+(/[A-Za-z0-9._~/%-]*)?(#[A-Za-z0-9_-]*)?\Z", text
    ):
        raise FlexforgeError(f"review data: {text[:80]!r} is not a plain http(s) URL")
    return text
