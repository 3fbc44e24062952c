"""The emulator's HTTP face: the FLUX.2 API of BFL and CometAPI, as an aiohttp application.

Routes (see `reference/bfl-api.md`):
    POST /v1/{model}                 BFL submit (x-key)
    GET  /v1/get_result?id=          BFL's global host: does not know cluster tasks (Task not found)
    GET  /{cluster}/v1/get_result?id=  where BFL's polling_url points (optionally on its own port)
    GET  /v1/credits                 {"credits": n}
    POST /flux/v1/{model}            CometAPI submit (Authorization: Bearer)
    GET  /flux/v1/get_result?id=     CometAPI poll
    GET  /delivery/{id}.{ext}?se=&sig=  signed, expiring download
    GET  /_emulator/stats            counters for tests; GET /_emulator/requests: submissions seen
    POST /_emulator/reset            forget all tasks and counters
    POST /_emulator/config           change knobs at run time (JSON object of knobs)
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from aiohttp import web
from yarl import URL

from flexforge.emulator import billing
from flexforge.emulator.config import SUBMIT_AMBIGUOUS, ConfigError, EmulatorConfig
from flexforge.emulator.signing import UrlSigner
from flexforge.emulator.state import PENDING, READY, EmulatorState, Task
from flexforge.emulator.validation import MODELS, Invalid, Submission, parse_json, used_prompt, validate
from flexforge.imaging import EXTENSIONS
from flexforge.request import ImageRequest, ReferenceInput

Renderer = Callable[[ImageRequest], bytes]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

BFL, COMET = "bfl", "comet"
CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
_FORMAT_OF_EXTENSION = {ext: fmt for fmt, ext in EXTENSIONS.items()}
_HTTP_FAULTS = ("429", "500", "503")
# Headers that carry credentials: kept out of everything the emulator records or serves (its
# request log is unauthenticated, and a client may have sent a real key by mistake).
AUTH_HEADERS = frozenset({"x-key", "authorization", "api-key", "x-api-key", "proxy-authorization", "cookie"})
REDACTED = "[redacted]"


class Emulator:
    """The request handlers and what they share; one per server."""

    def __init__(self, config: EmulatorConfig, renderer: Renderer | None = None) -> None:
        self.state = EmulatorState(config)
        self.signer = UrlSigner(config.url_lifetime)
        self.poll_port: int | None = None  # the bound polling port, once serving
        self._renderer = renderer
        self._renders: dict[str, asyncio.Future[bytes]] = {}
        self._scratch = tempfile.TemporaryDirectory(prefix="flexforge-emulator-")

    @property
    def config(self) -> EmulatorConfig:
        return self.state.config

    def configure(self, config: EmulatorConfig) -> None:
        self.state.reconfigure(config)
        self.signer.lifetime = config.url_lifetime

    def reset(self) -> None:
        self.state.reset()
        self._renders.clear()

    def close(self) -> None:
        self._scratch.cleanup()

    def app(self) -> web.Application:
        app = web.Application(middlewares=[_json_errors], client_max_size=256 * 1024 * 1024)
        cluster = self.config.cluster.strip("/")
        app.router.add_post("/v1/{model}", self._submit_bfl)
        app.router.add_get("/v1/get_result", self._poll_global)
        app.router.add_get("/v1/credits", self._credits)
        app.router.add_get(f"/{cluster}/v1/get_result", self._poll_cluster)
        app.router.add_post("/flux/v1/{model}", self._submit_comet)
        app.router.add_get("/flux/v1/get_result", self._poll_comet)
        app.router.add_get("/delivery/{name}", self._download)
        app.router.add_get("/_emulator/stats", self._stats)
        app.router.add_get("/_emulator/requests", self._requests)
        app.router.add_post("/_emulator/reset", self._reset)
        app.router.add_post("/_emulator/config", self._configure)
        return app

    # --- submit -------------------------------------------------------------------------------

    async def _submit_bfl(self, request: web.Request) -> web.StreamResponse:
        return await self._submit(request, BFL)

    async def _submit_comet(self, request: web.Request) -> web.StreamResponse:
        return await self._submit(request, COMET)

    async def _submit(self, request: web.Request, flavour: str) -> web.StreamResponse:
        model = request.match_info["model"]
        if model not in MODELS:
            return web.json_response({"detail": "Not Found"}, status=404)
        raw = await request.read()
        record: dict[str, Any] = {
            "flavour": flavour,
            "method": request.method,
            "path": request.path,
            "headers": redacted_headers(request.headers),
            "body": _loads_or_text(raw),
        }
        self.state.captured.append(record)
        response = await self._answer_submit(request, flavour, model, raw)
        record["status"] = "dropped" if response is None else response.status
        self.state.stats.answered("submit", record["status"])
        return response if response is not None else web.Response(status=204)

    async def _answer_submit(
        self, request: web.Request, flavour: str, model: str, raw: bytes
    ) -> web.StreamResponse | None:
        """The answer to a submission; None when the connection was dropped."""
        denied = self._authenticate(request, flavour)
        if denied is not None:
            return denied
        fault = self.state.fault("submit")
        if fault == "429":
            return _error(flavour, 429, "emulated 429", code="emulated_fault")
        if fault == "503":  # turned away before anything was made, and it says so
            return _error(
                flavour,
                503,
                "Service temporarily unavailable: no task was created; retry later",
                code="emulated_fault",
                retry_after=1,
            )
        if fault in SUBMIT_AMBIGUOUS and not self.state.fault_creates_task():
            return await self._fault_answer(request, flavour, fault)
        now = time.monotonic()
        limit = self.config.max_in_flight
        if self.state.in_flight(now) >= limit:
            return _error(
                flavour, 429, f"You have exceeded the number of active tasks ({limit})", "rate_limited"
            )
        try:
            body = parse_json(raw)
            submission = validate(model, body)
        except Invalid as exc:
            return _invalid(flavour, exc.errors)

        input_sizes = [image.size for image in submission.images]
        size = (submission.width, submission.height)
        cost = billing.credits(model, *size, input_sizes, comet=flavour == COMET)
        outcome, details = self.state.outcome(submission.prompt)
        charged = outcome == READY  # moderated or failed tasks are not charged
        if charged and cost > self.state.credits:
            return _error(
                flavour,
                402,
                f"Insufficient credits: this task costs {cost:g}, the balance is {self.state.credits:g}",
                "insufficient_quota",
            )
        task = Task(
            id=str(uuid.uuid4()),
            flavour=flavour,
            submission=submission,
            seed=submission.seed if submission.seed is not None else self.state.rng.randrange(2**31),
            submitted_at=now,
            ready_at=now + self.state.latency(),
            outcome=outcome,
            details=details,
            cost=cost,
            charged=charged,
            references=tuple(self._store_reference(image.data) for image in submission.images if image.data),
            started_wall=time.time(),
        )
        self.state.add(task, request.path, body)
        if fault in SUBMIT_AMBIGUOUS:  # the task exists and is charged, but its answer is lost
            self.state.stats.unanswered_tasks += 1
            if fault != "hang":
                return await self._fault_answer(request, flavour, fault)
            await asyncio.sleep(self.config.hang_seconds)
        answer: dict[str, Any] = {"id": task.id}
        if flavour == BFL:
            answer["polling_url"] = str(self._poll_url(request, task))
            answer["cost"] = cost
            known = [size for size in input_sizes if size is not None]
            answer["input_mp"] = round(sum(w * h for w, h in known) / billing.PIXELS_PER_MP, 4)
            answer["output_mp"] = round(submission.width * submission.height / billing.PIXELS_PER_MP, 4)
        else:
            answer["status"] = PENDING
            upstream = self.config.comet_upstream_url.rstrip("/")
            if upstream:
                answer["polling_url"] = f"{upstream}/v1/get_result?id={task.id}"
            elif self.config.comet_polling_url:
                answer["polling_url"] = str(self._poll_url(request, task))
        return web.json_response(answer)

    async def _fault_answer(self, request: web.Request, flavour: str, fault: str) -> web.Response | None:
        """What an ambiguous submit fault answers: an error that says nothing of a task, a
        dropped connection, or (hang, no task made) a gateway timeout after hang_seconds."""
        if fault == "drop":
            _drop(request)
            return None
        if fault == "hang":
            await asyncio.sleep(self.config.hang_seconds)
            fault = "504"
        return _error(flavour, int(fault), f"emulated {fault}", code="emulated_fault")

    def _store_reference(self, data: bytes) -> Path:
        path = Path(self._scratch.name) / hashlib.sha256(data).hexdigest()
        if not path.exists():
            path.write_bytes(data)
        return path

    def _poll_url(self, request: web.Request, task: Task) -> URL:
        if task.flavour == COMET:
            return request.url.with_path("/flux/v1/get_result").with_query(id=task.id)
        url = request.url
        if self.poll_port is not None:
            url = url.with_port(self.poll_port)
        return url.with_path(f"/{self.config.cluster.strip('/')}/v1/get_result").with_query(id=task.id)

    # --- poll ---------------------------------------------------------------------------------

    async def _poll_global(self, request: web.Request) -> web.StreamResponse:
        # BFL's global host does not know tasks owned by a cluster: a client that rebuilt the
        # polling URL instead of following it lands here.
        return await self._poll(request, BFL, owner=None)

    async def _poll_cluster(self, request: web.Request) -> web.StreamResponse:
        return await self._poll(request, BFL, owner=BFL)

    async def _poll_comet(self, request: web.Request) -> web.StreamResponse:
        return await self._poll(request, COMET, owner=COMET)

    async def _poll(self, request: web.Request, flavour: str, owner: str | None) -> web.StreamResponse:
        response = await self._answer_poll(request, flavour, owner)
        if response is not None and self.config.poll_retry_after is not None:
            response.headers["Retry-After"] = f"{self.config.poll_retry_after:g}"
        self.state.stats.polls += 1
        self.state.stats.answered("poll", "dropped" if response is None else response.status)
        return response if response is not None else web.Response(status=204)

    async def _answer_poll(
        self, request: web.Request, flavour: str, owner: str | None
    ) -> web.StreamResponse | None:
        denied = self._authenticate(request, flavour)
        if denied is not None:
            return denied
        fault = self.state.fault("poll")
        if fault == "drop":
            _drop(request)
            return None
        if fault == "hang":
            await asyncio.sleep(self.config.hang_seconds)
        elif fault is not None:
            return _error(flavour, int(fault), f"emulated {fault}", code="emulated_fault")
        task_id = request.query.get("id")
        if not task_id:
            missing = {"type": "missing", "loc": ["query", "id"], "msg": "Field required", "input": None}
            return web.json_response({"detail": [missing]}, status=422)
        task = self.state.tasks.get(task_id)
        if task is None or task.flavour != owner:
            return web.json_response(_poll_body(task_id, "Task not found"))
        now = time.monotonic()
        status = task.status(now)
        if status == PENDING:
            return web.json_response(_poll_body(task.id, PENDING, progress=task.progress(now)))
        if status != READY:
            return web.json_response(_poll_body(task.id, status, details=task.details))
        ext = EXTENSIONS[task.submission.output_format]
        name = f"{task.id}.{ext}"
        sample = request.url.with_path(f"/delivery/{name}").with_query(self.signer.query(name))
        end = task.started_wall + (task.ready_at - task.submitted_at)
        result = {
            "sample": str(sample),
            "prompt": used_prompt(task.submission),
            "seed": task.seed,
            "start_time": round(task.started_wall, 3),
            "end_time": round(end, 3),
            "duration": round(end - task.started_wall, 3),
        }
        return web.json_response(_poll_body(task.id, READY, result=result, progress=1.0))

    async def _credits(self, request: web.Request) -> web.StreamResponse:
        denied = self._authenticate(request, BFL)
        self.state.stats.answered("credits", 403 if denied is not None else 200)
        if denied is not None:
            return denied
        return web.json_response({"credits": round(self.state.credits, 4)})

    # --- download -----------------------------------------------------------------------------

    async def _download(self, request: web.Request) -> web.StreamResponse:
        response = await self._answer_download(request)
        self.state.stats.downloads += 1
        self.state.stats.answered("download", "dropped" if response is None else response.status)
        return response if response is not None else web.Response(status=204)

    async def _answer_download(self, request: web.Request) -> web.StreamResponse | None:
        name = request.match_info["name"]
        fault = self.state.fault("download")
        if fault == "drop":
            _drop(request)
            return None
        if fault == "hang":
            await asyncio.sleep(self.config.hang_seconds)
        if fault in _HTTP_FAULTS:
            return web.Response(status=int(str(fault)), text=f"emulated {fault}")
        refusal = self.signer.check(name, request.query.get("se", ""), request.query.get("sig", ""))
        if fault == "expired":
            refusal = "Signed URL expired"
        if refusal is not None:
            return web.Response(status=403, text=f"AuthenticationFailed: {refusal}")
        task_id, _, ext = name.rpartition(".")
        task = self.state.tasks.get(task_id)
        if task is None or task.status(time.monotonic()) != READY:
            return web.Response(status=404, text="BlobNotFound")
        data = await self._image(task)
        if fault == "truncate":
            data = data[: len(data) // 2]
        content_type = CONTENT_TYPES[_FORMAT_OF_EXTENSION.get(ext, "png")]
        return web.Response(body=data, content_type=content_type)

    async def _image(self, task: Task) -> bytes:
        # One render per task, shared by concurrent downloads, off the event loop.
        render = self._renders.get(task.id)
        if render is None:
            render = asyncio.ensure_future(asyncio.to_thread(self._render, task))
            self._renders[task.id] = render
        return await asyncio.shield(render)

    def _render(self, task: Task) -> bytes:
        if self._renderer is not None:
            return self._renderer(_image_request(task))
        from flexforge.draft import render  # Pillow and fonts load on the first download only

        return render(_image_request(task))

    # --- test hooks ---------------------------------------------------------------------------

    async def _stats(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(self.state.snapshot(time.monotonic()))

    async def _requests(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(list(self.state.captured))

    async def _reset(self, request: web.Request) -> web.StreamResponse:
        self.reset()
        return web.json_response({"reset": True})

    async def _configure(self, request: web.Request) -> web.StreamResponse:
        try:
            knobs = await request.json()
            if not isinstance(knobs, dict):
                raise ConfigError("expected a JSON object of knobs")
            self.configure(self.config.with_knobs(knobs))
        except (ValueError, TypeError) as exc:  # ConfigError and bad JSON are ValueErrors
            return web.json_response({"detail": str(exc)}, status=422)
        return web.json_response({"configured": sorted(knobs)})

    # --- auth ---------------------------------------------------------------------------------

    def _authenticate(self, request: web.Request, flavour: str) -> web.Response | None:
        if flavour == BFL:
            key = request.headers.get("x-key", "")
        else:
            key = request.headers.get("Authorization", "")
            key = key[len("Bearer ") :] if key.startswith("Bearer ") else key  # bare keys work too
        accepted = self.config.accepted_keys
        if key and (not accepted or key in accepted):
            return None
        if flavour == BFL:
            return web.json_response({"detail": "Not authenticated - Invalid Authentication"}, status=403)
        return _error(COMET, 401, "Invalid token", code="invalid_api_key")


def _image_request(task: Task) -> ImageRequest:
    sub: Submission = task.submission
    prompt = used_prompt(sub)  # an upsampled prompt changes the picture, as it would at BFL
    structured: Any = None
    with contextlib.suppress(ValueError):  # a plain prompt is not JSON
        structured = json.loads(prompt)
    return ImageRequest(
        asset_id=task.id,
        model=sub.model,
        prompt=prompt,
        width=sub.width,
        height=sub.height,
        seed=task.seed,
        output_format=sub.output_format,
        safety_tolerance=sub.safety_tolerance,
        steps=sub.steps,
        guidance=sub.guidance,
        prompt_upsampling=sub.prompt_upsampling,
        references=tuple(
            ReferenceInput(label=f"image {i}", path=path, sha256=path.name)
            for i, path in enumerate(task.references, 1)
        ),
        structured=structured if isinstance(structured, dict) else None,
    )


def _poll_body(
    task_id: str,
    status: str,
    *,
    result: dict[str, Any] | None = None,
    progress: float | None = None,
    details: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "id": task_id,
        "status": status,
        "result": result,
        "progress": progress,
        "details": details,
        "preview": None,
    }


def _error(
    flavour: str, status: int, message: str, code: str, *, retry_after: int | None = None
) -> web.Response:
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    if flavour == BFL:
        return web.json_response({"detail": message}, status=status, headers=headers)
    envelope = {"message": message, "type": "comet_api_error", "param": "", "code": code}
    return web.json_response({"error": envelope}, status=status, headers=headers)


def _invalid(flavour: str, errors: list[dict[str, Any]]) -> web.Response:
    if flavour == BFL:
        return web.json_response({"detail": errors}, status=422)
    # CometAPI passes a refused request on as a 500 with code invalid_request.
    first = errors[0]
    param = ".".join(str(part) for part in first["loc"][1:])
    message = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:]) or 'body'}: {e['msg']}" for e in errors)
    envelope = {"message": message, "type": "comet_api_error", "param": param, "code": "invalid_request"}
    return web.json_response({"error": envelope}, status=500)


def _drop(request: web.Request) -> None:
    """Close the connection without an answer, as a reset or a crashed proxy would."""
    if request.transport is not None:
        request.transport.close()


def redacted_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Lower-cased headers with every credential replaced by REDACTED (its presence still shows)."""
    return {k.lower(): REDACTED if k.lower() in AUTH_HEADERS else v for k, v in headers.items()}


def _loads_or_text(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw[:2000].decode("utf-8", "replace")


@web.middleware
async def _json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """FastAPI's shapes for unknown routes and methods."""
    try:
        return await handler(request)
    except web.HTTPNotFound:
        return web.json_response({"detail": "Not Found"}, status=404)
    except web.HTTPMethodNotAllowed:
        return web.json_response({"detail": "Method Not Allowed"}, status=405)
