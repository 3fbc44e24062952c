"""Manifest sugar resolved before anything is validated or keyed: prompt fragments, matrices over
named axes, channel presets for `size:`, so an expanded asset is the asset written by hand."""

from __future__ import annotations

import copy
import difflib
import itertools
import re
from collections.abc import Callable
from typing import Any

from flexforge.imaging import EXTENSIONS, LOCAL_FORMATS
from flexforge.presets import Preset, catalog, parse_size, project_preset
from flexforge.yamlsource import YamlDocument

Path_ = tuple[str | int, ...]
Report = Callable[..., None]  # (path, message, key=False)

ASSET_ID = re.compile(r"^[a-z0-9][a-z0-9_-]*\Z")
VALUE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*\Z")
MAX_CELLS = 100_000
_FRAGMENT = re.compile(r"\{@([A-Za-z0-9_-]+)\}")
_TOKEN = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)(?:\.([A-Za-z_][A-Za-z0-9_]*))?\}")


class Expansion:
    """The document with its sugar resolved, and for each expanded asset where it came from."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data
        # expanded asset id -> (declaring template id, {axis: value})
        self.origins: dict[str, tuple[str, dict[str, str]]] = {}
        # candidates kept in the cache only (no `settings: variants_dir:`): never written at `out`
        self.unwritten: set[str] = set()


def expand(
    data: dict[str, Any], doc: YamlDocument, report: Report, variants_dir: str | None = None
) -> Expansion:
    """Resolve fragments, matrices and presets in `data` (a parsed manifest), reporting every
    problem at the line that declares it. Positions of expanded assets are copied from their
    template into `doc`, so later errors about a cell point at the matrix that made it.
    `variants_dir`: the checked folder candidates are written under; None keeps them cached."""
    out = Expansion(dict(data))
    fragments = _fragments(data.get("fragments"), report)
    presets = _presets(data.get("presets"), report)
    axes: dict[str, Any] = data["axes"] if isinstance(data.get("axes"), dict) else {}
    raw_assets = data.get("assets")
    if not isinstance(raw_assets, dict):
        return out
    assets: dict[str, Any] = {}
    for asset_id, raw in raw_assets.items():
        here: Path_ = ("assets", asset_id)
        if isinstance(raw, dict) and fragments is not None:
            raw = _apply_fragments(raw, fragments, here, report)
        if not isinstance(raw, dict) or "matrix" not in raw:
            if "{" in str(asset_id):
                report(here, f"asset id {asset_id!r} has {{...}} but no `matrix:` to fill it", key=True)
                continue
            if isinstance(raw, dict):
                raw = _sized(raw, data, presets, here, report)
            assets[asset_id] = raw
            continue
        for cell_id, cell, values in _cells(str(asset_id), raw, axes, here, report):
            if cell_id in assets or cell_id in raw_assets:
                report(here, f"the matrix makes {cell_id!r}, which another asset already declares", key=True)
                continue
            doc.place(("assets", cell_id), like=here)
            assets[cell_id] = _sized(cell, data, presets, ("assets", cell_id), report)
            out.origins[cell_id] = (str(asset_id), values)
    out.data["assets"] = _with_candidates(assets, data, doc, variants_dir, out.unwritten)
    return out


# -- variants ------------------------------------------------------------------------------------

# Where candidates go: written there with `settings: variants_dir:` (to commit them), else kept in
# the cache only and recorded in the lock at that would-be path.
VARIANTS_DIR = "variants"
MAX_VARIANTS = 16


def candidate_id(asset_id: str, k: int) -> str:
    return f"{asset_id}--{k}"


def _with_candidates(
    assets: dict[str, Any],
    data: dict[str, Any],
    doc: YamlDocument,
    variants_dir: str | None,
    unwritten: set[str],
) -> dict[str, Any]:
    """`variants: N` -> N generated candidates `ID--1..N` (distinct seeds: a fixed seed S gives
    S, S+1, ...; else each draws its own), and `ID` itself a free selection of the picked one.
    Candidates are written under `variants_dir` when there is one; else they are added to
    `unwritten`."""
    result: dict[str, Any] = {}
    defaults: dict[str, Any] = data["defaults"] if isinstance(data.get("defaults"), dict) else {}
    written = variants_dir is not None
    folder = variants_dir or VARIANTS_DIR
    for asset_id, raw in assets.items():
        count = raw.get("variants") if isinstance(raw, dict) else None
        if (
            not isinstance(count, int)
            or isinstance(count, bool)
            or "from" in raw
            or not 2 <= count <= MAX_VARIANTS
            or raw.get("output_format", defaults.get("output_format")) in LOCAL_FORMATS
        ):
            # The schema says what is wrong with a bad count; validation, once, with a format
            # the API does not return.
            result[asset_id] = raw
            continue
        fmt = raw.get("output_format", defaults.get("output_format", "png"))
        ext = EXTENSIONS.get(str(fmt), "png")
        here: Path_ = ("assets", asset_id)
        for k in range(1, count + 1):
            cid = candidate_id(asset_id, k)
            cell = {key: v for key, v in raw.items() if key not in ("variants", "pick", "out", "tags")}
            if isinstance(raw.get("seed"), int):
                cell["seed"] = raw["seed"] + k - 1
            cell["out"] = f"{folder}/{asset_id}/{k}.{ext}"
            doc.place(("assets", cid), like=here)
            result[cid] = cell
            if not written:
                unwritten.add(cid)
        selection = {key: raw[key] for key in ("out", "tags", "pick") if key in raw}
        selection.update({"from": candidate_id(asset_id, 1), "variants": count, "output_format": fmt})
        if "out" not in raw:
            selection["out"] = f"assets/{asset_id}.{ext}"
        result[asset_id] = selection
    return result


# -- fragments -----------------------------------------------------------------------------------


def _fragments(raw: Any, report: Report) -> dict[str, Any] | None:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        return None  # the schema says why
    return dict(raw)


def _apply_fragments(
    raw: dict[str, Any], fragments: dict[str, Any], here: Path_, report: Report
) -> dict[str, Any]:
    if "prompt" not in raw:
        return raw
    result = dict(raw)
    result["prompt"] = _resolve(raw["prompt"], fragments, (*here, "prompt"), report, ())
    return result


def _resolve(node: Any, fragments: dict[str, Any], path: Path_, report: Report, seen: tuple[str, ...]) -> Any:
    """`{@name}` in text becomes the fragment's text; a value that is exactly `{@name}` becomes
    the fragment itself (a palette list, a structured part). Fragments may use fragments."""
    if isinstance(node, dict):
        return {k: _resolve(v, fragments, (*path, k), report, seen) for k, v in node.items()}
    if isinstance(node, list):
        return [_resolve(v, fragments, (*path, i), report, seen) for i, v in enumerate(node)]
    if not isinstance(node, str) or "{@" not in node:
        return node
    whole = _FRAGMENT.fullmatch(node)
    if whole is not None:
        name = whole.group(1)
        value = _fragment(name, fragments, path, report, seen)
        return (
            node if value is None else _resolve(copy.deepcopy(value), fragments, path, report, (*seen, name))
        )

    def text(match: re.Match[str]) -> str:
        name = match.group(1)
        value = _fragment(name, fragments, path, report, seen)
        if value is None:
            return match.group(0)
        if not isinstance(value, str):
            report(
                path,
                f'fragment {name!r} is structured; use it as a whole value ("{{@{name}}}"), not inside text',
            )
            return match.group(0)
        resolved = _resolve(value, fragments, path, report, (*seen, name))
        return str(resolved)

    return _FRAGMENT.sub(text, node)


def _fragment(
    name: str, fragments: dict[str, Any], path: Path_, report: Report, seen: tuple[str, ...]
) -> Any:
    if name in seen:
        report(path, f"fragment cycle: {' -> '.join([*seen, name])}")
        return None
    if name not in fragments:
        hint = difflib.get_close_matches(name, list(fragments), n=1)
        also = (
            f" (did you mean {{@{hint[0]}}}?)"
            if hint
            else f" (fragments: {', '.join(sorted(fragments)) or 'none declared'})"
        )
        report(path, f"unknown fragment {{@{name}}}{also}")
        return None
    return fragments[name]


# -- matrices ------------------------------------------------------------------------------------


def _cells(
    template_id: str, raw: dict[str, Any], axes: dict[str, Any], here: Path_, report: Report
) -> list[tuple[str, dict[str, Any], dict[str, str]]]:
    matrix = raw["matrix"]
    where = (*here, "matrix")
    if not isinstance(matrix, dict) or not matrix:
        report(
            where,
            "`matrix:` maps axis names to values (a list, a mapping of value -> vars, "
            "or the name of an `axes:` entry)",
        )
        return []
    resolved: dict[str, list[tuple[str, dict[str, str]]]] = {}
    for axis, spec in matrix.items():
        at = (*where, axis)
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", axis):
            report(at, f"axis name {axis!r}: use letters, digits and '_'", key=True)
            continue
        if isinstance(spec, str):
            if spec not in axes:
                hint = difflib.get_close_matches(spec, list(axes), n=1)
                also = (
                    f" (did you mean {hint[0]!r}?)"
                    if hint
                    else f" (axes: {', '.join(sorted(axes)) or 'none declared'})"
                )
                report(at, f"unknown axis {spec!r}{also}")
                continue
            spec, at = axes[spec], ("axes", spec)
        values = _axis_values(spec, at, report)
        if values is not None:
            resolved[axis] = values
    if len(resolved) != len(matrix):
        return []
    unused = [a for a in resolved if not _mentions(template_id, a)]
    if unused:
        report(
            here,
            f"the id {template_id!r} does not use axis {', '.join('{' + a + '}' for a in unused)}; "
            "every cell needs its own id",
            key=True,
        )
        return []
    count = 1
    for values in resolved.values():
        count *= len(values)
    if count > MAX_CELLS:
        report(where, f"the matrix makes {count} assets; at most {MAX_CELLS}")
        return []
    template = {k: v for k, v in raw.items() if k != "matrix"}
    cells = []
    names = list(resolved)
    for combo in itertools.product(*resolved.values()):
        scope = {axis: value for axis, value in zip(names, combo, strict=True)}
        problems: list[tuple[Path_, str]] = []
        cell_id = _fill(template_id, scope, here, problems)
        cell = _fill_tree(template, scope, here, problems)
        for path, message in dict.fromkeys(problems):
            report(path, message)
        if problems:
            return []
        if not ASSET_ID.match(cell_id):
            report(
                here,
                f"the matrix makes id {cell_id!r}, not a valid asset id "
                "(lowercase letters, digits, '-' and '_')",
                key=True,
            )
            continue
        cells.append((cell_id, cell, {axis: value for axis, (value, _) in scope.items()}))
    return cells


def _axis_values(spec: Any, at: Path_, report: Report) -> list[tuple[str, dict[str, str]]] | None:
    if isinstance(spec, list):
        items: list[tuple[Any, Any]] = [(v, {}) for v in spec]
    elif isinstance(spec, dict):
        items = list(spec.items())
    else:
        report(at, "an axis is a list of values or a mapping of value -> vars")
        return None
    if not items:
        report(at, "an axis needs at least one value")
        return None
    values = []
    for i, (name, extra) in enumerate(items):
        spot = (*at, i) if isinstance(spec, list) else (*at, str(name))
        if isinstance(name, bool) or not isinstance(name, str | int) or not VALUE_NAME.match(str(name)):
            report(
                spot,
                f"axis value {name!r}: use lowercase letters, digits, '-' and '_' (it becomes part of ids)",
            )
            return None
        if not isinstance(extra, dict) or not all(
            isinstance(k, str)
            and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k)
            and isinstance(v, str | int | float)
            for k, v in extra.items()
        ):
            report(spot, "a value's vars map names (letters, digits, '_') to text or numbers")
            return None
        values.append((str(name), {k: _text(v) for k, v in extra.items()}))
    if len({n for n, _ in values}) != len(values):
        report(at, "an axis lists a value twice")
        return None
    return values


def _text(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def _mentions(text: str, axis: str) -> bool:
    return any(m.group(1) == axis for m in _TOKEN.finditer(text) if m.group(1))


def _fill(
    text: str, scope: dict[str, tuple[str, dict[str, str]]], path: Path_, problems: list[tuple[Path_, str]]
) -> str:
    """`{axis}` -> the value, `{axis.var}` -> its var; other `{...}` are left for `vars:`."""

    def replace(match: re.Match[str]) -> str:
        axis, var = match.group(1), match.group(2)
        if axis is None or axis not in scope:
            return match.group(0)
        value, extra = scope[axis]
        if var is None:
            return value
        if var not in extra:
            known = ", ".join(sorted(extra)) or "none"
            problems.append(
                (
                    path,
                    f"{{{axis}.{var}}}: value {value!r} of axis {axis!r} has no var {var!r} "
                    f"(it has: {known})",
                )
            )
            return match.group(0)
        return extra[var]

    return _TOKEN.sub(replace, text)


def _fill_tree(
    node: Any, scope: dict[str, tuple[str, dict[str, str]]], path: Path_, problems: list[tuple[Path_, str]]
) -> Any:
    if isinstance(node, str):
        return _fill(node, scope, path, problems)
    if isinstance(node, dict):
        return {k: _fill_tree(v, scope, (*path, k), problems) for k, v in node.items()}
    if isinstance(node, list):
        return [_fill_tree(v, scope, (*path, i), problems) for i, v in enumerate(node)]
    return node


# -- presets -------------------------------------------------------------------------------------


def _presets(raw: Any, report: Report) -> dict[str, Preset]:
    found = dict(catalog())
    if not isinstance(raw, dict):
        return found
    for name, spec in raw.items():
        if not isinstance(spec, dict):
            continue  # the schema says why
        preset = project_preset(str(name), spec)
        if isinstance(preset, str):
            report(("presets", name), preset)
        else:
            found[str(name)] = preset
    return found


def _sized(
    raw: dict[str, Any], data: dict[str, Any], presets: dict[str, Preset], here: Path_, report: Report
) -> dict[str, Any]:
    """`size: NAME|WxH` (on the asset, else in `defaults:`) -> width, height and final_size, as
    the same asset would be written by hand."""
    defaults: dict[str, Any] = data["defaults"] if isinstance(data.get("defaults"), dict) else {}
    if "size" in raw:
        size, at = raw["size"], (*here, "size")
    elif "size" in defaults and not {"width", "height", "final_size"} & set(raw):
        size, at = defaults["size"], ("defaults", "size")
    else:
        return raw
    result = {k: v for k, v in raw.items() if k != "size"}
    clash = sorted({"width", "height", "final_size"} & set(raw)) if "size" in raw else []
    if clash:
        report(at, f"`size:` already sets {', '.join(clash)}; keep one of them")
        return result
    resolved = resolve_size(size, presets)
    if isinstance(resolved, str):
        report(at, resolved)
        return result
    (gw, gh), delivered = resolved
    result["width"], result["height"] = gw, gh
    if delivered is not None and delivered != (gw, gh):
        result["final_size"] = f"{delivered[0]}x{delivered[1]}"
    return result


def resolve_size(
    size: Any, presets: dict[str, Preset]
) -> tuple[tuple[int, int], tuple[int, int] | None] | str:
    """A `size:` value -> (generated size, delivered size), or why it is refused."""
    if not isinstance(size, str):
        return f"size {size!r} is a preset name or WxH"
    if size in presets:
        preset = presets[size]
        return preset.generated, preset.delivered
    parsed = parse_size(size)
    if parsed is None:
        hint = difflib.get_close_matches(size, list(presets), n=1)
        also = f" (did you mean {hint[0]!r}?)" if hint else "; run `flexforge presets` for the list"
        return f"unknown size preset {size!r}{also}"
    from flexforge.presets import generated_size

    w, h = parsed
    if w % 16 == 0 and h % 16 == 0 and w * h <= 2048 * 2048 and min(w, h) >= 64:
        return (w, h), None
    return generated_size(w, h), parsed
