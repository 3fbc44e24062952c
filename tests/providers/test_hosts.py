"""Which URLs a key may travel to: the policy alone, URL by URL."""

from __future__ import annotations

import pytest

from flexforge.providers._hosts import KeyPolicy, UrlRefused

KEY = "bfl-key-0123456789abcdef"
BFL = KeyPolicy("https://api.bfl.ai", ("bfl.ai",), KEY)
COMET = KeyPolicy("https://api.cometapi.com", (), KEY)
LOCAL = KeyPolicy("http://127.0.0.1:8787", ("bfl.ai",), KEY)


@pytest.mark.parametrize(
    ("policy", "url"),
    [
        (BFL, "https://api.bfl.ai/v1/get_result?id=abc"),
        (BFL, "https://api.eu2.bfl.ai/v1/get_result?id=abc"),
        (BFL, "https://API.US.BFL.AI./v1/get_result?id=abc"),  # case and the root dot
        (BFL, "https://api.bfl.ai:8443/v1/get_result?id=abc"),  # the base host, another port
        (COMET, "https://api.cometapi.com/flux/v1/get_result?id=abc"),
        (LOCAL, "http://127.0.0.1:9999/cluster-eu2/v1/get_result?id=abc"),  # an emulator's poll port
        (LOCAL, "https://api.eu.bfl.ai/v1/get_result?id=abc"),
    ],
)
def test_the_key_goes_to_the_base_host_and_the_documented_domain_over_https(
    policy: KeyPolicy, url: str
) -> None:
    assert str(policy.check(url)).lower() == url.lower()


@pytest.mark.parametrize(
    ("policy", "url", "why"),
    [
        (BFL, "https://evil.example/v1/get_result?id=abc", "host evil.example is not"),
        (BFL, "https://evilbfl.ai/x", "host evilbfl.ai is not"),
        (BFL, "https://api.bfl.ai.evil.example/x", "host api.bfl.ai.evil.example is not"),
        (BFL, "https://api.bfl.ai@evil.example/x", "user name or password"),
        (BFL, "https://evil.example#.bfl.ai", "host evil.example is not"),
        (BFL, "http://api.eu2.bfl.ai/v1/get_result?id=abc", "plain http"),
        (BFL, "http://api.bfl.ai/v1/get_result?id=abc", "plain http"),  # the base is https
        (LOCAL, "http://api.eu2.bfl.ai/v1/get_result?id=abc", "plain http"),
        (LOCAL, "http://localhost:8787/x", "host localhost is not"),
        (COMET, "https://api.bfl.ai/v1/get_result?id=abc", "host api.bfl.ai is not"),
        (COMET, "https://api.eu2.bfl.ai/v1/get_result?id=abc", "is not"),
        (BFL, "ftp://api.bfl.ai/x", "scheme"),
        (BFL, "file:///etc/passwd", "scheme"),
        (BFL, "https:api.bfl.ai", "no valid host"),
        (BFL, "/v1/get_result?id=abc", "scheme"),
        (BFL, "https://api.bfl.ai:99999999/x", "not a valid URL"),
        (BFL, "https://a.bfl.ai\x00.evil.example/", "not a valid URL"),
        (BFL, f"https://api.eu2.bfl.ai/v1/get_result?id=abc&k={KEY}", "contains the API key"),
        (BFL, "https://api.eu2.bfl.ai/v1/get_result?k=" + KEY.replace("-", "%2D"), "contains the API key"),
    ],
)
def test_any_other_url_is_refused_with_a_reason_that_never_shows_the_key(
    policy: KeyPolicy, url: str, why: str
) -> None:
    with pytest.raises(UrlRefused, match=why) as info:
        policy.check(url)
    assert KEY not in str(info.value)


def test_a_placeholder_key_is_not_looked_for_in_urls() -> None:
    # The emulator's dummy key "emulator" is no secret, and a URL may well spell it.
    policy = KeyPolicy("http://127.0.0.1:8787", (), "emulator")
    assert not policy.contains_key("http://127.0.0.1:8787/emulator")
    assert policy.check("http://127.0.0.1:8787/emulator")


def test_the_message_names_where_the_key_may_go() -> None:
    assert BFL.describe() == "https://api.bfl.ai or *.bfl.ai over https"
    assert COMET.describe() == "https://api.cometapi.com"
