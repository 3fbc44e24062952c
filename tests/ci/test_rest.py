"""The GitHub REST client: the token goes only to the API it was given for."""

from __future__ import annotations

import pytest

from flexforge.ci.rest import GitHub
from flexforge.errors import FlexforgeError
from tests.support.fake_github import TOKEN, fake_github


def test_a_next_page_on_another_host_is_not_followed_with_the_token() -> None:
    with fake_github() as fake:
        fake.page_size = 1
        fake.add_comment(5, "one", "someone")
        fake.add_comment(5, "two", "someone")
        original = fake.url
        fake.url = "http://127.0.0.2:9"  # the Link header now points elsewhere
        github = GitHub(original, "acme/site", TOKEN)
        with pytest.raises(FlexforgeError, match="another host"):
            github.comments(5)
        assert len(fake.requests) == 1


def test_errors_name_the_status_and_the_permission_hint_without_the_token() -> None:
    with fake_github() as fake:
        github = GitHub(fake.url, "acme/site", "wrong-token")
        with pytest.raises(FlexforgeError) as caught:
            github.upsert_comment(5, "<!-- flexforge -->", "body")
        assert "401" in str(caught.value) and "pull-requests: write" in str(caught.value)
        assert "wrong-token" not in str(caught.value)


def test_no_token_is_a_clear_error() -> None:
    with pytest.raises(FlexforgeError, match="no GitHub token"):
        GitHub("http://127.0.0.1:9", "acme/site", "").pull_request(1)


def test_a_body_over_the_limit_is_refused_as_github_does() -> None:
    with fake_github() as fake:
        github = GitHub(fake.url, "acme/site", TOKEN)
        with pytest.raises(FlexforgeError, match="422 Body is too long"):
            github.upsert_comment(5, "<!-- flexforge -->", "x" * 70_000)
