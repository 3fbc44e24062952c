"""Loopback HTTP servers a test scripts: an attacker's host that records every request it gets,
and a hostile or broken FLUX.2 API whose answers each test chooses."""

from __future__ import annotations

import io
import json
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from PIL import Image, ImageFile

# A test's answer to one request: it writes status, headers and body through the handler.
Responder = Callable[["Handler"], None]


@dataclass(frozen=True, slots=True)
class Received:
    method: str
    path: str  # with its query
    headers: dict[str, str]  # lower-cased names

    def text(self) -> str:
        """Everything the client chose to send, for "is the key in here" checks."""
        return f"{self.method} {self.path}\n" + "\n".join(f"{k}: {v}" for k, v in self.headers.items())


class Handler(BaseHTTPRequestHandler):
    server: LoopbackServer
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        self._handle()

    def _handle(self) -> None:
        self.server.received.append(
            Received(self.command, self.path, {k.lower(): v for k, v in self.headers.items()})
        )
        route = self.path.split("?", 1)[0]
        responder = self.server.routes.get(route) or self.server.routes.get("*") or not_found
        try:
            responder(self)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up: as it should
            self.close_connection = True

    def send_json(self, payload: Any, status: int = 200) -> None:
        self.send_bytes(json.dumps(payload).encode(), "application/json", status)

    def send_bytes(self, body: bytes, content_type: str, status: int = 200) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class LoopbackServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, routes: dict[str, Responder]) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.routes = routes
        self.received: list[Received] = []

    def url(self, path: str = "", *, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.server_port}{path}"


@contextmanager
def serving(routes: dict[str, Responder] | None = None) -> Iterator[LoopbackServer]:
    """A server on 127.0.0.1 (a free port) answering `routes` (path -> responder; "*" for any
    other path; unknown paths get 404), recording every request, for the `with` block."""
    server = LoopbackServer(dict(routes or {}))
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.02}, name="loopback-server", daemon=True
    )
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


# --- responders -----------------------------------------------------------------------------


def not_found(handler: Handler) -> None:
    handler.send_json({"detail": "Not Found"}, 404)


def json_answer(payload: Any, status: int = 200) -> Responder:
    return lambda handler: handler.send_json(payload, status)


def png_answer(width: int, height: int) -> Responder:
    data = png_bytes(width, height)
    return lambda handler: handler.send_bytes(data, "image/png")


def redirect_to(location: str, status: int = 307) -> Responder:
    def respond(handler: Handler) -> None:
        handler.send_response(status)
        handler.send_header("Location", location)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    return respond


def endless(*, declared: int | str | None = None, limit: int = 256 * 2**20, chunk: int = 2**20) -> Responder:
    """A body of zeros far larger than any answer should be, with or without a Content-Length."""

    def respond(handler: Handler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "image/png")
        if declared is not None:
            handler.send_header("Content-Length", str(declared))
        handler.end_headers()
        handler.close_connection = True
        block = bytes(chunk)
        for _ in range(limit // chunk):
            handler.wfile.write(block)

    return respond


def trickle(data: bytes, *, pause: float) -> Responder:
    """`data` one byte at a time, `pause` seconds apart: each read is quick, the whole is not."""

    def respond(handler: Handler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "application/octet-stream")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        for i in range(len(data)):
            handler.wfile.write(data[i : i + 1])
            handler.wfile.flush()
            time.sleep(pause)

    return respond


def png_bytes(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buffer, "PNG")
    return buffer.getvalue()


def flux_api(
    server_url: Callable[[str], str],
    *,
    submit: dict[str, Any] | None = None,
    sample: str | None = None,
    width: int = 128,
    height: int = 96,
) -> dict[str, Responder]:
    """Routes of a FLUX.2 API that answers one task: `submit` is the submit answer (default: a
    polling URL on this server), polls are Ready with `sample` (default: /image here)."""
    answer = submit if submit is not None else {"id": "task-1", "polling_url": server_url("/poll?id=task-1")}
    result = {"sample": sample or server_url("/image"), "seed": 42}
    return {
        "/v1/flux-2-flex": json_answer(answer),
        "/v1/flux-2-pro": json_answer(answer),
        "/poll": json_answer({"id": "task-1", "status": "Ready", "result": result}),
        "/v1/get_result": json_answer({"id": "task-1", "status": "Ready", "result": result}),
        "/image": png_answer(width, height),
    }


def png_declaring(width: int, height: int) -> bytes:
    """A few hundred bytes of PNG whose header declares width x height: decoding it in full
    would take width x height x 3 bytes of memory."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = zlib.compress(bytes(3 * width + 1) * 4)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def spy_on_decodes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """The sizes of the images Pillow decodes from now on, in this process (any thread)."""
    seen: list[tuple[int, int]] = []
    real = ImageFile.ImageFile.load

    def load(image: ImageFile.ImageFile) -> Any:
        seen.append(image.size)
        return real(image)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    return seen
