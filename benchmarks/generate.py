"""Synthetic flexforge projects for the benchmarks, and their make and DVC twins.

A project of N assets has, per asset, its own ~200 KB reference PNG of random noise (noise so
that hashing it costs what hashing a real photo costs: it does not compress), a prompt, a pinned
seed, a size (multiples of 16) and a model (mostly flux-2-flex, some pro and klein). 10% of the
assets are chained on an earlier asset's output (`references: [upstream-id, refs/x.png]`).

Next to `flexforge.yaml` it writes the same graph as a `Makefile` (one target per output,
depending on its reference file and its upstream's output) and as a `dvc.yaml` (one stage per
asset), so that the "nothing changed" question can be asked of make and DVC over the same files.

Everything is deterministic given the parameters, so figures from different runs are comparable,
and projects are cached under the work dir in a folder named after the parameters. A built
project is real flexforge state: `flexforge build --provider draft` made its lock and outputs.

    python benchmarks/generate.py --assets 1000                 # generate and build, print the path
    python benchmarks/generate.py --assets 200 --layout independent --no-references --no-build
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

# Bump when what the generator writes changes, so that cached projects are made again.
GENERATOR_VERSION = 1
DEFAULT_WORK_DIR = Path("/tmp/flexforge-bench")
MARKER = "bench-project.json"  # written last: its presence (with matching parameters) means "complete"

Layout = Literal["mixed", "independent", "chain"]

# Generated sizes stay small: the no-op, cold-hash and scheduling benchmarks are about the files
# flexforge reads and the graph it walks, not about how long the draft renderer paints. The
# *reference* files keep their ~200 KB each, since hashing them is what a cold plan pays for.
SIZES: tuple[tuple[int, int], ...] = ((64, 64), (128, 128), (128, 96), (96, 128), (160, 96), (96, 160))
MODELS: tuple[tuple[str, float], ...] = (
    ("flux-2-flex", 0.8),
    ("flux-2-pro", 0.1),
    ("flux-2-klein-4b", 0.1),
)
BLOCK = 1000  # "mixed" chains stay within blocks of this many assets
REF_SIDE = 256  # 256 x 256 RGB noise: 196,608 raw bytes -> a ~197 KB PNG
SMALL_REF_SIDE = 16  # for projects above SMALL_REFS_ABOVE assets (ProjectSpec.for_noop)
SMALL_REFS_ABOVE = 10_000

_SUBJECTS = ("ceramic mug", "coffee bag", "espresso cup", "paper cup", "cold brew bottle", "grinder")
_COLOURS = ("teal", "rust", "cream", "charcoal", "sage", "ochre", "navy", "blush")
_SCENES = ("on a wooden shelf", "on a marble counter", "in a sunlit cafe", "on a picnic blanket")
_STYLES = ("studio product photo", "flat illustration", "risograph print", "watercolour sketch")


@dataclass(frozen=True, slots=True)
class ProjectSpec:
    """Everything that decides a generated project's bytes; its `name` is the cache key."""

    assets: int
    layout: Layout = "mixed"
    seed: int = 0
    references: bool = True  # each asset gets its own ~200 KB reference file
    chained_fraction: float = 0.1  # "mixed" only: share of assets built on another's output
    sizes: tuple[tuple[int, int], ...] = field(default=SIZES)
    # Side of each noise reference. The no-op only stats references; a smaller side keeps the
    # 100k project at ~0.5 GB of references instead of ~20 GB (see for_noop).
    ref_side: int = REF_SIDE
    # Short prompts: a 100k manifest with the usual ones (~250 bytes an asset) would pass
    # flexforge's 16 MiB manifest limit (flexforge/yamlsource.py).
    short_prompts: bool = False

    @property
    def name(self) -> str:
        refs = "" if self.references else "-norefs"
        sizes = "" if self.sizes == SIZES else "-" + "_".join(f"{w}x{h}" for w, h in self.sizes)
        chained = "" if self.chained_fraction == 0.1 else f"-chained{self.chained_fraction:g}"
        side = "" if self.ref_side == REF_SIDE else f"-ref{self.ref_side}"
        side += "-short" if self.short_prompts else ""
        return (
            f"{self.layout}-n{self.assets}-seed{self.seed}{refs}{sizes}{chained}{side}-v{GENERATOR_VERSION}"
        )

    @classmethod
    def for_noop(cls, assets: int) -> ProjectSpec:
        """The mixed project of the no-op rows: as it is up to 10,000 assets; beyond, 16 x 16
        references (~0.8 KB; ~197 KB each would be 20 GB at 100,000) and short prompts (so that
        the manifest stays under flexforge's 16 MiB limit). The no-op never reads a reference or
        parses the manifest (it stats them), so neither changes what it costs."""
        if assets <= SMALL_REFS_ABOVE:
            return cls(assets)
        return cls(assets, ref_side=SMALL_REF_SIDE, short_prompts=True)


@dataclass(frozen=True, slots=True)
class AssetSpec:
    id: str
    prompt: str
    model: str
    width: int
    height: int
    seed: int
    upstream: str | None
    reference: str | None  # root-relative path of its own reference file

    @property
    def out(self) -> str:
        return f"assets/{self.id}.png"

    @property
    def references(self) -> list[str]:
        return [r for r in (self.upstream, self.reference) if r is not None]


def plan_assets(spec: ProjectSpec) -> list[AssetSpec]:
    """The assets of `spec`, in an order where every upstream comes before its dependents."""
    rng = random.Random(f"flexforge-bench:{spec.seed}:{spec.layout}")
    width = max(5, len(str(spec.assets - 1)))
    ids = [f"a{i:0{width}d}" for i in range(spec.assets)]
    if spec.layout == "mixed":
        count = round(spec.assets * spec.chained_fraction)
        can_chain = [i for i in range(spec.assets) if i % BLOCK]  # a block's first has no elder
        chained = set(rng.sample(can_chain, min(count, len(can_chain))))
    else:
        chained = set(range(1, spec.assets)) if spec.layout == "chain" else set()
    models = [m for m, _ in MODELS]
    weights = [w for _, w in MODELS]
    out: list[AssetSpec] = []
    for i, asset_id in enumerate(ids):
        upstream = None
        if i in chained:
            # An earlier asset, so the graph stays acyclic; "chain" makes one path N deep. In
            # "mixed", an earlier asset of the same block of BLOCK (projects have locality), so
            # that big projects can be built block by block (see build_project).
            upstream = ids[i - 1] if spec.layout == "chain" else ids[rng.randrange(i - i % BLOCK, i)]
        w, h = rng.choice(spec.sizes)
        prompt = (
            f"A {rng.choice(_STYLES)} of a {rng.choice(_COLOURS)} {rng.choice(_SUBJECTS)} "
            f"{rng.choice(_SCENES)} for {{brand}}, number {i}, with the headline '{{tagline}}' "
            f"in bold sans-serif"
        )
        if spec.short_prompts:
            prompt = f"Product {i} for {{brand}}"
        if upstream is not None:
            prompt = "Same product as image 1, restyled: " + prompt
        out.append(
            AssetSpec(
                id=asset_id,
                prompt=prompt,
                model=rng.choices(models, weights)[0],
                width=w,
                height=h,
                seed=rng.randrange(2**31),
                upstream=upstream,
                reference=f"refs/{asset_id}.png" if spec.references else None,
            )
        )
    return out


# -- writing the files ------------------------------------------------------------------------------


def write_reference_png(path: Path, seed: str, side: int = REF_SIDE) -> None:
    """A side x side RGB PNG of deterministic noise (~200 KB at 256): incompressible, like a photo.

    Written with zlib by hand rather than Pillow: 10,000 of them are 2 GB, and a stored
    (level 0) deflate of noise is as large as a compressed one but costs nothing to make."""
    rng = random.Random(seed)
    row_bytes = side * 3
    noise = rng.randbytes(row_bytes * side)
    # Each PNG scanline is a filter byte (0: none) followed by the row's pixels.
    raw = b"".join(b"\x00" + noise[y * row_bytes : (y + 1) * row_bytes] for y in range(side))

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return len(data).to_bytes(4, "big") + body + zlib.crc32(body).to_bytes(4, "big")

    header = side.to_bytes(4, "big") * 2 + bytes([8, 2, 0, 0, 0])  # 8-bit RGB, no interlace
    png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw, 0))
        + chunk(b"IEND", b"")
    )
    path.write_bytes(png)


def manifest_text(spec: ProjectSpec, assets: Sequence[AssetSpec]) -> str:
    lines = [
        f"# Generated by benchmarks/generate.py: {spec.name}",
        "version: 1",
        "defaults:",
        "  model: flux-2-flex",
        "  width: 128",
        "  height: 128",
        "  steps: 28",
        "  guidance: 4.5",
        "  output_format: png",
        "vars:",
        "  brand: Northwind",
        "  tagline: Brew bold",
        "assets:",
    ]
    for a in assets:
        lines.append(f"  {a.id}:")
        lines.append(f"    prompt: {json.dumps(a.prompt)}")  # a JSON string is a YAML string
        if a.model != "flux-2-flex":
            lines.append(f"    model: {a.model}")
        if (a.width, a.height) != (128, 128):
            lines.append(f"    width: {a.width}")
            lines.append(f"    height: {a.height}")
        lines.append(f"    seed: {a.seed}")
        if a.references:
            lines.append(f"    references: [{', '.join(a.references)}]")
    return "\n".join(lines) + "\n"


def makefile_text(spec: ProjectSpec, assets: Sequence[AssetSpec]) -> str:
    """One target per output, depending on exactly what its flexforge key reads from disk."""
    by_id = {a.id: a for a in assets}
    lines = [
        f"# Generated by benchmarks/generate.py: {spec.name}. The same graph as flexforge.yaml,",
        "# so that make's no-op can be timed over the same files (make decides by mtime).",
        ".PHONY: all",
        "all: \\",
        *(f"  {a.out} \\" for a in assets),
        "",
    ]
    for a in assets:
        prereqs = [p for p in (a.reference, by_id[a.upstream].out if a.upstream else None) if p]
        lines.append(f"{a.out}: {' '.join(prereqs)}".rstrip())
        lines.append(f"\tflexforge build --provider draft {a.id}")
    return "\n".join(lines) + "\n"


def dvc_yaml_text(spec: ProjectSpec, assets: Sequence[AssetSpec]) -> str:
    """One stage per asset. Outputs are not DVC-cached: like flexforge's, they are committed."""
    by_id = {a.id: a for a in assets}
    lines = [f"# Generated by benchmarks/generate.py: {spec.name}", "stages:"]
    for a in assets:
        lines.append(f"  {a.id}:")
        lines.append(f"    cmd: flexforge build --provider draft {a.id}")
        deps = [p for p in (a.reference, by_id[a.upstream].out if a.upstream else None) if p]
        if deps:
            lines.append(f"    deps: [{', '.join(deps)}]")
        lines.append("    outs:")
        lines.append(f"      - {a.out}:")
        lines.append("          cache: false")
    return "\n".join(lines) + "\n"


def write_project(spec: ProjectSpec, root: Path) -> list[AssetSpec]:
    """Write manifest, references, Makefile and dvc.yaml into `root` (which is emptied first)."""
    if root.exists():
        shutil.rmtree(root)
    (root / "refs").mkdir(parents=True)
    assets = plan_assets(spec)
    for a in assets:
        if a.reference is not None:
            write_reference_png(root / a.reference, f"{spec.seed}:{a.id}", spec.ref_side)
    (root / "flexforge.yaml").write_text(manifest_text(spec, assets), encoding="utf-8")
    (root / "Makefile").write_text(makefile_text(spec, assets), encoding="utf-8")
    (root / "dvc.yaml").write_text(dvc_yaml_text(spec, assets), encoding="utf-8")
    return assets


# -- building, caching, git -------------------------------------------------------------------------


# Never let a benchmark reach a real API, whatever the shell that started it has set.
PROVIDER_ENV = frozenset(
    {
        "BFL_API_KEY",
        "BFL_API_BASE",
        "COMETAPI_KEY",
        "COMETAPI_BASE",
        "FLEXFORGE_PROVIDER",
        "FLEXFORGE_EMULATOR_URL",
    }
)


def flexforge_command() -> list[str]:
    """The installed console script next to this interpreter, else `python -m flexforge`."""
    script = Path(sys.executable).parent / "flexforge"
    return [str(script)] if script.exists() else [sys.executable, "-m", "flexforge"]


# A normal install caches bytecode. A shell with PYTHONDONTWRITEBYTECODE=1 (CI images, sandboxes)
# would make every flexforge process compile its sources again, ~20 ms that no user pays; so
# benchmarked processes cache bytecode, under a prefix of their own rather than in the work tree.
PYCACHE_PREFIX = Path(tempfile.gettempdir()) / "flexforge-bench-pycache"


def quiet_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment benchmarked processes run in: no colours, no real API keys, bytecode cached."""
    env = {k: v for k, v in os.environ.items() if k not in PROVIDER_ENV}
    env["NO_COLOR"] = "1"
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.setdefault("PYTHONPYCACHEPREFIX", str(PYCACHE_PREFIX))
    if extra:
        env.update(extra)
    return env


def flexforge_build(
    root: Path, *, jobs: int = 2, manifest: Path | None = None, env: dict[str, str] | None = None
) -> None:
    """`flexforge build --provider draft` in `root` (of `manifest` when given); raise on failure."""
    cmd = [*flexforge_command(), "-C", str(root), "-q"]
    if manifest is not None:
        cmd += ["-f", str(manifest)]
    cmd += ["build", "--provider", "draft", "--jobs", str(jobs)]
    result = subprocess.run(cmd, env=quiet_env(env), capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stderr[-4000:]}")


def build_project(root: Path, spec: ProjectSpec, *, jobs: int = 2) -> None:
    """Bring `root` up to date with flexforge itself (a no-op build when it already is).

    A big "mixed" project that has no lock yet is first built block by block, each block as a
    manifest of its own (`-f`), and the blocks' locks merged: a build rewrites the whole lock after
    every asset, which at 10,000 assets would rewrite gigabytes. Each block's lock is kept in
    `.bench-blocks/` as soon as it is built, so that an interrupted build (the 100k one takes an
    hour) resumes where it stopped. The final build of the whole manifest then checks that the
    merged state is real: it must find nothing to do."""
    if spec.layout == "mixed" and spec.assets > BLOCK and not (root / "flexforge.lock").exists():
        assets = plan_assets(spec)
        merged: dict[str, object] = {}
        doc: dict[str, object] = {}
        done = root / ".bench-blocks"
        done.mkdir(exist_ok=True)
        # A block's outputs are the whole manifest's too, and flexforge refuses two manifests of
        # one folder writing the same file: the whole one waits aside (not as *.yaml) meanwhile.
        whole = root / "flexforge.yaml"
        aside = root / ".bench-whole-manifest"
        if whole.exists():
            whole.replace(aside)
        for start in range(0, len(assets), BLOCK):
            kept = done / f"{start // BLOCK:03d}.lock"
            if not kept.exists():
                part = root / f".bench-block-{start // BLOCK:03d}.yaml"
                part.write_text(manifest_text(spec, assets[start : start + BLOCK]), encoding="utf-8")
                flexforge_build(root, jobs=jobs, manifest=part)
                # The documented rule: manifest FILE has its lock at FILE with the suffix .lock.
                part.with_suffix(".lock").replace(kept)
                part.unlink()
            doc = json.loads(kept.read_bytes())
            merged.update(doc["assets"])  # type: ignore[call-overload]
        aside.replace(whole)
        doc["assets"] = merged
        text = json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
        (root / "flexforge.lock").write_text(text, encoding="utf-8")
        shutil.rmtree(done)
    flexforge_build(root, jobs=jobs)


def ensure_project(spec: ProjectSpec, work_dir: Path = DEFAULT_WORK_DIR, *, build: bool = True) -> Path:
    """The cached project for `spec` under `work_dir`, generated (and built) when needed.

    Building again when the marker is present is cheap (a no-op build) and keeps the state real
    if flexforge's key or lock format changed since the project was cached."""
    root = work_dir / "projects" / spec.name
    marker = root / MARKER
    # Through JSON and back, so that it compares equal to the marker read back (tuples -> lists).
    params = json.loads(json.dumps({"spec": asdict(spec), "generator_version": GENERATOR_VERSION}))
    try:
        cached = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        cached = None
    # Written once the files are, before the (long) build: a build interrupted after that
    # resumes instead of starting again from nothing.
    generated = root / ".bench-generated.json"
    try:
        was_generated = json.loads(generated.read_text(encoding="utf-8")) == params
    except (OSError, ValueError):
        was_generated = False
    if cached != params and not was_generated:
        write_project(spec, root)
        generated.write_text(json.dumps(params, sort_keys=True) + "\n", encoding="utf-8")
    if build:
        build_project(root, spec)
    if cached != params:
        marker.write_text(json.dumps(params, sort_keys=True) + "\n", encoding="utf-8")
    return root


def fresh_copy(src: Path, dest: Path, *, built: bool) -> Path:
    """A copy of project `src` at `dest`: references hard-linked (read-only for flexforge, and
    2 GB at 10k), everything else copied. `built=False` drops the lock, outputs and state."""
    if dest.exists():
        shutil.rmtree(dest)
    skip = {".flexforge", ".git", ".dvc", "dvc.lock", ".dvcignore"}
    if not built:
        skip |= {"assets", "flexforge.lock"}
    dest.mkdir(parents=True)
    for entry in src.iterdir():
        if entry.name in skip:
            continue
        if entry.name == "refs":
            shutil.copytree(entry, dest / "refs", copy_function=os.link)
        elif entry.is_dir():
            shutil.copytree(entry, dest / entry.name)
        else:
            shutil.copy2(entry, dest / entry.name)
    return dest


GIT_IDENTITY = ["-c", "user.name=flexforge-bench", "-c", "user.email=bench@localhost"]


def ensure_git_repo(root: Path) -> None:
    """Commit the built project (manifest, lock, references, outputs) so it can be cloned, with
    the lock's git_blobs: a lock built before they existed gains them at the first build in a git
    work tree (flexforge.gitblobs), as a user's does, and that build is committed too."""
    _commit_project(root)
    if b'"git_blobs"' not in (root / "flexforge.lock").read_bytes():
        with tempfile.TemporaryDirectory() as cache:  # no no-op memo: the build must plan
            flexforge_build(root, env={"FLEXFORGE_CACHE_DIR": cache})
        _commit_project(root)


def _commit_project(root: Path) -> None:
    if (root / ".git").exists():
        status = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--", "flexforge.lock", "assets", "refs"],
            capture_output=True,
            text=True,
            check=True,
        )
        if not status.stdout.strip():
            return
    else:
        subprocess.run(["git", "init", "-q", "-b", "main", str(root)], check=True)
        # DVC's files and make's leftovers are not part of what a flexforge user commits.
        ignored = ["/.dvc/", "/dvc.lock", "/.dvcignore", "/" + MARKER, "/.bench-generated.json"]
        (root / ".gitignore").write_text("".join(f"{line}\n" for line in ignored))
    subprocess.run(["git", "-C", str(root), "add", "-A"], check=True)
    subprocess.run(
        ["git", "-C", str(root), *GIT_IDENTITY, "commit", "-q", "-m", "built by flexforge"],
        check=True,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--assets", "-n", type=int, required=True, help="number of assets")
    parser.add_argument("--layout", choices=["mixed", "independent", "chain"], default="mixed")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-references", action="store_true", help="no per-asset reference files")
    parser.add_argument("--no-build", action="store_true", help="generate only; do not run flexforge build")
    parser.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR)
    args = parser.parse_args(argv)
    if args.layout == "mixed" and args.seed == 0 and not args.no_references:
        spec = ProjectSpec.for_noop(args.assets)  # the very project run.py's no-op rows use
    else:
        spec = ProjectSpec(args.assets, args.layout, args.seed, references=not args.no_references)
    print(ensure_project(spec, args.work_dir, build=not args.no_build))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
