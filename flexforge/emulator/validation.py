"""What the emulated API accepts: a submission body checked field by field, FastAPI-style errors.

Written from `reference/bfl-api.md` on its own, not from the client's code: a shared mistake
would otherwise pass unnoticed.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from dataclasses import dataclass, field
from typing import Any

# The emulator's own copy of the model facts, kept apart from flexforge/models.py on purpose: it
# plays the API, so it must not share a mistake with the client it tests.
MODELS = (
    "flux-2-flex",
    "flux-2-pro",
    "flux-2-max",
    "flux-2-klein-4b",
    "flux-2-klein-9b",
    "flux-2-pro-preview",
    "flux-2-klein-9b-preview",
)
FLEX = "flux-2-flex"
FLEX_ONLY = ("steps", "guidance", "prompt_upsampling")
# pro and max rewrite every prompt unless told `disable_pup: true` (BFL's SDK sends it).
PUP_MODELS = ("flux-2-pro", "flux-2-max", "flux-2-pro-preview")
KLEIN_REFUSED = ("prompt_upsampling", "disable_pup")  # klein has no switch and may refuse either
IMAGE_FIELDS = ("input_image", *(f"input_image_{i}" for i in range(2, 9)))
COMMON = ("prompt", "width", "height", "seed", "safety_tolerance", "output_format")
WEBHOOK = ("webhook_url", "webhook_secret")
FORMATS = ("jpeg", "png", "webp")
MAX_PIXELS = 2048 * 2048  # "4 MP"
AUTO_SIZE = 1024  # what width/height 0 means without an input image
MAX_IMAGE_BYTES = 20 * 1024 * 1024


def used_prompt(submission: Submission) -> str:
    """The prompt the model actually follows: rewritten ("upsampled") by an LLM when flex's
    prompt_upsampling is on (its default), and on pro and max unless disable_pup is true, as live
    answers show. The emulator's rewrite is a fixed, visible suffix."""
    if submission.prompt_upsampling or submission.disable_pup is False:
        return f"{submission.prompt} {UPSAMPLED_SUFFIX}"
    return submission.prompt


UPSAMPLED_SUFFIX = "Rendered in rich detail, with soft natural light and a balanced composition."


def max_images(model: str) -> int:
    return 4 if model.startswith("flux-2-klein") else 8


@dataclass(slots=True)
class InputImage:
    data: bytes | None  # None: given as a URL, which the emulator does not fetch
    size: tuple[int, int] | None


@dataclass(slots=True)
class Submission:
    """A body that passed validation, with the API's defaults filled in."""

    model: str
    prompt: str
    width: int
    height: int
    seed: int | None
    safety_tolerance: int
    output_format: str
    steps: int | None = None
    guidance: float | None = None
    prompt_upsampling: bool | None = None
    disable_pup: bool | None = None  # pro and max
    images: list[InputImage] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # fields the model does not know


class Invalid(Exception):
    """422: the body breaks the schema; `errors` is FastAPI's `detail` list."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__(f"{len(errors)} validation errors")
        self.errors = errors


def parse_json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError as exc:
        position = getattr(exc, "pos", 0)
        raise Invalid(
            [
                {
                    "type": "json_invalid",
                    "loc": ["body", position],
                    "msg": "JSON decode error",
                    "input": {},
                    "ctx": {"error": str(exc).split(":")[0]},
                }
            ]
        ) from None


def validate(model: str, body: Any) -> Submission:
    if not isinstance(body, dict):
        raise Invalid([_err("dict_type", (), "Input should be a valid dictionary", body)])
    errors: list[dict[str, Any]] = []
    check = _Checker(body, errors)
    prompt = check.string("prompt", required=True)
    width = check.integer("width", default=0, low=0)
    height = check.integer("height", default=0, low=0)
    seed = check.integer("seed", default=None)
    safety = check.integer("safety_tolerance", default=2, low=0, high=5)
    output_format = check.choice("output_format", FORMATS, default="jpeg")
    flex = model == FLEX
    steps = check.integer("steps", default=50, low=1, high=50) if flex else None
    guidance = check.number("guidance", default=4.5, low=1.5, high=10.0) if flex else None
    upsampling = check.boolean("prompt_upsampling", default=True) if flex else None
    pup = model in PUP_MODELS
    disable_pup = check.boolean("disable_pup", default=False) if pup else None
    if model.startswith("flux-2-klein"):
        for name in KLEIN_REFUSED:
            if name in body:
                errors.append(_err("extra_forbidden", (name,), "Extra inputs are not permitted", body[name]))
    for name in WEBHOOK:
        check.string(name, required=False)

    images: list[InputImage] = []
    limit = max_images(model)
    for index, name in enumerate(IMAGE_FIELDS):
        value = body.get(name)
        if value is None:
            continue
        if index >= limit:
            errors.append(
                _err("too_many_images", (name,), f"{model} accepts at most {limit} input images", "…")
            )
            continue
        image = check.image(name)
        if image is not None:
            images.append(image)

    for name, value in (("width", width), ("height", height)):
        if value and (value < 64 or value % 16):
            rule = ("greater_than_equal", "greater than or equal to 64", {"ge": 64})
            if value >= 64:
                rule = ("multiple_of", "a multiple of 16", {"multiple_of": 16})
            errors.append(_err(rule[0], (name,), f"Input should be {rule[1]}", value, rule[2]))
    if width and height and width * height > MAX_PIXELS:
        errors.append(
            _err(
                "value_error",
                (),
                f"Value error, width * height must be at most {MAX_PIXELS} pixels (4 MP)",
                {"width": width, "height": height},
            )
        )
    if errors:
        raise Invalid(errors)

    known = set(COMMON) | set(WEBHOOK) | set(IMAGE_FIELDS[:limit]) | (set(FLEX_ONLY) if flex else set())
    known |= {"disable_pup"} if pup else set()
    width, height = _auto_size(width, height, images)
    return Submission(
        model=model,
        prompt=str(prompt),
        width=width,
        height=height,
        seed=seed,
        safety_tolerance=int(safety),
        output_format=str(output_format),
        steps=steps,
        guidance=guidance,
        prompt_upsampling=upsampling,
        disable_pup=disable_pup,
        images=images,
        ignored=sorted(k for k in body if k not in known and k not in IMAGE_FIELDS),
    )


def _auto_size(width: int, height: int, images: list[InputImage]) -> tuple[int, int]:
    """0 means auto: the first input image's size for an edit, else 1024, snapped to the grid."""
    base = images[0].size if images and images[0].size else (AUTO_SIZE, AUTO_SIZE)
    w, h = width or base[0], height or base[1]
    scale = min(1.0, (MAX_PIXELS / (w * h)) ** 0.5)
    return max(64, int(w * scale) // 16 * 16), max(64, int(h * scale) // 16 * 16)


class _Checker:
    def __init__(self, body: dict[str, Any], errors: list[dict[str, Any]]) -> None:
        self.body = body
        self.errors = errors

    def _fail(self, kind: str, name: str, msg: str, ctx: dict[str, Any] | None = None) -> None:
        self.errors.append(_err(kind, (name,), msg, self.body.get(name), ctx))

    def string(self, name: str, *, required: bool) -> str | None:
        if name not in self.body or self.body[name] is None:
            if required:
                self.errors.append(_err("missing", (name,), "Field required", self.body))
            return None
        value = self.body[name]
        if not isinstance(value, str):
            self._fail("string_type", name, "Input should be a valid string")
            return None
        return value

    def integer(
        self, name: str, *, default: int | None, low: int | None = None, high: int | None = None
    ) -> Any:
        value = self.body.get(name)
        if value is None:
            return default
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            self._fail("int_type", name, "Input should be a valid integer")
            return default
        return self._bounded(name, value, low, high)

    def number(self, name: str, *, default: float, low: float, high: float) -> Any:
        value = self.body.get(name)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self._fail("float_type", name, "Input should be a valid number")
            return default
        return self._bounded(name, float(value), low, high)

    def _bounded(self, name: str, value: Any, low: Any, high: Any) -> Any:
        if low is not None and value < low:
            self._fail(
                "greater_than_equal", name, f"Input should be greater than or equal to {low}", {"ge": low}
            )
        elif high is not None and value > high:
            self._fail("less_than_equal", name, f"Input should be less than or equal to {high}", {"le": high})
        return value

    def boolean(self, name: str, *, default: bool) -> Any:
        value = self.body.get(name)
        if value is None:
            return default
        if not isinstance(value, bool):
            self._fail("bool_type", name, "Input should be a valid boolean")
            return default
        return value

    def choice(self, name: str, options: tuple[str, ...], *, default: str) -> Any:
        value = self.body.get(name)
        if value is None:
            return default
        if value not in options:
            quoted = [f"'{o}'" for o in options]
            self._fail("enum", name, f"Input should be {', '.join(quoted[:-1])} or {quoted[-1]}")
            return default
        return value

    def image(self, name: str) -> InputImage | None:
        value = self.body[name]
        if not isinstance(value, str):
            self._fail("string_type", name, "Input should be a valid string")
            return None
        if value.startswith(("http://", "https://")):
            return InputImage(None, None)
        encoded = value.split(",", 1)[1] if value.startswith("data:") else value
        try:
            data = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            self._fail("value_error", name, "Value error, not valid base64 or a URL")
            return None
        if len(data) > MAX_IMAGE_BYTES:
            self._fail("value_error", name, "Value error, image larger than 20 MB")
            return None
        from PIL import Image

        try:
            with Image.open(io.BytesIO(data)) as img:
                size = img.size
        except Exception:  # Pillow raises many types for undecodable data
            self._fail("value_error", name, "Value error, could not decode the image")
            return None
        return InputImage(data, size)


def _err(
    kind: str, loc: tuple[str, ...], msg: str, value: Any, ctx: dict[str, Any] | None = None
) -> dict[str, Any]:
    if isinstance(value, str) and len(value) > 80:
        value = value[:77] + "..."  # base64 images would flood the answer
    error: dict[str, Any] = {"type": kind, "loc": ["body", *loc], "msg": msg, "input": value}
    if ctx:
        error["ctx"] = ctx
    return error
