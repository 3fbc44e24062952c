"""Submit, poll and download over HTTP with retries: the machinery every FLUX.2 provider shares.

A provider is this machinery plus a `Dialect` (routes, auth header, names for messages).

Timing knobs: an `HttpSettings(...)` passed to the provider's constructor, else these environment
variables, else the defaults shown (seconds unless said otherwise):

    FLEXFORGE_POLL_INTERVAL       first wait between two polls of a task        0.5
    FLEXFORGE_POLL_MAX_INTERVAL   the wait grows 1.5x per poll up to this       5.0
    FLEXFORGE_RETRY_BASE_DELAY    first backoff after a 429, 5xx, timeout, reset 0.5
    FLEXFORGE_RETRY_MAX_DELAY     longest backoff                                30
    FLEXFORGE_MAX_RETRIES         retries of one call or download (count)        5
    FLEXFORGE_HTTP_TIMEOUT        timeout of one HTTP call                       60
    FLEXFORGE_TASK_TIMEOUT        how long a task may stay pending               900
    FLEXFORGE_RATE_LIMIT_TIMEOUT  how long 429s may go on for one call           1800

Each is checked by `flexforge.knobs` (finite, not negative; the poll intervals and the HTTP and
task timeouts above 0): a bad value is a usage error naming the variable.
"""

from __future__ import annotations

import asyncio
import os
import random
import statistics
import time
from collections import deque
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal
from urllib.parse import quote, urlsplit

import httpx

from flexforge import __version__
from flexforge.errors import FlexforgeError, ProviderError
from flexforge.imaging import ImageCheckError, verify_image
from flexforge.providers import GeneratedImage, TaskContext
from flexforge.providers._limiter import AdaptiveLimiter, Slot
from flexforge.providers._wire import (
    FAILED,
    MODERATED,
    NOT_FOUND,
    READY,
    build_body,
    describe_details,
    moderation_reasons,
    parse_error,
)
from flexforge.request import ImageRequest

Phase = Literal["submit", "poll", "download"]

# Transport errors after which the request may have reached the server: a submission whose
# response is lost this way may have created (and charged) a task.
_MAYBE_DELIVERED = (httpx.ReadTimeout, httpx.ReadError, httpx.RemoteProtocolError)
# Status codes with which a signed download URL says it expired or was refused.
_URL_REFUSED = frozenset({401, 403, 404, 410})
MAX_SAFETY_TOLERANCE = 5
POOL_CONNECTIONS = 12
STEADY_POLLING = 30.0  # seconds of polling at the base interval before backing off
MIN_SECRET_LENGTH = 12


@dataclass(frozen=True, slots=True)
class HttpSettings:
    poll_interval: float = 0.5
    poll_max_interval: float = 5.0
    retry_base_delay: float = 0.5
    retry_max_delay: float = 30.0
    max_retries: int = 5
    http_timeout: float = 60.0
    task_timeout: float = 900.0
    rate_limit_timeout: float = 1800.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> HttpSettings:
        from flexforge import knobs

        values: dict[str, Any] = {}
        for field in fields(cls):
            var = f"FLEXFORGE_{field.name.upper()}"
            if isinstance(field.default, int):
                values[field.name] = knobs.count(var, field.default, environ=environ)
            else:
                assert isinstance(field.default, float)
                positive = field.name in _POSITIVE
                values[field.name] = knobs.seconds(var, field.default, positive=positive, environ=environ)
        return cls(**values)


# Zero would poll in a busy loop or time out every call at once; the other waits may be zero.
_POSITIVE = frozenset({"poll_interval", "poll_max_interval", "http_timeout", "task_timeout"})


@dataclass(frozen=True, slots=True)
class Dialect:
    """What differs between services that speak the FLUX.2 protocol."""

    service: str  # for messages: "BFL", "CometAPI", "the emulator"
    key_env: str  # the variable that holds the key, named in auth errors
    route_prefix: str  # submit is POST {base}{prefix}/{model}; results at {prefix}/get_result
    bearer: bool  # Authorization: Bearer <key>, else x-key: <key>

    def auth_headers(self, key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"} if self.bearer else {"x-key": key}


class FluxHttpProvider:
    """A Provider for any service speaking the FLUX.2 HTTP protocol."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        dialect: Dialect,
        name: str,
        generator: str = "flux",
        max_in_flight: int = 24,
        settings: HttpSettings | None = None,
    ) -> None:
        self.name = name
        self.generator = generator
        self.max_in_flight = max_in_flight
        self.base_url = base_url.rstrip("/")
        self.dialect = dialect
        self.settings = settings if settings is not None else HttpSettings.from_env()
        self.limiter = AdaptiveLimiter(max_in_flight)
        self._submitting: set[asyncio.Future[None]] = set()
        self._stopping = False
        self.polls = PollTimer()
        self._key = api_key
        self._headers = {**dialect.auth_headers(api_key), "Accept": "application/json"}
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(self.settings.http_timeout, connect=min(10.0, self.settings.http_timeout)),
            # Polls are short: a few connections serve many tasks, and httpcore scans its whole
            # pool on every request, so a large pool costs more CPU than it saves in waiting.
            limits=httpx.Limits(max_connections=POOL_CONNECTIONS),
            headers={"User-Agent": f"flexforge/{__version__}"},
        )

    async def generate(self, request: ImageRequest, task: TaskContext) -> GeneratedImage:
        return await _TaskRun(self, request, task).run()

    async def aclose(self) -> None:
        self._stopping = True
        if self._submitting:
            # Interrupted: let submissions already on the wire come back and be journaled, so a
            # task the API created (and charged) is resumed by the next build, not paid again.
            await asyncio.wait(set(self._submitting), timeout=self.settings.http_timeout)
        await self._client.aclose()

    async def submit_shielded(self, submission: Awaitable[None]) -> None:
        """Run a submission (the POST and the journal entry after it) to its end even if the
        build is cancelled meanwhile; `aclose` waits for it."""
        task = asyncio.ensure_future(submission)
        self._submitting.add(task)
        task.add_done_callback(self._submitted)
        await asyncio.shield(task)

    def _submitted(self, task: asyncio.Future[None]) -> None:
        self._submitting.discard(task)
        if not task.cancelled():
            # Seen here, an error of a submission whose asset stopped waiting (the build was
            # stopped) is not reported again as "exception never retrieved".
            task.exception()

    def redact(self, text: str) -> str:
        # Shorter "keys" are placeholders (the emulator's default is "emulator") whose
        # replacement would garble ordinary words in the message.
        return text.replace(self._key, "***") if len(self._key) >= MIN_SECRET_LENGTH else text

    def result_url(self, task_id: str) -> str:
        return f"{self.base_url}{self.dialect.route_prefix}/get_result?id={quote(task_id, safe='')}"

    def backoff(self, attempt: int) -> float:
        """Jittered exponential delay before retry number `attempt` (1-based)."""
        settings = self.settings
        ceiling = min(settings.retry_max_delay, settings.retry_base_delay * 2.0 ** (attempt - 1))
        return ceiling * random.uniform(0.5, 1.0)

    async def call(
        self,
        method: str,
        url: str,
        *,
        phase: Phase,
        log: _Log,
        body: dict[str, Any] | None = None,
        slot: Slot | None = None,  # only for submissions: the task's place in flight
    ) -> httpx.Response:
        """One request, retried through 429s, retryable 5xx, timeouts and resets.

        Returns the first response that is not worth retrying, whatever its status."""
        failures = 0
        rate_limited = 0
        rate_limited_since = 0.0
        # The signed download URL needs no key, and may live on a storage host: never send it.
        headers = None if phase == "download" else self._headers
        while True:
            if phase == "submit" and self._stopping and (failures or rate_limited):
                # Stopping: wait for an answer on its way, but never send a paid request again.
                raise self.error(f"{phase}: not retried, the build is stopping")
            try:
                response = await self._client.request(
                    method, url, json=body, headers=headers, follow_redirects=phase == "download"
                )
            except httpx.TransportError as exc:
                failures += 1
                reason = _describe_transport(exc)
                if phase == "submit" and isinstance(exc, _MAYBE_DELIVERED):
                    reason += (
                        f"; the response to this submission was lost, so {self.dialect.service}"
                        " may have created and charged a task for it"
                    )
                await self._pause_or_give_up(phase, failures, reason, log)
                continue
            if response.status_code == 429:
                now = time.monotonic()
                if rate_limited == 0:
                    rate_limited_since = now
                elif now - rate_limited_since > self.settings.rate_limit_timeout:
                    raise self.error(
                        f"{phase}: still rate limited (HTTP 429) after "
                        f"{now - rate_limited_since:.0f}s of retries"
                    )
                rate_limited += 1
                delay = _retry_after(response) or self.backoff(min(rate_limited, 8))
                if slot is None:
                    await asyncio.sleep(delay)
                    continue
                # On submit a 429 means too many tasks in flight: fewer from now on, and this
                # one waits outside the limit so that running tasks can finish.
                if slot.rate_limited():
                    log(f"{phase}: rate limited (HTTP 429); at most {self.limiter.limit} tasks in flight now")
                await slot.pause(delay)
                continue
            if response.status_code >= 500 and _retryable(response):
                failures += 1
                detail = parse_error(response.status_code, response.text).message
                await self._pause_or_give_up(phase, failures, f"HTTP {response.status_code} {detail}", log)
                continue
            return response

    async def _pause_or_give_up(self, phase: Phase, failures: int, reason: str, log: _Log) -> None:
        limit = self.settings.max_retries
        if failures > limit:
            raise self.error(f"{phase} failed after {failures} attempts: {reason}")
        delay = self.backoff(failures)
        log(f"{phase}: {reason}; retry {failures}/{limit} in {delay:.1f}s")
        await asyncio.sleep(delay)

    def refusal(self, response: httpx.Response, what: str) -> ProviderError:
        """The error for a final non-2xx answer to a submission or a poll."""
        status = response.status_code
        service = self.dialect.service
        detail = parse_error(status, response.text).message
        if status == 402:
            return self.error(
                f"{service} answered 402 Payment Required ({detail}): not enough credits for "
                f"{what}; add credits and build again (finished assets are kept)",
                fatal=True,
            )
        if status in (401, 403):
            return self.error(
                f"{service} rejected the API key (HTTP {status}); check {self.dialect.key_env}",
                fatal=True,
            )
        if status == 404:
            path = urlsplit(str(response.request.url)).path
            return self.error(f"{service} has no route {path} (HTTP 404: {detail})")
        return self.error(f"{service} refused {what} (HTTP {status}): {detail}")

    def error(self, message: str, *, fatal: bool = False) -> ProviderError:
        return ProviderError(self.redact(message), fatal=fatal)


class _Log:
    """A task's log, with the key scrubbed from every line."""

    def __init__(self, provider: FluxHttpProvider, task: TaskContext) -> None:
        self._provider = provider
        self._task = task

    def __call__(self, message: str) -> None:
        self._task.log(self._provider.redact(message))


class _TaskNotFound(Exception):
    pass


class _TaskRun:
    """One asset's way through submit (or resume), poll and download."""

    def __init__(self, provider: FluxHttpProvider, request: ImageRequest, task: TaskContext) -> None:
        self.p = provider
        self.request = request
        self.task = task
        self.log = _Log(provider, task)
        self.task_id = ""
        self.polling_url = ""
        self.cost: float | None = None

    async def run(self) -> GeneratedImage:
        async with self.p.limiter.slot() as slot:
            result = await self._result(slot)
        self.task.ready()
        return await self._download(result)

    async def _result(self, slot: Slot) -> dict[str, Any]:
        entry = self.task.resumable
        if entry is not None and entry.provider == self.p.name:
            self.task_id, self.polling_url = entry.task_id, entry.polling_url
            self.cost = entry.cost_credits
            self.log(f"polling task {self.task_id} submitted by an earlier run instead of paying again")
            try:
                return await self._wait()
            except _TaskNotFound:
                self.task.finished_task()
                self.log(
                    f"task {self.task_id} from an earlier run is gone (Task not found); submitting it again"
                )
        await self.p.submit_shielded(self._submit(slot))
        try:
            return await self._wait()
        except _TaskNotFound:
            self.task.finished_task()
            raise self.p.error(
                f"{self.p.dialect.service} lost task {self.task_id} (Task not found) "
                "right after submitting it"
            ) from None

    async def _submit(self, slot: Slot) -> None:
        body = await asyncio.to_thread(build_body, self.request)
        url = f"{self.p.base_url}{self.p.dialect.route_prefix}/{self.request.model}"
        self.task.sending()
        response = await self.p.call("POST", url, phase="submit", log=self.log, body=body, slot=slot)
        if not response.is_success:
            raise self.p.refusal(response, f"this {self.request.model} request")
        payload = _json_object(response)
        task_id = payload.get("id")
        if not isinstance(task_id, str) or not task_id:
            raise self.p.error(
                f"{self.p.dialect.service} accepted the submission "
                f"(HTTP {response.status_code}) but sent no task id; it may have been charged, "
                "check the account before building again"
            )
        polling_url = payload.get("polling_url")
        self.task_id = task_id
        self.polling_url = (
            polling_url if isinstance(polling_url, str) and polling_url else self.p.result_url(task_id)
        )
        self.cost = _number(payload.get("cost"))
        self.task.submitted(self.task_id, self.polling_url, self.cost)
        self.p.limiter.succeeded()

    async def _wait(self) -> dict[str, Any]:
        """Poll until the task is Ready; returns its `result`."""
        settings = self.p.settings
        started = time.monotonic()
        deadline = started + settings.task_timeout
        interval = settings.poll_interval
        while True:
            response = await self.p.call("GET", self.polling_url, phase="poll", log=self.log)
            if response.status_code == 404 and NOT_FOUND.lower() in response.text.lower():
                raise _TaskNotFound
            if not response.is_success:
                raise self.p.refusal(response, f"polling task {self.task_id}")
            payload = _json_object(response)
            status = payload.get("status")
            if status == READY:
                result = payload.get("result")
                if isinstance(result, dict) and isinstance(result.get("sample"), str):
                    self.p.polls.finished(time.monotonic() - started)
                    return result
                self.log(f"task {self.task_id} is Ready without result.sample; polling again")
            elif status in MODERATED:
                self.task.finished_task()
                raise self._moderated(str(status), payload.get("details"))
            elif status in FAILED:
                self.task.finished_task()
                details = describe_details(payload.get("details"))
                raise self.p.error(f"task {self.task_id} ended with status {status}: {details}")
            elif status == NOT_FOUND:
                raise _TaskNotFound
            if time.monotonic() > deadline:
                raise self.p.error(
                    f"task {self.task_id} still not ready after {settings.task_timeout:.0f}s "
                    f"(last status {status!r}); the next build polls it again without paying"
                )
            await asyncio.sleep(self.p.polls.wait(time.monotonic() - started, interval))
            # Poll at the base rate while a task is young (most finish within seconds, and every
            # late look adds to the build's makespan); back off only for slow ones.
            if time.monotonic() - started > STEADY_POLLING:
                interval = min(interval * 1.5, settings.poll_max_interval)

    def _moderated(self, status: str, details: object) -> ProviderError:
        reasons = moderation_reasons(details)
        hint = "rephrase the prompt"
        if self.request.safety_tolerance < MAX_SAFETY_TOLERANCE:
            hint += (
                f" or raise safety_tolerance (now {self.request.safety_tolerance}, "
                f"at most {MAX_SAFETY_TOLERANCE})"
            )
        why = ", ".join(reasons) if reasons else describe_details(details)
        return self.p.error(f"{status} ({why}); not charged: {hint}")

    async def _download(self, result: dict[str, Any]) -> GeneratedImage:
        request = self.request
        max_retries = self.p.settings.max_retries
        attempt = 0
        while True:
            attempt += 1
            sample = str(result["sample"])
            response = await self.p.call("GET", sample, phase="download", log=self.log)
            if response.is_success:
                data = response.content
                try:
                    await asyncio.to_thread(
                        verify_image, data, request.width, request.height, request.output_format
                    )
                except ImageCheckError as exc:
                    problem = f"the image downloaded for task {self.task_id} is broken ({exc})"
                else:
                    self.task.finished_task()
                    return GeneratedImage(data, self.task_id, self.cost, _int(result.get("seed")))
            elif response.status_code in _URL_REFUSED:
                problem = (
                    f"the download URL of task {self.task_id} was refused "
                    f"(HTTP {response.status_code}: expired or invalid signature)"
                )
            else:
                problem = f"downloading the image of task {self.task_id} failed (HTTP {response.status_code})"
            if attempt > max_retries:
                raise self.p.error(
                    f"{problem}, {attempt} attempts; the next build fetches it again without paying"
                )
            self.log(f"{problem}; polling for a fresh download URL (retry {attempt}/{max_retries})")
            await asyncio.sleep(self.p.backoff(attempt))
            try:
                result = await self._wait()
            except _TaskNotFound:
                self.task.finished_task()
                raise self.p.error(
                    f"task {self.task_id} expired (Task not found) before its image could be downloaded"
                ) from None


def key_from_env(name: str, what: str) -> str:
    """An API key from $NAME, or from the file named by $NAME_FILE (a mounted CI secret).
    Keys never come from the manifest, and no message ever shows one."""
    key = os.environ.get(name, "").strip()
    if key:
        return key
    path = os.environ.get(f"{name}_FILE", "").strip()
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                key = f.read().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise FlexforgeError(
                f"{name}_FILE names a file that cannot be read ({type(exc).__name__})"
            ) from None
        if key:
            return key
        raise FlexforgeError(f"{name}_FILE names an empty file")
    raise FlexforgeError(
        f"{name} is not set: export your {what} (or {name}_FILE, a file holding it), "
        "or build offline with --provider draft (or --provider emulator)"
    )


class PollTimer:
    """When to look at a task again. Tasks of one run take much the same time, so once a few
    have finished, polls start a little before the next is likely done and come finely until
    it is, instead of landing up to a whole interval late. The estimate is what polling saw, so
    starting early lets it learn the true duration rather than its own lateness."""

    WINDOW = 2.0  # seconds past the expected duration to keep polling finely

    def __init__(self) -> None:
        self._durations: deque[float] = deque(maxlen=64)

    def finished(self, duration: float) -> None:
        self._durations.append(duration)

    def wait(self, elapsed: float, interval: float) -> float:
        if len(self._durations) < 3:
            return interval
        expected = statistics.median(self._durations)
        fine = min(interval, max(0.05, expected * 0.1))
        start = expected * 0.7
        if elapsed < start:
            return max(0.01, min(interval, start - elapsed))
        if elapsed < expected + self.WINDOW:
            return fine
        return interval


def _json_object(response: httpx.Response) -> dict[str, Any]:
    try:
        payload = response.json()
    except ValueError:
        return {}
    return payload if isinstance(payload, dict) else {}


def _retryable(response: httpx.Response) -> bool:
    # CometAPI reports requests its upstream refused as 500 "invalid_request": retrying cannot help.
    return parse_error(response.status_code, response.text).code != "invalid_request"


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    try:
        return min(max(0.0, float(value)), 3600.0) if value else None
    except ValueError:
        return None


def _describe_transport(exc: httpx.TransportError) -> str:
    kind = type(exc).__name__
    text = str(exc)
    return f"{kind} ({text})" if text else kind


def _number(value: object) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    number = _number(value)
    return int(number) if number is not None and number.is_integer() else None
