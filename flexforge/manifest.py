"""Loading `flexforge.yaml`: schema validation, semantic checks, defaults, vars -> `Manifest`."""

from __future__ import annotations

import dataclasses
import difflib
import errno
import hashlib
import json
import os
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flexforge import models
from flexforge.confine import Resolver, extension_problem, output_problem, private_part
from flexforge.errors import Diagnostic, FlexforgeError, ManifestError, UsageError, clip, has_control
from flexforge.imaging import API_FORMATS, EXTENSIONS, LOCAL_FORMATS
from flexforge.models import FLEX_MODEL
from flexforge.paths import MANIFEST_NAME, STATE_DIR, manifest_cache_file
from flexforge.rendition import RENDITION, describe, operations
from flexforge.settings import Settings

if TYPE_CHECKING:
    from flexforge.reads import FileRead

SCHEMA_PATH = Path(__file__).parent / "schemas" / "manifest-v1.schema.json"
CACHE_VERSION = 6  # bump when what validation produces (or refuses) changes
CACHE_LIMIT = 512 * 1024 * 1024

# Knobs that only some models take: set on another asset itself they are an error, in `defaults`
# they apply to the models that take them.
MODEL_KNOBS = (*models.FLEX_KNOBS, models.UPSAMPLING)
BUILTIN_DEFAULTS: dict[str, Any] = dict(models.DEFAULTS)
MAX_PIXELS = models.MAX_PIXELS
MAX_RENDITION_PIXELS = 40_000_000  # a delivered image, not a generation: the API's limit does not apply
MAX_TEXT = 100_000  # characters of one prompt or path after vars: far past any real prompt
KEY_LIKE = re.compile(r"(^|_|-)(api_?key|key|token|secret|password|authorization|x-key)$", re.I)
# The last letter of every name KEY_LIKE matches (no case-insensitive twin of y, n, t or d exists).
_KEY_ENDINGS = {"y", "n", "t", "d"}
_VAR = re.compile(r"\{\{|\}\}|\{([^{}]*)\}")


@dataclass(frozen=True, slots=True)
class Asset:
    """One declared image, with defaults applied and vars substituted."""

    id: str
    model: str
    prompt: str  # exactly as sent: structured prompts serialized
    structured: dict[str, Any] | None
    width: int
    height: int
    output_format: str
    safety_tolerance: int
    steps: int | None  # knobs a model does not take (models.py) are None
    guidance: float | None
    prompt_upsampling: bool | None  # flex, pro and max
    seed: int | None  # None: drawn at the first build and pinned in the lock
    references: tuple[str, ...]  # as written: asset ids or root-relative POSIX paths
    asset_refs: tuple[str, ...]  # the subset that are asset ids
    out: str  # root-relative POSIX path
    line: int
    # Delivery size when it differs from the generated width x height (cover-scale, centre-crop).
    final_size: tuple[int, int] | None = None
    tags: tuple[str, ...] = ()  # for selection only: never part of the key
    # The matrix that declared it and its cell ("post-{product} product=widget"); None if by hand.
    origin: str | None = None
    rendition: dict[str, Any] | None = None  # a free rendition's canonical operations
    max_cost_usd: float | None = None  # this asset's own budget: build refuses a plan over it
    # References are scaled down to at most this many megapixels before upload; None: as they are.
    reference_max_mp: float | None = None
    # False: a candidate kept in the object cache only (no `settings: variants_dir:`); its `out`
    # is where it would go, recorded in the lock, never written or read.
    written: bool = True

    def reference_size(self, width: int, height: int) -> tuple[int, int]:
        """The size a reference of width x height is uploaded at."""
        if self.reference_max_mp is None:
            return width, height
        from flexforge.imaging import fit_megapixels

        return fit_megapixels(width, height, self.reference_max_mp)

    @property
    def is_flex(self) -> bool:
        return self.model == FLEX_MODEL


@dataclass(frozen=True, slots=True)
class Manifest:
    path: Path
    root: Path
    assets: dict[str, Asset]  # in topological order (dependencies first)
    label: str  # the manifest's path as messages show it
    settings: Settings = field(default_factory=Settings)

    @property
    def state_dir(self) -> Path:
        return self.root / STATE_DIR

    def require(self, asset_id: str) -> Asset:
        self.check_ids([asset_id])
        return self.assets[asset_id]

    def check_ids(self, ids: Iterable[str], flag: str = "") -> None:
        """The one message (and exit code 2) for asset ids the manifest does not have."""
        unknown = sorted(set(ids) - set(self.assets))
        if unknown:
            noun = "asset id" if len(unknown) == 1 else "asset ids"
            where = f"{flag}: " if flag else ""
            raise UsageError(f"{where}unknown {noun} {', '.join(unknown)}: not in {self.label}")


# Outputs are committed and checked out everywhere: a path must fit the tightest common limits
# (255 bytes a name on every file system; 1024 bytes, macOS's PATH_MAX, for the whole path).
MAX_NAME_BYTES = 255
MAX_PATH_BYTES = 1024


def path_length_problem(rel: str) -> str | None:
    """Why a relative path is too long for the file systems a repository is checked out on."""
    encoded = rel.encode("utf-8", "surrogatepass")
    if len(encoded) <= MAX_NAME_BYTES:
        return None  # no name in it can be longer than the whole (most paths)
    if len(encoded) > MAX_PATH_BYTES:
        return f"is {len(encoded)} bytes long; paths may be at most {MAX_PATH_BYTES}"
    longest = max((len(part.encode("utf-8", "surrogatepass")) for part in rel.split("/")), default=0)
    if longest > MAX_NAME_BYTES:
        return f"has a name of {longest} bytes; file systems allow at most {MAX_NAME_BYTES}"
    return None


def _folded(rel: str) -> str:
    """`rel` as a case-insensitive, normalising file system (APFS, NTFS) tells names apart."""
    return unicodedata.normalize("NFC", unicodedata.normalize("NFC", rel).casefold())


def folded_path(rel: str) -> str:
    """A root-relative path as sibling_outputs keys it: normalised, then _folded."""
    import posixpath

    return _folded(posixpath.normpath(rel))


def display_path(path: Path, base: Path | None = None) -> str:
    """A path as users typed it: relative to where they run (or -C) when inside it."""
    base = base or Path.cwd()
    return path.relative_to(base).as_posix() if path.is_relative_to(base) else str(path)


def find_manifest(file: str | None, directory: Path) -> Path:
    return (directory / file).resolve() if file else (directory / MANIFEST_NAME).resolve()


@cache
def _validator() -> Any:
    import jsonschema  # costly import, needed only when a manifest must be validated

    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    return jsonschema.Draft202012Validator(schema)


def load_manifest(path: Path, label: str | None = None) -> Manifest:
    """Read and validate a manifest; every problem is raised at once as a ManifestError.
    `label` names the file in messages (default: relative to the working directory).

    A manifest whose bytes were validated before comes from the user's cache instead: parsing
    YAML and running the schema dominate a no-op build, and only its reference files can change
    under an unchanged manifest, so those are checked again."""
    from flexforge.fsutil import FileTooLarge, read_regular
    from flexforge.yamlsource import MAX_BYTES

    label = label or display_path(path)
    try:
        # A plain file only (through a link, which -f may name): a FIFO must not hang the
        # command, nor a link to /dev/zero fill its memory.
        raw = read_regular(path, MAX_BYTES, follow=True)
    except FileNotFoundError:
        raise FlexforgeError(f"no manifest at {label}; run `flexforge init` or pass -f FILE") from None
    except FileTooLarge:
        message = f"larger than {MAX_BYTES // 2**20} MiB"
        raise ManifestError([Diagnostic(label, 1, 1, "", message)]) from None
    except OSError as exc:
        raise ManifestError([Diagnostic(label, 1, 1, "", f"cannot read: {exc.strerror}")]) from None
    fingerprint = _fingerprint(raw)
    cached = _read_cache(path, fingerprint, label)
    if cached is not None:
        return cached
    manifest = _validate(path, label, raw)
    _write_cache(manifest, fingerprint)
    return manifest


def _fingerprint(raw: bytes) -> str:
    from flexforge import __version__

    return hashlib.sha256(f"{CACHE_VERSION}:{__version__}:".encode() + raw).hexdigest()


def _read_cache(path: Path, fingerprint: str, label: str) -> Manifest | None:
    """The manifest validated earlier from these very bytes, from the user's cache (never from
    the repository: docs/security.md), if the files it relied on are still where they were."""
    from flexforge.fsutil import read_regular

    try:
        doc = json.loads(read_regular(manifest_cache_file(path, "manifest"), CACHE_LIMIT))
        if doc["fingerprint"] != fingerprint or doc["siblings"] != _sibling_stamps(path):
            return None
        assets = {raw["id"]: _asset_from_json(raw) for raw in doc["assets"]}
        settings = Settings.from_data(doc["settings"])
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return None
    root = path.parent
    if not _still_confined(root, assets.values()):
        return None  # validate afresh, for an error that names the line
    return Manifest(path, root, assets, label, settings)


def _still_confined(root: Path, assets: Any) -> bool:
    """What validation checked on the filesystem, checked again: every reference file is a file
    inside the root, and every output may be written. A folder swapped for a link since the
    cache was written must not slip through as "valid"."""
    resolver = Resolver(root)
    for asset in assets:
        if output_problem(resolver, asset.out, asset.output_format) is not None:
            return False
        for ref in asset.references:
            if ref in asset.asset_refs:
                continue
            real = resolver.inside(ref)
            if real is None or not os.path.isfile(resolver.root / real):
                return False
    return True


def _write_cache(manifest: Manifest, fingerprint: str) -> None:
    from flexforge.fsutil import atomic_write

    # Field by field, not dataclasses.asdict: that deep-copies every prompt and tuple on the way
    # (a tenth of a cold plan at 1,000 assets), and json.dumps reads them where they are.
    names = _ASSET_FIELDS
    assets = [{name: getattr(a, name) for name in names} for a in manifest.assets.values()]
    doc = {
        "fingerprint": fingerprint,
        "siblings": _sibling_stamps(manifest.path),
        "assets": assets,
        "settings": manifest.settings.to_json(),
    }
    data = json.dumps(doc, separators=(",", ":"), allow_nan=False)
    target = Path(manifest_cache_file(manifest.path, "manifest"))
    try:
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        atomic_write(target, data.encode(), durable=False)
    except (OSError, ValueError):
        pass  # an unwritable cache folder: still works, only slower


_ASSET_FIELDS = tuple(f.name for f in dataclasses.fields(Asset))


def _asset_from_json(raw: dict[str, Any]) -> Asset:
    raw["references"] = tuple(raw["references"])
    raw["asset_refs"] = tuple(raw["asset_refs"])
    if raw["final_size"] is not None:
        raw["final_size"] = tuple(raw["final_size"])
    raw["tags"] = tuple(raw["tags"])
    return Asset(**raw)


def sibling_manifests(path: Path) -> list[Path]:
    """The other YAML files in the manifest's folder: any may be a manifest writing beside it."""
    found = sorted([*path.parent.glob("*.yaml"), *path.parent.glob("*.yml")])
    return [sibling for sibling in found if sibling.name != path.name]


def _sibling_stamps(path: Path) -> list[list[Any]]:
    """What tells the sibling manifests changed (name and stamp each): a manifest validated
    before is validated again when one is added, edited or removed."""
    from flexforge.noop import file_stamp

    return [[s.name, file_stamp(str(s))] for s in sibling_manifests(path)]


def sibling_outputs(path: Path) -> dict[str, tuple[str, str]]:
    """Output paths the other manifests in this folder write (as folded_path keys them -> (file
    name, asset id)), read leniently: a broken sibling is its own validation's business. Only
    literal `out:` values and default paths are known; an `out` built from vars is skipped."""
    import yaml

    found: dict[str, tuple[str, str]] = {}
    for sibling in sibling_manifests(path):
        if not sibling.is_file() or sibling.is_symlink():
            continue
        try:
            if sibling.stat().st_size > 4 * 2**20 or b"assets:" not in sibling.read_bytes()[: 1 << 20]:
                continue
            data = yaml.safe_load(sibling.read_bytes())
        except (OSError, yaml.YAMLError, RecursionError, ValueError):
            continue
        if not isinstance(data, dict) or data.get("version") != 1:
            continue
        fmt_default = _mapping(data.get("defaults")).get("output_format", "png")
        for asset_id, raw in _mapping(data.get("assets")).items():
            raw = _mapping(raw)
            fmt = raw.get("output_format", fmt_default)
            out = raw.get("out", f"assets/{asset_id}.{EXTENSIONS.get(str(fmt), 'png')}")
            if isinstance(out, str) and "{" not in out:
                found.setdefault(folded_path(out), (sibling.name, str(asset_id)))
    return found


def _covering(final_size: str) -> tuple[int, int]:
    """The smallest valid generated size (multiples of 16, at least 64) covering `final_size`:
    `final_size: 1080x1080` alone generates 1088x1088 and crops."""
    w, h = (int(n) for n in final_size.split("x"))
    return max(64, -(-w // 16) * 16), max(64, -(-h // 16) * 16)


# An asset's knobs whose refusal says all there is to say about them: the asset is checked as if
# they were absent (its default applies), so its other errors come in the same run. Anything
# else refused (the prompt, the model, a preset size, paths, references...) leaves the asset
# unchecked, as what follows from it would only be errors of the error.
_LEFT_OUT_ALONE = frozenset(
    {"steps", "guidance", "safety_tolerance", "seed", "prompt_upsampling", "reference_max_mp"}
    | {"tags", "max_cost_usd", "width", "height"}
)


def _refused(path: tuple[str | int, ...]) -> tuple[str | int, ...]:
    """What a schema error at `path` takes out of the semantic checks: one of an asset's knobs
    alone, else the whole entry of its section."""
    if len(path) >= 3 and path[0] == "assets" and path[2] in _LEFT_OUT_ALONE:
        return path[:3]
    return path[:2]


def _raw_refs(raw: Any, assets: dict[str, Any]) -> tuple[str, ...]:
    refs = _mapping(raw).get("references")
    return tuple(r for r in refs if isinstance(r, str) and r in assets) if isinstance(refs, list) else ()


def _either(words: tuple[str, ...]) -> str:
    return f"{', '.join(words[:-1])} or {words[-1]}" if len(words) > 1 else words[0]


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _looks_secret(name: object, value: object) -> bool:
    """A key-like field holding a string (`api_key: sk-...`); an asset or var named `token`
    is just a name (callers skip those sections), and `key: {prompt: ...}` holds no key."""
    return (
        isinstance(name, str)
        and isinstance(value, str | int)
        and name[-1:].lower() in _KEY_ENDINGS  # most names end otherwise: no regex for them
        and bool(KEY_LIKE.search(name))
    )


def _validate(path: Path, label: str, raw: bytes) -> Manifest:
    from flexforge.yamlsource import parse_yaml

    doc = parse_yaml(raw)
    checker = _Checker(path, label, doc)
    for problem in doc.problems:
        checker.error(problem.path, problem.message, at=(problem.line, problem.col))
    if doc.data is None and not doc.problems:
        checker.error((), "the file holds no YAML document")
    # Duplicate keys leave a document to check further; a syntax error leaves none.
    manifest = checker.check() if doc.data is not None else None
    if checker.diagnostics:
        raise ManifestError(list(checker.diagnostics))
    assert manifest is not None
    return manifest


class _Checker:
    """Collects every problem in one pass over the document, in the order a reader meets them."""

    def __init__(self, path: Path, label: str, doc: Any) -> None:
        self.path = path
        self.label = label
        self.root = path.parent
        self.doc = doc
        # In the order found, each once: a dict, as 60,000 duplicate keys made a list's
        # membership test quadratic.
        self.diagnostics: dict[Diagnostic, None] = {}
        # where in the manifest -> (the reference as written, the root-relative file it leads to)
        self.file_refs: dict[tuple[str | int, ...], tuple[str, str]] = {}
        self.resolver = Resolver(self.root)
        # (section, name) the schema refused: their meaning is not checked, their errors suffice.
        self.invalid: set[tuple[str | int, ...]] = set()
        self.origins: dict[str, tuple[str, dict[str, str]]] = {}
        self.unwritten: set[str] = set()
        # Reference files to read (digest and header in one pass) once every asset is checked:
        # (where in the manifest, the reference as written, the file it leads to, asset ids a
        # misspelt one may have meant).
        self.to_read: list[tuple[tuple[str | int, ...], str, str, dict[str, Any]]] = []
        self.ref_sizes: dict[str, tuple[int, int]] = {}  # reference as written -> its header's size

    def error(
        self,
        path: tuple[str | int, ...],
        message: str,
        *,
        at: tuple[int, int] | None = None,
        key: bool = False,
    ) -> None:
        if at is None:
            at = self.doc.key_where(path) if key else self.doc.where(path)
        dotted = ".".join(str(p) for p in path)
        diag = Diagnostic(self.label, at[0], at[1], dotted, message)
        self.diagnostics.setdefault(diag)

    # -- structure -------------------------------------------------------------------------------

    def check(self) -> Manifest | None:
        data = self.doc.data
        if not isinstance(data, dict):
            self.error((), "the manifest must be a mapping with `version: 1` and `assets:`")
            return None
        self._secrets(data, ())
        from flexforge.expand import expand

        # Fragments, matrices and presets first: what follows sees the assets as if hand-written.
        folder = _mapping(data.get("settings")).get("variants_dir")
        folder = self._variants_dir(folder) if isinstance(folder, str) else None
        expansion = expand(data, self.doc, self.error, folder)
        self.origins = expansion.origins
        self.unwritten = expansion.unwritten
        self._schema(expansion.data)
        # Every error at once: the meaning of what the schema accepted is checked too.
        return self._semantics(expansion.data)

    def _secrets(self, node: Any, path: tuple[str | int, ...]) -> None:
        # Only containers are walked into: a scalar holds no key (most of a manifest's values).
        if isinstance(node, dict):
            for name, value in node.items():
                if isinstance(value, dict | list):
                    self._secrets(value, (*path, name))
                elif _looks_secret(name, value) and path != ("assets",) and path[:1] != ("vars",):
                    self.error(
                        (*path, name),
                        "API keys never live in the manifest: remove it and set BFL_API_KEY "
                        "(or COMETAPI_KEY) in the environment",
                        key=True,
                    )
        elif isinstance(node, list):
            for i, value in enumerate(node):
                if isinstance(value, dict | list):
                    self._secrets(value, (*path, i))

    def _schema(self, data: dict[str, Any]) -> None:
        from flexforge.schema_check import accepts

        if accepts(data):
            return  # certainly valid: jsonschema would find nothing, ten times slower
        for err in _validator().iter_errors(data):
            path = tuple(err.absolute_path)
            if err.validator == "additionalProperties":
                node = err.instance if isinstance(err.instance, dict) else {}
                allowed = list(err.schema.get("properties", {}))
                unknown = [name for name in node if name not in allowed]
                if path[:1] == ("assets",) and len(path) == 2:
                    # A name with no meaning is only left out: the rest of the asset is checked.
                    self.invalid.update((*path, name) for name in unknown)
                else:
                    self.invalid.add(path[:2])
                for name in unknown:
                    if _looks_secret(name, node[name]):
                        continue
                    hint = difflib.get_close_matches(name, allowed, n=1)
                    also = (
                        f" (did you mean {hint[0]!r}?)"
                        if hint
                        else f"; expected one of: {', '.join(allowed)}"
                    )
                    self.error((*path, name), f"unknown key {name!r}{also}", key=True)
                continue
            self.invalid.add(_refused(path))
            if "propertyNames" in err.schema_path:
                bad = err.instance
                self.invalid.add((*path, bad)[:2])
                what = "asset id" if path[-1:] == ("assets",) else "name"
                self.error(
                    (*path, bad),
                    f"{bad!r} is not a valid {what}: use lowercase letters, digits, '-' and '_', "
                    "starting with a letter or digit"
                    if what == "asset id"
                    else f"{bad!r} is not a valid {what}: use letters, digits and '_'",
                    key=True,
                )
            elif err.validator == "required":
                self.error(path, err.message)
            else:
                self.error(path, err.message)

    # -- meaning ---------------------------------------------------------------------------------

    def _valid(self, section: str, value: Any) -> dict[str, Any]:
        """The entries of a mapping section that the schema accepted."""
        if not isinstance(value, dict) or (section,) in self.invalid:
            return {}
        return {k: v for k, v in value.items() if (section, k) not in self.invalid}

    def _semantics(self, data: dict[str, Any]) -> Manifest | None:
        defaults = {**BUILTIN_DEFAULTS, **self._valid("defaults", data.get("defaults"))}
        # A refused var still counts as declared: no second error where a prompt uses it.
        raw_vars = _mapping(data.get("vars"))
        variables = {k: _var_text(v) if ("vars", k) not in self.invalid else "" for k, v in raw_vars.items()}
        raw_assets = _mapping(data.get("assets"))
        if not raw_assets and ("assets",) not in self.invalid:
            self.error(("assets",), "declare at least one asset")
        assets: dict[str, Asset] = {}
        # Fields of an asset the schema refused on their own (_refused): checked without them.
        left_out: dict[str | int, set[str | int]] = {}
        for where in self.invalid:
            if len(where) == 3 and where[0] == "assets":
                left_out.setdefault(where[1], set()).add(where[2])
        for asset_id, raw in self._valid("assets", raw_assets).items():
            if asset_id in left_out:
                raw = {k: v for k, v in raw.items() if k not in left_out[asset_id]}
            asset = self._asset(asset_id, raw, defaults, variables, raw_assets)
            if asset is not None:
                assets[asset_id] = asset
        self._judge_references()
        self._size_renditions(assets)
        self._outputs(assets)
        self._reference_limits(assets)
        from flexforge.graph import CycleError, topological_order

        # Cycles among every asset, even one whose other fields were refused.
        graph = {a: _raw_refs(raw, raw_assets) for a, raw in raw_assets.items()}
        graph.update({a.id: a.asset_refs for a in assets.values()})
        try:
            order = [a for a in topological_order(graph) if a in assets]
        except CycleError as exc:
            first = exc.cycle[0]
            self.error(("assets", first, "references"), f"dependency cycle: {' -> '.join(exc.cycle)}")
            return None
        if self.diagnostics:
            return None
        settings = Settings.from_data(self._valid("settings", data.get("settings")))
        return Manifest(self.path, self.root, {i: assets[i] for i in order}, self.label, settings)

    def _asset(
        self,
        asset_id: str,
        raw: dict[str, Any],
        defaults: dict[str, Any],
        variables: dict[str, str],
        all_assets: dict[str, Any],
    ) -> Asset | None:
        here = ("assets", asset_id)
        if "from" in raw:
            return self._rendition(asset_id, raw, defaults, variables, all_assets)
        values = {**defaults, **raw}
        model = values["model"]
        spec = models.get(model)
        for knob in MODEL_KNOBS:
            if knob in raw and knob not in spec.knobs:
                takers = [m.name for m in models.MODELS.values() if knob in m.knobs and not m.preview_of]
                self.error(
                    (*here, knob),
                    f"{knob!r} applies to {', '.join(takers)} only, not {model}",
                    key=True,
                )
        width, height = values["width"], values["height"]
        if isinstance(raw.get("final_size"), str) and "width" not in raw and "height" not in raw:
            width, height = _covering(raw["final_size"])
        if width * height > MAX_PIXELS:
            self.error(
                (*here, "width" if "width" in raw else "height"),
                f"{width}x{height} is {width * height / 1e6:.2f} MP; the API allows at most 4 MP "
                f"({MAX_PIXELS} pixels, e.g. 2048x2048)",
            )
        prompt_raw = raw["prompt"]
        structured = None
        if isinstance(prompt_raw, dict):
            structured = self._substitute_tree(prompt_raw, variables, (*here, "prompt"))
            prompt = json.dumps(structured, ensure_ascii=False, allow_nan=False)
        else:
            prompt = self._substitute(prompt_raw, variables, (*here, "prompt"))
        references = tuple(raw.get("references") or ())
        limit = spec.max_references
        if len(references) > limit:
            self.error(
                (*here, "references"),
                f"{model} takes at most {limit} references, got {len(references)}",
            )
        asset_refs = []
        for i, ref in enumerate(references):
            if ref in all_assets:
                if ref == asset_id:
                    self.error((*here, "references", i), f"an asset cannot reference itself ({ref!r})")
                else:
                    asset_refs.append(ref)
                continue
            self._reference_file(ref, (*here, "references", i), all_assets)
        fmt = values["output_format"]
        if fmt in LOCAL_FORMATS:
            self.error(
                (*here, "output_format") if "output_format" in raw else ("defaults", "output_format"),
                f"output_format {fmt}: the API returns {_either(API_FORMATS)}; make {fmt} images "
                "as renditions (`from: ID`, output_format: avif)",
            )
        out = raw.get("out")
        if out is None:
            out = self._output_path(f"assets/{asset_id}.{EXTENSIONS[fmt]}", fmt, here)
        else:
            out = self._substitute(out, variables, (*here, "out"))
            out = self._output_path(out, fmt, (*here, "out"))
        return Asset(
            id=asset_id,
            model=model,
            prompt=prompt,
            structured=structured,
            width=width,
            height=height,
            output_format=fmt,
            safety_tolerance=values["safety_tolerance"],
            steps=values["steps"] if spec.flex_knobs else None,
            guidance=float(values["guidance"]) if spec.flex_knobs else None,
            prompt_upsampling=bool(values["prompt_upsampling"]) if spec.upsampling else None,
            seed=raw.get("seed"),
            references=references,
            asset_refs=tuple(dict.fromkeys(asset_refs)),
            out=out,
            line=self.doc.key_where(here)[0],
            final_size=self._final_size(raw.get("final_size"), width, height, (*here, "final_size")),
            tags=tuple(dict.fromkeys(raw.get("tags") or ())),
            origin=self._origin(asset_id),
            max_cost_usd=float(raw["max_cost_usd"]) if "max_cost_usd" in raw else None,
            reference_max_mp=values.get("reference_max_mp"),
            written=asset_id not in self.unwritten,
        )

    def _origin(self, asset_id: str) -> str | None:
        if asset_id not in self.origins:
            return None
        template, values = self.origins[asset_id]
        return " ".join([template, *(f"{axis}={value}" for axis, value in values.items())])

    def _rendition(
        self,
        asset_id: str,
        raw: dict[str, Any],
        defaults: dict[str, Any],
        variables: dict[str, str],
        all_assets: dict[str, Any],
    ) -> Asset | None:
        """A free rendition of another asset's output (or a file): no prompt, no seed, no API."""
        here = ("assets", asset_id)
        for knob in (
            "prompt",
            "model",
            "seed",
            "references",
            "steps",
            "guidance",
            "prompt_upsampling",
            "safety_tolerance",
        ):
            if knob in raw:
                self.error(
                    (*here, knob), f"a rendition (`from:`) is not generated: remove {knob!r}", key=True
                )
        source = self._substitute(raw["from"], variables, (*here, "from"))
        references = [source]
        if "variants" in raw:  # a selection among candidates (flexforge.expand): which one is the lock's
            from flexforge.expand import candidate_id

            references = [candidate_id(asset_id, k) for k in range(1, raw["variants"] + 1)]
        if source == asset_id:
            self.error((*here, "from"), f"an asset cannot be a rendition of itself ({source!r})")
        elif source not in all_assets:
            self._reference_file(source, (*here, "from"), all_assets)
        logo = raw.get("logo")
        if isinstance(logo, dict):
            logo = {**logo, "file": self._substitute(logo["file"], variables, (*here, "logo", "file"))}
            self._reference_file(logo["file"], (*here, "logo", "file"), {})
            references.append(logo["file"])
        text = raw.get("text")
        if isinstance(text, dict):
            text = {**text, "text": self._substitute(text["text"], variables, (*here, "text", "text"))}
            font = text.get("font")
            if font is not None:
                target = self._inside_root(font, (*here, "text", "font"), "font")
                if target is not None and not os.path.isfile(target):
                    self.error((*here, "text", "font"), f"font {font!r} is not a file under the root")
                elif target is not None:
                    references.append(font)
        size = raw.get("final_size")
        if size is not None:
            width, height = (int(n) for n in str(size).split("x"))
        elif "width" in raw or "height" in raw:
            width, height = raw.get("width", defaults["width"]), raw.get("height", defaults["height"])
        else:
            width = height = 0  # the input's size, once it is known (_size_renditions)
        if width * height > MAX_RENDITION_PIXELS:
            self.error(here, f"{width}x{height} is over {MAX_RENDITION_PIXELS // 10**6} MP; deliver smaller")
        fmt = raw.get("output_format", defaults["output_format"])
        if fmt == "avif":
            from flexforge.imaging import avif_problem

            problem = avif_problem()
            if problem is not None:
                where = (*here, "output_format") if "output_format" in raw else ("defaults", "output_format")
                self.error(where, f"output_format avif: {problem}")
        out = raw.get("out")
        if out is None:
            out = self._output_path(f"assets/{asset_id}.{EXTENSIONS[fmt]}", fmt, here)
        else:
            out = self._output_path(self._substitute(out, variables, (*here, "out")), fmt, (*here, "out"))
        spec: dict[str, Any] = {k: raw[k] for k in ("fit", "background", "quality", "variants") if k in raw}
        spec.update({k: v for k, v in (("logo", logo), ("text", text)) if isinstance(v, dict)})
        return Asset(
            id=asset_id,
            model=RENDITION,
            prompt="",
            structured=None,
            width=width,
            height=height,
            output_format=fmt,
            safety_tolerance=0,
            steps=None,
            guidance=None,
            prompt_upsampling=None,
            seed=self._pick(raw, here) if "variants" in raw else 0,  # a selection's "seed": its pick
            references=tuple(references),
            asset_refs=tuple(r for r in references if r in all_assets and r != asset_id),
            out=out,
            line=self.doc.key_where(here)[0],
            tags=tuple(dict.fromkeys(raw.get("tags") or ())),
            origin=self._origin(asset_id),
            rendition=spec,
        )

    def _pick(self, raw: dict[str, Any], here: tuple[str | int, ...]) -> int | None:
        """A pick committed in the manifest (`pick: K`), which `flexforge pick` then leaves alone."""
        chosen = raw.get("pick")
        if chosen is not None and chosen > raw["variants"]:
            self.error(
                (*here, "pick"),
                f"pick {chosen}: there are {raw['variants']} candidates (1..{raw['variants']})",
            )
            return None
        return int(chosen) if chosen is not None else None

    def _size_renditions(self, assets: dict[str, Asset]) -> None:
        """A rendition without a size takes its input's delivered size; then its operations,
        canonical, become what its key's `prompt` part holds."""

        def delivered(asset_id: str, seen: tuple[str, ...] = ()) -> tuple[int, int] | None:
            asset = assets.get(asset_id)
            if asset is None or asset_id in seen:
                return None
            if asset.rendition is not None and asset.width == 0:
                return delivered(asset.references[0], (*seen, asset_id)) if asset.asset_refs else None
            return asset.final_size or (asset.width, asset.height)

        for asset_id, asset in list(assets.items()):
            if asset.rendition is None:
                continue
            size = (asset.width, asset.height) if asset.width else delivered(asset_id)
            if size is None:
                self.error(
                    ("assets", asset_id), "a rendition of a file needs `size:` (a preset or WxH)", key=True
                )
                size = (1, 1)
            ops = operations(asset.rendition, size[0], size[1], asset.output_format)
            assets[asset_id] = dataclasses.replace(
                asset, width=size[0], height=size[1], rendition=ops, prompt=describe(ops)
            )

    def _reference_limits(self, assets: dict[str, Asset]) -> None:
        """Models that cap all references together (pro: 9 MP) get no more, counted at the size
        each is uploaded at (after reference_max_mp)."""
        from flexforge.imaging import image_size

        for asset in assets.values():
            if asset.rendition is not None:
                continue  # made locally: nothing is uploaded
            for i, ref in enumerate(asset.references):
                upstream = assets.get(ref)
                if upstream is not None and upstream.output_format in LOCAL_FORMATS:
                    self.error(
                        ("assets", asset.id, "references", i),
                        f"{ref} is {upstream.output_format}, which the API does not take as a "
                        f"reference; reference a {_either(API_FORMATS)} rendition of it",
                    )
            cap = models.get(asset.model).max_reference_mp
            if cap is None or not asset.references:
                continue
            total = 0
            for ref in asset.references:
                upstream = assets.get(ref)
                if upstream is not None:
                    size = upstream.final_size or (upstream.width, upstream.height)
                else:
                    size = self.ref_sizes.get(ref) or image_size(self.root / ref) or (0, 0)
                w, h = asset.reference_size(*size)
                total += w * h
            if total > cap * 1_000_000:
                self.error(
                    ("assets", asset.id, "references"),
                    f"{asset.model} takes at most {cap:g} MP of references together, these are "
                    f"{total / 1e6:.2f} MP; use fewer or smaller ones, or set reference_max_mp",
                )

    def _final_size(
        self, value: str | None, width: int, height: int, path: tuple[str | int, ...]
    ) -> tuple[int, int] | None:
        if value is None:
            return None
        w, h = (int(n) for n in value.split("x"))
        if w > width or h > height:
            self.error(
                path, f"{value} is larger than the generated {width}x{height}; generate at least that size"
            )
        return (w, h)

    def _inside_root(self, rel: str, path: tuple[str | int, ...], what: str) -> str | None:
        """The absolute path `rel` really leads to, or None after saying why it may not be used."""
        if "\0" in rel:
            self.error(path, f"{what} {rel!r} contains a NUL character")
            return None
        if has_control(rel):
            # A committed file name with a line break breaks every tool that lists files.
            # Not quoted back: the message would carry them into logs and CI annotations.
            self.error(path, f"{what} contains a line break or control character; write it on one line")
            return None
        too_long = path_length_problem(rel)
        if too_long is not None:
            self.error(path, f"{what} {clip(rel, 60)!r} {too_long}")
            return None
        if "\\" in rel:
            self.error(path, f"{what} {rel!r}: use '/' as the path separator")
            return None
        if rel.startswith("/") or re.match(r"^[A-Za-z]:", rel):
            self.error(path, f"{what} {rel!r} is absolute; write it relative to the manifest's folder")
            return None
        target = self.resolver.real(rel)
        if target is None:
            self.error(path, f"{what} {rel!r} {_why_outside(self.resolver.root / rel)}")
        return target

    def _reference_file(self, ref: str, path: tuple[str | int, ...], all_assets: dict[str, Any]) -> None:
        target = self._inside_root(ref, path, "reference")
        if target is None:
            return
        # Spelled any way ('a/../b', a link inside the root), a file is known by where it leads.
        self.file_refs[path] = (ref, self.resolver.relative(target))
        self.to_read.append((path, ref, target, all_assets))  # a file? the read says (below)

    def _judge_references(self) -> None:
        """Every reference file read once, on all cores: its header judged here, its digest kept
        for the plan that follows (flexforge.reads)."""
        from flexforge import reads
        from flexforge.imaging import MAX_REFERENCE_BYTES

        options: reads.Options = {"ends": True, "max_size": MAX_REFERENCE_BYTES}
        done = reads.read_all([(target, options) for _, _, target, _ in self.to_read])
        for (path, ref, target, all_assets), read in zip(self.to_read, done, strict=True):
            if read is None and not os.path.isfile(target):  # asked only when the read failed
                hint = difflib.get_close_matches(ref, list(all_assets), n=1)
                also = f" (did you mean asset {hint[0]!r}?)" if hint else ""
                self.error(path, f"reference {ref!r} is neither an asset id nor a file under the root{also}")
                continue
            self._judge_reference(path, ref, target, read)
        self.to_read.clear()

    def _judge_reference(
        self, path: tuple[str | int, ...], ref: str, target: str, read: FileRead | None
    ) -> None:
        """Why the file cannot be sent as a reference: from the bytes read with its digest for a
        plain PNG, else from Pillow's reading of the file (the same answers, tests/test_imaging)."""
        from flexforge.imaging import check_reference, png_reference_problem

        fast = png_reference_problem(read.head, read.tail, read.size) if read is not None else None
        if fast is None:
            problem = check_reference(Path(target))
        else:
            problem, size = fast
            if problem is None:  # a refused one is left out of the sum, as Pillow could not size it
                self.ref_sizes[ref] = size
        if problem is not None:
            self.error(path, f"reference {ref!r}: {problem}")

    def _variants_dir(self, folder: str) -> str | None:
        """The root-relative folder candidates are written under, or None (reported) when it
        leaves the root or lies in `.git/` or the state folder. Each candidate's own path is
        checked as an output too, then and before every write."""
        where = ("settings", "variants_dir")
        target = self._inside_root(folder, where, "variants_dir")
        if target is None:
            return None
        rel = self.resolver.relative(target)
        private = private_part(folder) or private_part(rel)
        if rel == ".":
            self.error(where, "variants_dir names the project root; name a folder (e.g. variants)")
        elif private is not None:
            self.error(where, f"variants_dir {folder!r} is inside {private}/, which flexforge never writes")
        else:
            return folder.strip("/")
        return None

    def _output_path(self, out: str, fmt: str, path: tuple[str | int, ...]) -> str:
        target = self._inside_root(out, path, "out")
        if target is None:
            return out
        rel = self.resolver.relative(target)
        private = private_part(out) or private_part(rel)
        if private is not None:
            self.error(path, f"out {out!r} is inside {private}/, which flexforge never writes")
        wrong_type = extension_problem(rel, fmt)
        if wrong_type is not None:
            self.error(path, f"out {out!r} {wrong_type}; rename it or set output_format")
        return rel

    def _outputs(self, assets: dict[str, Asset]) -> None:
        owners: dict[str, str] = {}
        folded: dict[str, Asset] = {}
        for asset in assets.values():
            other = owners.setdefault(asset.out, asset.id)
            if other != asset.id:
                self.error(("assets", asset.id, "out"), f"{other!r} already writes {asset.out!r}")
                continue
            twin = folded.setdefault(_folded(asset.out), asset)
            if twin is not asset:
                # Spelled alike but for normalisation (é, e + U+0301): show the code points.
                alike = unicodedata.normalize("NFC", asset.out) == unicodedata.normalize("NFC", twin.out)
                shown = ascii if alike else repr
                self.error(
                    ("assets", asset.id, "out"),
                    f"{shown(clip(asset.out, 120))} and {shown(clip(twin.out, 120))} (asset {twin.id!r}) "
                    "differ only by letter case or Unicode normalisation: on macOS and Windows they are "
                    "one file; rename one",
                )
        for folded_out, (name, other_id) in sibling_outputs(self.path).items():
            if folded_out in folded:
                asset_id = folded[folded_out].id
                out = folded[folded_out].out
                where = (
                    ("assets", asset_id, "out")
                    if "out" in _mapping(_mapping(_mapping(self.doc.data).get("assets")).get(asset_id))
                    else ("assets", asset_id)
                )
                self.error(
                    where,
                    f"{out!r} is also written by asset {other_id!r} of {name}, in the same folder; "
                    "give one of them another `out:`",
                    key=where[-1] != "out",
                )
        for path, (ref, rel) in self.file_refs.items():
            if rel in owners:
                self.error(
                    path, f"{ref!r} is the output of asset {owners[rel]!r}; reference the asset id instead"
                )

    # -- vars ------------------------------------------------------------------------------------

    def _substitute(
        self, text: str, variables: dict[str, str], path: tuple[str | int, ...], room: list[int] | None = None
    ) -> str:
        # What substitution may still add before the text is absurd; shared by a whole
        # structured prompt, so that many small strings cannot add up to a huge prompt.
        room = room if room is not None else [MAX_TEXT - len(text)]

        def replace(match: re.Match[str]) -> str:
            token = match.group(0)
            if token == "{{":
                return "{"
            if token == "}}":
                return "}"
            name = match.group(1)
            if name in variables:
                room[0] -= len(variables[name])
                if room[0] < 0:
                    raise _TextTooLong
                return variables[name]
            known = ", ".join(sorted(variables)) or "none declared"
            hint = difflib.get_close_matches(name, list(variables), n=1)
            also = f" (did you mean {{{hint[0]}}}?)" if hint else f" (vars: {known})"
            self.error(path, f"unknown var {{{name}}}{also}; write {{{{ for a literal brace")
            return token

        try:
            return _VAR.sub(replace, text)
        except _TextTooLong:
            self.error(path, f"longer than {MAX_TEXT} characters once vars are substituted")
            return text

    def _substitute_tree(
        self, node: Any, variables: dict[str, str], path: tuple[str | int, ...], room: list[int] | None = None
    ) -> Any:
        room = room if room is not None else [MAX_TEXT]
        if isinstance(node, str):
            return self._substitute(node, variables, path, room)
        if isinstance(node, dict):
            return {k: self._substitute_tree(v, variables, (*path, k), room) for k, v in node.items()}
        if isinstance(node, list):
            return [self._substitute_tree(v, variables, (*path, i), room) for i, v in enumerate(node)]
        return node


class _TextTooLong(Exception):
    pass


def _var_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _why_outside(path: Path) -> str:
    """Why the resolver refused a path: a loop of links (the system cannot walk it) or a way out."""
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "goes round a loop of symbolic links; point it at a real file"
    return "leaves the project root"
