"""Submit, poll and download over HTTP with retries: the machinery every FLUX.2 provider shares.

A provider is this machinery plus a `Dialect` (routes, auth header, names for messages).

Timing knobs: an `HttpSettings(...)` passed to the provider's constructor, else these environment
variables, else the defaults shown (seconds unless said otherwise):

    FLEXFORGE_POLL_INTERVAL       first wait between two polls of a task        0.5
    FLEXFORGE_POLL_MAX_INTERVAL   the wait grows 1.5x per poll up to this       5.0
    FLEXFORGE_POLL_RATE           polls a second, all of a build's tasks         50
                                  together (see flexforge/providers/_polling.py)
    FLEXFORGE_RETRY_BASE_DELAY    first backoff after a 429, 5xx, timeout, reset 0.5
    FLEXFORGE_RETRY_MAX_DELAY     longest backoff                                30
    FLEXFORGE_MAX_RETRIES         retries of one call or download (count)        5
    FLEXFORGE_HTTP_TIMEOUT        timeout of one HTTP call                       60
    FLEXFORGE_TASK_TIMEOUT        how long a task may stay pending               900
    FLEXFORGE_RATE_LIMIT_TIMEOUT  how long 429s may go on for one call           1800
    FLEXFORGE_SUBMIT_REPLAY       replays of a submission that may have been      0
                                  charged (0 or 1; see "Submitting" below)
    FLEXFORGE_DOWNLOAD_TIMEOUT    the whole of one image download, however slow   120

Submitting: there is no idempotency key, so a submission is retried only when it surely created
no task: the connection failed before the body was sent, a 429, or a 503 that says the service
is unavailable (a Retry-After header, or words to that effect). After anything else (a read
timeout or a dropped connection once the body was sent, a 500, 502 or 504, a 503 that says
nothing) the service may have created and charged the task: the asset fails saying so, and the
engine counts it and keeps its reservation against --max-cost. FLEXFORGE_SUBMIT_REPLAY=1 allows
one replay of such a submission (so at most two paid tasks for it) for those who prefer that.

Retry-After is honoured on every answer that carries it, bounded: by FLEXFORGE_RETRY_MAX_DELAY
for 429s and 5xx, by FLEXFORGE_POLL_MAX_INTERVAL between polls of a pending task.

Each is checked by `flexforge.knobs` (finite, not negative; the poll intervals, the HTTP, task
and download timeouts above 0): a bad value is a usage error naming the variable.

Every answer is read with a bound: an image at most MAX_IMAGE_BYTES, a JSON answer at most
MAX_ANSWER_BYTES, each within a total deadline (not only a per-read timeout, which a trickle of one
byte a second never trips). Numbers the API sends (cost) count only when they are finite and sane.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import random
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal
from urllib.parse import quote, urlsplit

from flexforge import __version__
from flexforge.errors import FlexforgeError, ProviderError, UsageError
from flexforge.imaging import ImageCheckError, verify_image
from flexforge.providers import GeneratedImage, JournalEntry, TaskContext
from flexforge.providers._hosts import MIN_SECRET_LENGTH, KeyPolicy, UrlRefused
from flexforge.providers._httpx import httpx
from flexforge.providers._limiter import AdaptiveLimiter, Slot
from flexforge.providers._polling import DEFAULT_POLL_RATE, PollTimer, load_prior, save_prior
from flexforge.providers._wire import (
    FAILED,
    MODERATED,
    NOT_FOUND,
    PENDING,
    READY,
    build_body,
    describe_details,
    moderation_reasons,
    parse_error,
    route,
)
from flexforge.request import ImageRequest

Phase = Literal["submit", "poll", "download", "credits"]

# Transport errors after which the request may have reached the server: a submission whose
# response is lost this way may have created (and charged) a task.
_MAYBE_DELIVERED = (httpx.ReadTimeout, httpx.ReadError, httpx.RemoteProtocolError)
# A 503 whose text says this never reached the point of creating a task.
_UNAVAILABLE = re.compile(r"unavailable|overload|capacity|maintenance|try again|retry later", re.I)
# Status codes with which a signed download URL says it expired or was refused.
_URL_REFUSED = frozenset({401, 403, 404, 410})
MAX_SAFETY_TOLERANCE = 5
POOL_CONNECTIONS = 12
SUBMISSIONS_FIRST = 0.25  # seconds a download may wait for submissions on the wire (above)
STEADY_POLLING = 30.0  # seconds of polling at the base interval before backing off
# A 4 MP image is at most 16 MiB as raw RGBA; no encoded one comes near four times that.
MAX_IMAGE_BYTES = 64 * 2**20
# Submit and poll answers are a few hundred bytes of JSON; this leaves room for a preview.
MAX_ANSWER_BYTES = 4 * 2**20
MAX_REDIRECTS = 5  # a signed download URL may redirect to its storage host, not endlessly
# No single image costs anywhere near this (the dearest is about 120 credits): a larger `cost`
# is nonsense, and counting it would stop a build at its --max-cost for nothing.
MAX_TASK_CREDITS = 10_000.0
# The prompt the API says it used is recorded as told, but a record is no place for a novel.
MAX_USED_PROMPT = 200_000


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
    download_timeout: float = 120.0
    submit_replay: int = 0  # 0 or 1: replays of a submission that may have been charged
    poll_rate: int = DEFAULT_POLL_RATE  # polls a second, all tasks together

    def __post_init__(self) -> None:
        # A NaN or zero deadline would fail (or never end) every download.
        if not (math.isfinite(self.download_timeout) and self.download_timeout > 0):
            got = self.download_timeout
            raise UsageError(f"FLEXFORGE_DOWNLOAD_TIMEOUT must be a number of seconds above 0, got {got}")
        if self.poll_rate < 1:
            got = self.poll_rate
            raise UsageError(f"FLEXFORGE_POLL_RATE must be a number of polls a second, 1 or more, got {got}")
        if self.submit_replay not in (0, 1):
            raise UsageError(
                f"FLEXFORGE_SUBMIT_REPLAY must be 0 or 1 (at most one replay), got {self.submit_replay}"
            )

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
_POSITIVE = frozenset(
    {"poll_interval", "poll_max_interval", "http_timeout", "task_timeout", "download_timeout"}
)


@dataclass(frozen=True, slots=True)
class Dialect:
    """What differs between services that speak the FLUX.2 protocol."""

    service: str  # for messages: "BFL", "CometAPI", "the emulator"
    key_env: str  # the variable that holds the key, named in auth errors
    route_prefix: str  # submit is POST {base}{prefix}/{model}; results at {prefix}/get_result
    bearer: bool  # Authorization: Bearer <key>, else x-key: <key>
    # Domains the service documents as its own, where polling URLs may point over https
    # (besides the base URL's host): see _hosts.KeyPolicy.
    domains: tuple[str, ...] = ()
    credits_path: str | None = None  # GET {base}{path} -> {"credits": n}; None: no documented one
    # Poll {base}{prefix}/get_result?id= always, and a polling_url only when it is on the base
    # URL's host: a reseller may pass its upstream's URL through, where its key has no business.
    own_results: bool = False

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
        self._quiet: list[asyncio.Future[None]] = []  # downloads waiting for no submission on the wire
        self._stopping = False
        self._durations = _cache_folder()
        prior = load_prior(self._durations, name) if self._durations is not None else None
        self.polls = PollTimer(self.settings.poll_rate, prior)
        self._key = api_key
        self.key_policy = KeyPolicy(self.base_url, dialect.domains, api_key)
        self._headers = {**dialect.auth_headers(api_key), "Accept": "application/json"}
        timeout = httpx.Timeout(self.settings.http_timeout, connect=min(10.0, self.settings.http_timeout))
        # Polls are short: a few connections serve many tasks, and httpcore scans its whole
        # pool on every request, so a large pool costs more CPU than it saves in waiting.
        limits = httpx.Limits(max_connections=POOL_CONNECTIONS)
        agent = {"User-Agent": f"flexforge/{__version__}"}
        # One TLS context for both pools, as each client would make its own: reading the CA
        # bundle costs ~20 ms of start-up, on the way to the first submission. The same one
        # httpx makes itself (certifi, or SSL_CERT_FILE / SSL_CERT_DIR).
        tls = httpx.create_ssl_context()
        self._client = httpx.AsyncClient(timeout=timeout, limits=limits, headers=agent, verify=tls)
        # Images come through a pool of their own: a wave of downloads (large, slow, from a
        # storage host) must not take every connection while Ready tasks wait to be seen and
        # freed places to be refilled, which is what the makespan is made of.
        self._downloads = httpx.AsyncClient(timeout=timeout, limits=limits, headers=agent, verify=tls)

    async def generate(self, request: ImageRequest, task: TaskContext) -> GeneratedImage:
        return await _TaskRun(self, request, task).run()

    async def aclose(self) -> None:
        self._stopping = True
        if self._submitting:
            # Interrupted: let submissions already on the wire come back and be journaled, so a
            # task the API created (and charged) is resumed by the next build, not paid again.
            await asyncio.wait(set(self._submitting), timeout=self.settings.http_timeout)
        await self._client.aclose()
        learnt = self.polls.expected()
        if learnt is not None and self._durations is not None:
            save_prior(self._durations, self.name, learnt)
        await self._downloads.aclose()

    async def credits(self) -> float | None:
        """The account's balance in credits (1 credit = US$0.01), or None when the service
        documents no way to ask."""
        if self.dialect.credits_path is None:
            return None
        url = f"{self.base_url}{self.dialect.credits_path}"
        response = await self.call("GET", url, phase="credits", log=lambda line: None)
        if not response.is_success:
            raise self.refusal(response, "the credit balance")
        value = _json_object(response).get("credits")
        # A JSON number only, finite and not negative: an untrusted answer must not pass a check.
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        balance = float(value) if ok and abs(value) < 1e18 else math.nan  # type: ignore[arg-type]
        if not (math.isfinite(balance) and balance >= 0):
            raise self.error(f"{self.dialect.service} answered the credit balance with no usable number")
        return balance

    async def submit_shielded(self, submission: Awaitable[None]) -> None:
        """Run a submission (the POST and the journal entry after it) to its end even if the
        build is cancelled meanwhile; `aclose` waits for it."""
        task = asyncio.ensure_future(submission)
        self._submitting.add(task)
        task.add_done_callback(self._submitted)
        await asyncio.shield(task)

    async def after_submissions(self) -> None:
        """Wait, at most SUBMISSIONS_FIRST seconds, for the submissions on the wire to be
        answered. A task seen Ready frees its place at once, and the next task's submission
        starts the next second of the makespan: a wave of downloads (and the writes after them)
        taking the CPU and the API's attention at that moment made those submissions several
        times slower. The images are not needed before the end; the downloads wait."""
        await asyncio.sleep(0)  # the task that takes the freed place starts its submission
        if not self._submitting:
            return
        quiet = asyncio.get_running_loop().create_future()
        self._quiet.append(quiet)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(quiet, SUBMISSIONS_FIRST)
        finally:
            if quiet in self._quiet:
                self._quiet.remove(quiet)

    def _submitted(self, task: asyncio.Future[None]) -> None:
        self._submitting.discard(task)
        if not self._submitting:
            waiting, self._quiet = self._quiet, []
            for quiet in waiting:
                if not quiet.done():
                    quiet.set_result(None)
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
        log: Callable[[str], None],
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
        target: str | httpx.URL = url
        if headers is not None:
            # The last word before the key leaves: whatever the caller checked or built.
            try:
                target = self.key_policy.check(url)
            except UrlRefused as exc:
                raise self.error(f"{phase}: the key is not sent to that URL: {exc}") from None
        while True:
            if phase == "submit" and self._stopping and (failures or rate_limited):
                # Stopping: wait for an answer on its way, but never send a paid request again.
                raise self.error(f"{phase}: not retried, the build is stopping")
            try:
                response = await self._fetch(method, target, body=body, headers=headers, phase=phase)
            except _TooLarge as exc:
                what = "the image" if phase == "download" else f"the {phase} answer"
                message = f"{phase}: {what} is larger than {exc.limit // 2**20} MiB ({exc}); refused unread"
                if phase == "submit":  # an answer, but none that says whether a task was made
                    raise AmbiguousSubmit(message) from None
                raise self.error(message) from None
            except httpx.TransportError as exc:
                failures += 1
                reason = _describe_transport(exc)
                if isinstance(exc, httpx.ConnectError):
                    # Name the place and the likely fix: a typo'd base URL, an emulator not started.
                    where = f"{self.dialect.service} at {self.base_url}"
                    reason = f"cannot connect to {where} ({reason}); {UNREACHABLE_HINT}"
                if phase == "submit" and isinstance(exc, _MAYBE_DELIVERED):
                    raise AmbiguousSubmit(f"{reason} after the request was sent") from None
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
                delay = self.retry_after(response) or self.backoff(min(rate_limited, 8))
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
                detail = parse_error(response.status_code, response.text).message
                reason = f"HTTP {response.status_code} {detail}"
                if phase == "submit" and not _surely_refused(response):
                    raise AmbiguousSubmit(reason)
                failures += 1
                await self._pause_or_give_up(phase, failures, reason, log, self.retry_after(response))
                continue
            return response

    def retry_after(self, response: httpx.Response, ceiling: float | None = None) -> float | None:
        """The answer's Retry-After in seconds, bounded: a server must not stall a build."""
        value = _retry_after(response)
        return (
            None
            if value is None
            else min(value, self.settings.retry_max_delay if ceiling is None else ceiling)
        )

    async def _fetch(
        self,
        method: str,
        url: str | httpx.URL,
        *,
        body: dict[str, Any] | None,
        headers: dict[str, str] | None,
        phase: Phase,
    ) -> httpx.Response:
        """One exchange, its answer read whole but bounded in size and in total time."""
        client = self._downloads if phase == "download" else self._client
        request = client.build_request(method, url, json=body, headers=headers)
        limit = MAX_IMAGE_BYTES if phase == "download" else MAX_ANSWER_BYTES
        settings = self.settings
        deadline = settings.download_timeout if phase == "download" else settings.http_timeout
        try:
            async with asyncio.timeout(None if phase == "submit" else deadline) as window:
                if phase == "submit":
                    # Uploading references may take long on a slow line: the deadline starts
                    # once the body is sent, and covers the whole answer.
                    async def trace(event: str, info: dict[str, Any]) -> None:
                        if event.endswith("send_request_body.complete"):
                            window.reschedule(asyncio.get_running_loop().time() + deadline)

                    request.extensions["trace"] = trace
                response = await self._send(client, request, follow=phase == "download")
                return await _read_bounded(response, limit)
        except TimeoutError:
            raise httpx.ReadTimeout(f"no complete answer within {deadline:g}s", request=request) from None

    async def _send(
        self, client: httpx.AsyncClient, request: httpx.Request, *, follow: bool
    ) -> httpx.Response:
        """Send, following at most MAX_REDIRECTS redirects when `follow` without reading their
        bodies (httpx would read each one whole)."""
        for _ in range(MAX_REDIRECTS + 1):
            response = await client.send(request, stream=True)
            if not follow or response.next_request is None:
                return response
            await response.aclose()
            request = response.next_request
        raise self.error(f"download: more than {MAX_REDIRECTS} redirects from {request.url.host}")

    async def _pause_or_give_up(
        self,
        phase: Phase,
        failures: int,
        reason: str,
        log: Callable[[str], None],
        retry_after: float | None = None,
    ) -> None:
        limit = self.settings.max_retries
        if failures > limit:
            raise self.error(f"{phase} failed after {failures} attempts: {reason}")
        delay = self.backoff(failures) if retry_after is None else retry_after
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


class AmbiguousSubmit(Exception):
    """A submission that may have created (and charged) a task though no answer says so."""


class _KeyRefused(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


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
        self.submitted_at: float | None = None

    async def run(self) -> GeneratedImage:
        async with self.p.limiter.slot() as slot:
            result = await self._result(slot)
        self.task.ready()
        await self.p.after_submissions()
        return await self._download(result)

    async def _result(self, slot: Slot) -> dict[str, Any]:
        entry = self.task.resumable
        if entry is not None and entry.provider == self.p.name and self._may_resume(entry):
            self.task_id, self.polling_url = entry.task_id, entry.polling_url
            self.cost = self._cost(entry.cost_credits, f"the journal entry of task {entry.task_id}")
            self.log(f"polling task {self.task_id} submitted by an earlier run instead of paying again")
            try:
                return await self._wait(journaled=True)
            except _TaskNotFound:
                self.task.finished_task()
                self.log(
                    f"task {self.task_id} from an earlier run is gone (Task not found); submitting it again"
                )
            except _KeyRefused as exc:
                # The key changed since that run (rotated, or another account's): its task cannot
                # be reached with this key, and failing the build for it would fail every build.
                self.task.finished_task()
                self.log(
                    f"warning: polling task {self.task_id} from an earlier run was refused (HTTP "
                    f"{exc.status}: the key changed since it was submitted?); dropped from the journal, "
                    "submitting it again (if that task was charged, its image is lost)"
                )
            self.cost = None
        await self.p.submit_shielded(self._submit(slot))
        try:
            return await self._wait(submitted_at=self.submitted_at)
        except _TaskNotFound:
            self.task.finished_task()
            raise self.p.error(
                f"{self.p.dialect.service} lost task {self.task_id} (Task not found) "
                "right after submitting it"
            ) from None

    async def _submit(self, slot: Slot) -> None:
        # Encoding references reads files: a worker thread. Without any, it is a dict: inline, as a
        # trip through the thread pool (busy with downloads) would delay the submission.
        request = self.request
        body = await asyncio.to_thread(build_body, request) if request.references else build_body(request)
        url = f"{self.p.base_url}{self.p.dialect.route_prefix}/{route(self.request.model)}"
        response = await self._post_once(url, body, slot)
        self.submitted_at = time.monotonic()  # what the timer measures durations from
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
        if not isinstance(polling_url, str) or not polling_url:
            polling_url = self.p.result_url(task_id)
        elif self.p.dialect.own_results and not _same_host(polling_url, self.p.base_url):
            self.log(
                f"{self.p.dialect.service} named a polling URL on another host; "
                "polling its own get_result instead"
            )
            polling_url = self.p.result_url(task_id)
        try:
            self.p.key_policy.check_task(task_id, polling_url)
        except UrlRefused as exc:
            # Not journaled: no request goes there now, and none from a later build either.
            raise self.p.error(
                f"{self.p.dialect.service} accepted the submission as task {task_id}, but its polling "
                f"URL is refused ({exc}), so the key is not sent there; it may have been charged, "
                "check the account before building again"
            ) from None
        self.task_id = task_id
        self.polling_url = polling_url
        self.cost = self._cost(payload.get("cost"), f"task {task_id}")
        recorded = self.task.submitted(self.task_id, self.polling_url, self.cost)
        if recorded is not None:
            await recorded
        self.p.limiter.succeeded()

    async def _post_once(self, url: str, body: dict[str, Any], slot: Slot) -> httpx.Response:
        """POST the submission; after an answer that leaves it unknown whether a task was made,
        fail rather than pay twice, unless FLEXFORGE_SUBMIT_REPLAY allows (and the engine's
        budget has room for) one replay."""
        replays = 0
        while True:
            try:
                self.task.sending()
                return await self.p.call("POST", url, phase="submit", log=self.log, body=body, slot=slot)
            except AmbiguousSubmit as exc:
                service = self.p.dialect.service
                lost = f"submit: {exc}: {service} may have created the task, so it may have been charged"
                wants = replays < self.p.settings.submit_replay
                if self.task.maybe_charged(lost, replay=wants) and wants:
                    replays += 1
                    self.log(f"{lost}; replaying it once, as FLEXFORGE_SUBMIT_REPLAY=1 allows")
                    await asyncio.sleep(self.p.backoff(1))
                    continue
                hint = (
                    "not replayed: the run's --max-cost has no room for a second payment"
                    if wants
                    else "not sent again so as not to pay twice (FLEXFORGE_SUBMIT_REPLAY=1 allows one replay)"
                )
                raise self.p.error(f"{lost}; {hint}; check the account before building again") from None

    def _may_resume(self, entry: JournalEntry) -> bool:
        """Whether the key may go to the journaled task's polling URL; says why not if not.
        The journal may come from a cloned repository, so its URL is as untrusted as an answer."""
        try:
            self.p.key_policy.check_task(entry.task_id, entry.polling_url)
        except UrlRefused as exc:
            self.task.finished_task()
            self.log(
                f"warning: the journal entry of task {entry.task_id} from an earlier run is dropped: "
                f"its polling URL is refused ({exc}), so the key is not sent there; submitting anew"
            )
            return False
        return True

    def _cost(self, value: object, where: str) -> float | None:
        """The API's cost if it is a sane number of credits; else None (the estimate counts)."""
        if value is None:
            return None
        cost = _credits(value)
        if cost is None:
            shown = repr(value) if isinstance(value, (int, float, str)) else type(value).__name__
            self.log(
                f"warning: {where} has cost {shown[:40]}, not a number of credits from 0 to "
                f"{MAX_TASK_CREDITS:g}; the estimate counts instead"
            )
        return cost

    async def _wait(self, *, journaled: bool = False, submitted_at: float | None = None) -> dict[str, Any]:
        """Poll until the task is Ready; returns its `result`. A `journaled` task (an earlier
        run's) whose poll is refused as unauthorised raises _KeyRefused, not a fatal error.
        A task `submitted_at` (monotonic) by this build is first looked at when the timer says
        (see _polling), and teaches it how long tasks take; any other is looked at at once."""
        settings = self.p.settings
        timer = self.p.polls
        fresh = submitted_at is not None
        started = submitted_at if submitted_at is not None else time.monotonic()
        deadline = started + settings.task_timeout
        interval = settings.poll_interval
        not_before = 0.0  # a Retry-After from the last answer
        pending: float | None = None  # elapsed time at the last Pending answer
        looks = 0
        looked = 0.0  # elapsed time at the last look
        while True:
            if fresh or looks:
                last = looked if looks else None
                await self._until_due(timer, started, interval, not_before, first=not looks, last=last)
            await asyncio.sleep(timer.turn())
            looked = time.monotonic() - started
            looks += 1
            response = await self.p.call("GET", self.polling_url, phase="poll", log=self.log)
            if response.status_code == 404 and NOT_FOUND.lower() in response.text.lower():
                raise _TaskNotFound
            if journaled and response.status_code in (401, 403):
                raise _KeyRefused(response.status_code)
            if not response.is_success:
                raise self.p.refusal(response, f"polling task {self.task_id}")
            payload = _json_object(response)
            status = payload.get("status")
            if status == READY:
                result = payload.get("result")
                if isinstance(result, dict) and isinstance(result.get("sample"), str):
                    if fresh:
                        timer.finished(pending, looked)
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
            elif isinstance(status, str) and status != PENDING:
                # As BFL's SDK does: a status this client does not know is the end of the task,
                # not something to poll for 900 s while holding a place in flight.
                self.task.finished_task()
                details = describe_details(payload.get("details"))
                raise self.p.error(
                    f"task {self.task_id} ended with status {status!r}, which flexforge does not know "
                    f"({details}); treated as failed"
                )
            if time.monotonic() > deadline:
                raise self.p.error(
                    f"task {self.task_id} still not ready after {settings.task_timeout:.0f}s "
                    f"(last status {status!r}); the next build polls it again without paying"
                )
            pending = looked if status == PENDING else pending
            asked = self.p.retry_after(response, ceiling=settings.poll_max_interval)
            not_before = 0.0 if asked is None else time.monotonic() + asked
            # Poll at the base rate while a task is young (most finish within seconds, and every
            # late look adds to the build's makespan); back off only for slow ones.
            if time.monotonic() - started > STEADY_POLLING:
                interval = min(interval * 1.5, settings.poll_max_interval)

    @staticmethod
    async def _until_due(
        timer: PollTimer,
        started: float,
        interval: float,
        not_before: float,
        *,
        first: bool,
        last: float | None,
    ) -> None:
        """Sleep until the timer says to look (again, if it learns something meanwhile), and
        never before the last answer's Retry-After."""
        while True:
            now = time.monotonic()
            wait = max(timer.wait(now - started, interval, first=first, last=last), not_before - now)
            first = False
            if wait <= 0 or not await timer.sleep(wait):
                return

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
            if self.p.key_policy.contains_key(sample):
                # The key travels in headers to the API only; never in a URL to a storage host.
                self.task.finished_task()
                raise self.p.error(f"the download URL of task {self.task_id} contains the API key: refused")
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
                    used = result.get("prompt")
                    return GeneratedImage(
                        data,
                        self.task_id,
                        self.cost,
                        _seed(result.get("seed")),
                        used if isinstance(used, str) and len(used) <= MAX_USED_PROMPT else None,
                    )
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


def _cache_folder() -> str | None:
    """The user cache, where learnt task durations are kept; None when it cannot be named."""
    from flexforge.paths import user_cache_root

    try:
        return user_cache_root()
    except (FlexforgeError, OSError):
        return None


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


class _TooLarge(Exception):
    def __init__(self, detail: str, limit: int) -> None:
        super().__init__(detail)
        self.limit = limit


async def _read_bounded(response: httpx.Response, limit: int) -> httpx.Response:
    """The streamed `response` read into memory, at most `limit` bytes (after any decompression:
    a chunk read off the wire inflates at most about a thousandfold); closed in any case."""
    chunks: list[bytes] = []
    try:
        declared = response.headers.get("Content-Length", "").strip().lstrip("0")
        # (A length of more digits than any limit is refused before int() would balk at it.)
        if declared.isdigit() and (len(declared) > len(str(limit)) or int(declared) > limit):
            raise _TooLarge(f"it declares {int(declared)} bytes", limit)
        total = 0
        async for chunk in response.aiter_bytes():
            total += len(chunk)
            if total > limit:
                raise _TooLarge(f"more than {limit} bytes arrived", limit)
            chunks.append(chunk)
    finally:
        await response.aclose()
    # The bytes are decoded already: a Content-Encoding left in would decode them again.
    headers = [(k, v) for k, v in response.headers.raw if k.lower() != b"content-encoding"]
    return httpx.Response(
        response.status_code, headers=headers, content=b"".join(chunks), request=response.request
    )


def _json_object(response: httpx.Response) -> dict[str, Any]:
    try:
        payload = response.json()
    except ValueError:
        return {}
    return payload if isinstance(payload, dict) else {}


def _same_host(url: str, base: str) -> bool:
    try:
        host = httpx.URL(url).host
    except (httpx.InvalidURL, TypeError):
        return False
    return bool(host) and host.lower() == httpx.URL(base).host.lower()


def _surely_refused(response: httpx.Response) -> bool:
    """A 503 that says the service is unavailable (Retry-After, or words to that effect) was
    turned away before any task was made; any other 5xx to a submission may have made one."""
    if response.status_code != 503:
        return False
    return "Retry-After" in response.headers or bool(_UNAVAILABLE.search(response.text[:2000]))


def _retryable(response: httpx.Response) -> bool:
    # CometAPI reports requests its upstream refused as 500 "invalid_request": retrying cannot help.
    return parse_error(response.status_code, response.text).code != "invalid_request"


def _retry_after(response: httpx.Response) -> float | None:
    """Retry-After as seconds (a number, or an HTTP date), or None when absent or unreadable."""
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        from email.utils import parsedate_to_datetime

        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError, IndexError):
            return None
    return max(0.0, seconds) if seconds == seconds else None  # NaN is no answer


UNREACHABLE_HINT = (
    "check the network, the base URL (BFL_API_BASE, COMETAPI_BASE, FLEXFORGE_EMULATOR_URL) "
    "and, for the emulator, that `flexforge emulator` is running"
)


def _describe_transport(exc: httpx.TransportError) -> str:
    kind = type(exc).__name__
    text = str(exc)
    return f"{kind} ({text})" if text else kind


def _seed(value: object) -> int | None:
    """The seed a result reports, if it is one: a whole number in 0..2**63 (JSON numbers only)."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value if 0 <= value < 2**63 else None


def _credits(value: object) -> float | None:
    """A cost as the API sent it, if it is a real number of credits: no strings (the API sends
    numbers; "NaN" would pass float()), no bools, nothing infinite, negative or absurd."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        cost = float(value)
    except OverflowError:  # an int beyond any float
        return None
    return cost if math.isfinite(cost) and 0.0 <= cost <= MAX_TASK_CREDITS else None
