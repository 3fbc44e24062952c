"""Signed, expiring download URLs, like the storage links the real API hands out."""

from __future__ import annotations

import hashlib
import hmac
import os
import time


class UrlSigner:
    def __init__(self, lifetime: float, secret: bytes | None = None) -> None:
        self.lifetime = lifetime
        self._secret = secret if secret is not None else os.urandom(32)

    def query(self, name: str, now: float | None = None) -> dict[str, str]:
        """The `se` (expiry, epoch seconds) and `sig` parameters for /delivery/<name>."""
        expires = f"{(time.time() if now is None else now) + self.lifetime:.3f}"
        return {"se": expires, "sig": self._sign(name, expires)}

    def check(self, name: str, expires: str, signature: str) -> str | None:
        """None if the link is valid, else why it is refused."""
        if not hmac.compare_digest(self._sign(name, expires), signature):
            return "Signature did not match"
        try:
            deadline = float(expires)
        except ValueError:
            return "Signature did not match"
        if time.time() > deadline:
            return "Signed URL expired"
        return None

    def _sign(self, name: str, expires: str) -> str:
        message = f"{name}\n{expires}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()
