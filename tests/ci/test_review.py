"""Review data read back from another job's artifact: every field checked before it is rendered."""

from __future__ import annotations

import json

import pytest

from flexforge.ci.review import AssetChange, Review, from_json
from flexforge.errors import FlexforgeError

GOOD = Review(
    repository="acme/site",
    base_sha="a" * 40,
    head_sha="b" * 40,
    changes=(AssetChange("hero", "regenerate", ("prompt",), "assets/hero.png", "flux-2-flex", 0.05),),
    total_assets=3,
    estimated_cost_usd=0.05,
    pull_request=4,
    run_url="https://github.com/acme/site/actions/runs/1#artifacts",
)


def test_a_review_round_trips() -> None:
    assert from_json(GOOD.to_json().encode()) == GOOD


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("repository", "acme/site/../x", "repository"),
        ("head_sha", "not-a-sha", "head_sha"),
        ("server_url", "javascript:alert(1)", "plain http"),
        ("run_url", 'https://x/"><img src=x>', "plain http"),
        ("estimated_cost_usd", float("inf"), "USD"),
        ("estimated_cost_usd", -1, "USD"),
        ("total_assets", True, "count"),
        ("pull_request", "7", "count"),
        ("errors", "one", "list"),
        ("changes", {}, "list"),
    ],
)
def test_hostile_fields_are_refused(field: str, value: object, message: str) -> None:
    doc = json.loads(GOOD.to_json())
    doc[field] = value
    raw = json.dumps(doc, allow_nan=True).encode()
    with pytest.raises(FlexforgeError, match=message):
        from_json(raw)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"id": "Hero", "kind": "create"}, "asset id"),
        ({"id": "hero", "kind": "rm -rf"}, "kind"),
        ({"id": "hero", "kind": "create", "out": "x" * 5000}, "out"),
        ({"id": "hero", "kind": "create", "reasons": [1]}, "reasons"),
        ("hero", "not an object"),
    ],
)
def test_hostile_changes_are_refused(change: object, message: str) -> None:
    doc = json.loads(GOOD.to_json())
    doc["changes"] = [change]
    with pytest.raises(FlexforgeError, match=message):
        from_json(json.dumps(doc).encode())


def test_not_json_or_another_version_is_one_clear_error() -> None:
    with pytest.raises(FlexforgeError, match="not JSON"):
        from_json(b"\xff{")
    with pytest.raises(FlexforgeError, match="version 1"):
        from_json(b'{"version": 2, "changes": []}')
