"""The few GitHub REST calls flexforge makes: the sticky comment, the pull request, a new pull request."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from flexforge.errors import FlexforgeError
from flexforge.providers._httpx import httpx

API_VERSION = "2022-11-28"
MAX_PAGES = 50  # 5,000 comments: a pull request with more is not worth walking
BOT_LOGIN = "github-actions[bot]"
_NEXT = re.compile(r'<([^>]+)>;\s*rel="next"')


@dataclass(slots=True)
class GitHub:
    """A REST client for one repository, authenticated with the job's token."""

    api_url: str
    repository: str
    token: str
    timeout: float = 30.0

    def _client(self) -> httpx.Client:
        if not self.token:
            raise FlexforgeError(
                "no GitHub token: pass `github-token` to the action (the default is the job's token)"
            )
        return httpx.Client(
            base_url=self.api_url,
            timeout=self.timeout,
            follow_redirects=False,
            headers={
                "Authorization": f"Bearer {self.token}",
                "Accept": "application/vnd.github+json",
                "X-GitHub-Api-Version": API_VERSION,
                "User-Agent": "flexforge",
            },
        )

    def _call(self, method: str, path: str, json: Any = None) -> Any:
        with self._client() as client:
            return _checked(client.request(method, path, json=json), method, path)

    def pull_request(self, number: int) -> dict[str, Any]:
        found = self._call("GET", f"/repos/{self.repository}/pulls/{number}")
        if not isinstance(found, dict):
            raise FlexforgeError(f"GitHub: pull request {number} is not an object")
        return found

    def comments(self, number: int) -> list[dict[str, Any]]:
        """Every comment on an issue or pull request, following the `Link: rel="next"` pages."""
        found: list[dict[str, Any]] = []
        url: str | None = f"/repos/{self.repository}/issues/{number}/comments?per_page=100"
        with self._client() as client:
            for _ in range(MAX_PAGES):
                if url is None:
                    break
                response = client.get(url)
                page = _checked(response, "GET", url)
                if not isinstance(page, list):
                    raise FlexforgeError("GitHub: the comment list is not a list")
                found += [c for c in page if isinstance(c, dict)]
                match = _NEXT.search(response.headers.get("link", ""))
                url = match.group(1) if match else None
                if url is not None and not url.startswith(self.api_url + "/"):
                    # The token goes only to the API it was given for.
                    raise FlexforgeError(f"GitHub: the next page is on another host: {url[:100]}")
        return found

    def upsert_comment(
        self, number: int, marker: str, body: str, author: str = BOT_LOGIN, *, create: bool = True
    ) -> tuple[str, int]:
        """Update this project's comment in place, or create it when `create`:
        ("created" | "updated" | "skipped", its id or 0)."""
        for comment in self.comments(number):
            user = comment.get("user") or {}
            text = comment.get("body") or ""
            if (
                isinstance(text, str)
                and text.split("\n", 1)[0].strip() == marker
                and isinstance(user, dict)
                and user.get("login") == author
                and isinstance(comment.get("id"), int)
            ):
                self._call(
                    "PATCH", f"/repos/{self.repository}/issues/comments/{comment['id']}", {"body": body}
                )
                return "updated", comment["id"]
        if not create:
            return "skipped", 0
        made = self._call("POST", f"/repos/{self.repository}/issues/{number}/comments", {"body": body})
        return "created", int(made.get("id", 0)) if isinstance(made, dict) else 0

    def open_pull_request(self, head: str, base: str, title: str, body: str) -> str:
        made = self._call(
            "POST",
            f"/repos/{self.repository}/pulls",
            {"head": head, "base": base, "title": title, "body": body, "maintainer_can_modify": True},
        )
        url = made.get("html_url", "") if isinstance(made, dict) else ""
        return url if isinstance(url, str) else ""


def _checked(response: httpx.Response, method: str, path: str) -> Any:
    if response.status_code >= 400:
        message = ""
        try:
            doc = response.json()
            message = str(doc.get("message", ""))[:200] if isinstance(doc, dict) else ""
        except ValueError:
            pass
        hint = ""
        if response.status_code in (401, 403, 404):
            hint = (
                " (the job's token needs `pull-requests: write`; a pull request from a fork gets a "
                "read-only token: comment from a `workflow_run` job, see the README)"
            )
        raise FlexforgeError(f"GitHub: {method} {path.split('?')[0]}: {response.status_code} {message}{hint}")
    if response.status_code == 204 or not response.content:
        return None
    try:
        return response.json()
    except ValueError:
        raise FlexforgeError(f"GitHub: {method} {path}: the answer is not JSON") from None
