"""A fake GitHub REST API on loopback: issue comments, pull requests; it records every request."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

TOKEN = "ghs_fake_job_token_0123456789"
BODY_LIMIT = 65_536  # GitHub: "Body is too long (maximum is 65536 characters)"


@dataclass
class Recorded:
    method: str
    path: str
    authorization: str
    body: Any


@dataclass
class FakeGitHub:
    url: str = ""
    token: str = TOKEN
    bot: str = "github-actions[bot]"
    page_size: int = 100
    comments: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    pulls: dict[int, dict[str, Any]] = field(default_factory=dict)
    requests: list[Recorded] = field(default_factory=list)
    next_id: int = 1000
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add_comment(self, number: int, body: str, login: str) -> int:
        with self.lock:
            self.next_id += 1
            self.comments.setdefault(number, []).append(
                {"id": self.next_id, "body": body, "user": {"login": login, "type": "User"}}
            )
            return self.next_id

    def writes(self) -> list[Recorded]:
        return [r for r in self.requests if r.method != "GET"]

    def handle(self, method: str, target: str, auth: str, body: Any) -> tuple[int, Any, dict[str, str]]:
        parts = urlsplit(target)
        path, query = parts.path, parse_qs(parts.query)
        with self.lock:
            self.requests.append(Recorded(method, target, auth, body))
        if auth != f"Bearer {self.token}":
            return 401, {"message": "Bad credentials"}, {}
        if m := re.fullmatch(r"/repos/[^/]+/[^/]+/issues/(\d+)/comments", path):
            number = int(m.group(1))
            if method == "GET":
                page = int(query.get("page", ["1"])[0])
                size = min(int(query.get("per_page", ["30"])[0]), self.page_size)
                items = self.comments.get(number, [])
                chunk = items[(page - 1) * size : page * size]
                headers = {}
                if page * size < len(items):
                    headers["Link"] = f'<{self.url}{path}?per_page={size}&page={page + 1}>; rel="next"'
                return 200, chunk, headers
            if method == "POST":
                text = body.get("body", "")
                if len(text) > BODY_LIMIT:
                    return 422, {"message": "Body is too long (maximum is 65536 characters)"}, {}
                with self.lock:
                    self.next_id += 1
                    made = {"id": self.next_id, "body": text, "user": {"login": self.bot, "type": "Bot"}}
                    self.comments.setdefault(number, []).append(made)
                return 201, made, {}
        if (m := re.fullmatch(r"/repos/[^/]+/[^/]+/issues/comments/(\d+)", path)) and method == "PATCH":
            comment_id = int(m.group(1))
            text = body.get("body", "")
            if len(text) > BODY_LIMIT:
                return 422, {"message": "Body is too long (maximum is 65536 characters)"}, {}
            for items in self.comments.values():
                for comment in items:
                    if comment["id"] == comment_id:
                        if comment["user"]["login"] != self.bot:
                            return 403, {"message": "Resource not accessible by integration"}, {}
                        comment["body"] = text
                        return 200, comment, {}
            return 404, {"message": "Not Found"}, {}
        if m := re.fullmatch(r"/repos/[^/]+/[^/]+/pulls/(\d+)", path):
            pr = self.pulls.get(int(m.group(1)))
            return (200, pr, {}) if pr else (404, {"message": "Not Found"}, {})
        if re.fullmatch(r"/repos/[^/]+/[^/]+/pulls", path) and method == "POST":
            number = max(self.pulls, default=0) + 1
            self.pulls[number] = {"number": number, **body, "html_url": f"https://github.test/pull/{number}"}
            return 201, self.pulls[number], {}
        return 404, {"message": "Not Found"}, {}


@contextmanager
def fake_github() -> Iterator[FakeGitHub]:
    fake = FakeGitHub()

    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            body = json.loads(raw) if raw else None
            status, answer, headers = fake.handle(
                self.command, self.path, self.headers.get("Authorization", ""), body
            )
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PATCH = _serve

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
