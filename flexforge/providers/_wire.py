"""The FLUX.2 wire format: the JSON a request becomes, and what error and result bodies mean.

Pure functions, no I/O beyond reading reference files, so that the exact body can be pinned in
tests. See `reference/bfl-api.md`: unknown fields are silently ignored by the server, so a wrong
field name here would be a silent bug.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

from flexforge import models
from flexforge.errors import ProviderError
from flexforge.request import ImageRequest

# Reference slots in the order the prompt calls them ("image 1", "image 2", ...).
REFERENCE_FIELDS = ("input_image", *(f"input_image_{i}" for i in range(2, 9)))

# Task statuses, as the poll endpoint spells them.
PENDING = "Pending"
READY = "Ready"
MODERATED = ("Request Moderated", "Content Moderated")
FAILED = ("Error", "Failed")
NOT_FOUND = "Task not found"


def route(model: str) -> str:
    """The path segment a submission for `model` goes to."""
    spec = models.MODELS.get(model)
    return spec.route if spec is not None else model


def build_body(request: ImageRequest) -> dict[str, Any]:
    """The JSON body of a submission; reads each reference file once."""
    spec = models.MODELS.get(request.model)
    limit = spec.max_references if spec is not None else len(REFERENCE_FIELDS)
    if len(request.references) > limit:
        raise ProviderError(
            f"{request.model} accepts at most {limit} references, "
            f"{request.asset_id} has {len(request.references)}"
        )
    body: dict[str, Any] = {
        "prompt": request.prompt,
        "width": request.width,
        "height": request.height,
        "seed": request.seed,
        "safety_tolerance": request.safety_tolerance,
        "output_format": request.output_format,
    }
    if spec is not None and spec.flex_knobs:
        for name in models.FLEX_KNOBS:
            value = getattr(request, name)
            body[name] = models.DEFAULTS[name] if value is None else value
    # Always explicit where the model has a switch: the API's default is to rewrite the prompt
    # with an LLM (flex: prompt_upsampling true; pro and max: disable_pup false).
    upsample = bool(request.prompt_upsampling)
    if spec is not None and spec.upsampling == "prompt_upsampling":
        body["prompt_upsampling"] = upsample
    elif spec is not None and spec.upsampling == "disable_pup" and not upsample:
        body["disable_pup"] = True
    for field, ref in zip(REFERENCE_FIELDS, request.references, strict=False):
        body[field] = base64.b64encode(ref.path.read_bytes()).decode("ascii")
    return body


@dataclass(frozen=True, slots=True)
class ApiError:
    """What an error response says, whichever envelope it came in."""

    message: str
    code: str | None = None


def parse_error(status: int, text: str) -> ApiError:
    """Read FastAPI's `detail` (string or list), then `message`, then CometAPI's `error`."""
    try:
        payload = json.loads(text)
    except ValueError:
        payload = None
    if not isinstance(payload, dict):
        snippet = " ".join(text.split())[:200]
        return ApiError(snippet or f"HTTP {status}")
    detail = payload.get("detail")
    if isinstance(detail, list) and detail:
        return ApiError("; ".join(_format_detail_item(item) for item in detail))
    if isinstance(detail, str) and detail:
        return ApiError(detail)
    error = payload.get("error")
    if isinstance(error, dict):
        code = error.get("code")
        message = str(error.get("message") or code or f"HTTP {status}")
        param = error.get("param")
        if param:
            message = f"{param}: {message}"
        return ApiError(message, str(code) if code is not None else None)
    if isinstance(error, str) and error:
        return ApiError(error)
    plain = payload.get("message")
    if isinstance(plain, str) and plain:
        return ApiError(plain)
    return ApiError(f"HTTP {status}")


def _format_detail_item(item: object) -> str:
    if not isinstance(item, dict):
        return str(item)
    loc = [str(part) for part in item.get("loc", [])]
    if loc and loc[0] == "body":
        loc = loc[1:]
    message = str(item.get("msg", "invalid"))
    return f"{'.'.join(loc)}: {message}" if loc else message


def moderation_reasons(details: object) -> list[str]:
    if isinstance(details, dict):
        reasons = details.get("Moderation Reasons") or details.get("moderation_reasons")
        if isinstance(reasons, list):
            return [str(reason) for reason in reasons]
        if isinstance(reasons, str):
            return [reasons]
    return []


def describe_details(details: object) -> str:
    if details in (None, "", {}, []):
        return "no details given"
    if isinstance(details, str):
        return details
    try:
        text = json.dumps(details, sort_keys=True, allow_nan=False)
    except (ValueError, TypeError, RecursionError):  # NaN, or nesting deeper than dumps goes
        return "details not shown (not plain JSON)"
    return text if len(text) <= 500 else text[:497] + "..."
