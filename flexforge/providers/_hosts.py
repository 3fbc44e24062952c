"""Where a key may go: the URLs a provider may send its API key to, or write down.

An API answer and a journal entry (which may come from a cloned repository) are untrusted: the
polling URL they name is used only when it is on the configured base URL's host (any port: a local
emulator polls on a port of its own) or, over https, under a domain the provider documents as its
own (`*.bfl.ai`). Plain http is allowed only when the base URL itself is http. A URL that holds the
key's text is refused everywhere: it would leak the key into the journal, logs and messages.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote, unquote_plus

from flexforge.providers._httpx import httpx

# Shorter "keys" are placeholders (the emulator's dummy key) that ordinary URLs may well contain.
MIN_SECRET_LENGTH = 12
# Host names as resolvers see them (IDNA-encoded); anything else is refused rather than guessed at.
_HOST = re.compile(r"[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?|[0-9a-f:.]*:[0-9a-f:.]*")


class UrlRefused(ValueError):
    """A URL the key must not be sent to; the message says why and never holds the key."""


@dataclass(frozen=True, slots=True)
class KeyPolicy:
    """The hosts one provider's key may travel to."""

    base_url: str  # from the user's environment: trusted
    domains: tuple[str, ...]  # documented domains of the API, reachable over https only
    key: str

    def contains_key(self, text: str) -> bool:
        if len(self.key) < MIN_SECRET_LENGTH:
            return False
        return any(self.key in form for form in (text, unquote(text), unquote_plus(text)))

    def check(self, url: str) -> httpx.URL:
        """The parsed URL to send the key to; raises UrlRefused when the key must not go there.
        Send exactly the returned object: the check and the connection share one parse."""
        if self.contains_key(url):
            raise UrlRefused("it contains the API key")
        try:
            parsed = httpx.URL(url)
        except (httpx.InvalidURL, TypeError):
            raise UrlRefused("it is not a valid URL") from None
        if parsed.scheme not in ("http", "https"):
            raise UrlRefused(f"its scheme {parsed.scheme or 'none'!r} is neither https nor http")
        if parsed.port is not None and not 0 < parsed.port < 65536:
            raise UrlRefused("it is not a valid URL (port out of range)")
        if parsed.userinfo:
            raise UrlRefused("it carries a user name or password before its host")
        host = _host(parsed)
        if host is None:
            raise UrlRefused("it names no valid host")
        base = httpx.URL(self.base_url)
        secure = parsed.scheme == "https"
        if host == _host(base):
            if secure or base.scheme == "http":
                return parsed
            raise UrlRefused(f"it is plain http, while {self.describe()} is https")
        for domain in self.domains:
            if host == domain or host.endswith(f".{domain}"):
                if secure:
                    return parsed
                raise UrlRefused(f"it is plain http to {host}; the key goes to {domain} over https only")
        raise UrlRefused(f"its host {host} is not {self.describe()}")

    def check_task(self, task_id: str, polling_url: str) -> httpx.URL:
        """`check` for a task's polling URL, refusing a task id that holds the key too (the id
        is written to the journal, the ledger and the lock)."""
        if self.contains_key(task_id):
            raise UrlRefused("its task id contains the API key")
        return self.check(polling_url)

    def describe(self) -> str:
        """The allowed hosts, for messages: "api.bfl.ai or *.bfl.ai over https"."""
        base = httpx.URL(self.base_url)
        allowed = [f"{base.scheme}://{_host(base)}"]
        allowed += [f"*.{domain} over https" for domain in self.domains]
        return " or ".join(allowed)


def _host(url: httpx.URL) -> str | None:
    try:
        host = url.raw_host.decode("ascii").lower().rstrip(".")
    except UnicodeDecodeError:
        return None
    return host if _HOST.fullmatch(host) else None
