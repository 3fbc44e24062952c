"""The benchmarks work end to end. Nothing here is timed: timings stay in the benchmark."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parent.parent


def _generate_module() -> ModuleType:
    """benchmarks/generate.py is a script folder, not a package: load it by path."""
    name = "flexforge_bench_generate"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


def test_generated_project_has_the_promised_shape() -> None:
    generate = _generate_module()
    assets = generate.plan_assets(generate.ProjectSpec(100))
    ids = [a.id for a in assets]
    chained = [a for a in assets if a.upstream is not None]
    assert len(chained) == 10
    assert all(ids.index(a.upstream) < ids.index(a.id) for a in chained)
    assert all(a.width % 16 == 0 and a.height % 16 == 0 for a in assets)
    assert {a.model for a in assets} > {"flux-2-flex"}
    assert all(a.reference == f"refs/{a.id}.png" for a in assets)
    again = generate.plan_assets(generate.ProjectSpec(100))
    assert again == assets  # deterministic: runs stay comparable


def test_generated_projects_are_cached_by_their_parameters(tmp_path: Path) -> None:
    generate = _generate_module()
    spec = generate.ProjectSpec(3)
    root = generate.ensure_project(spec, tmp_path, build=False)
    ref = root / "refs" / "a00000.png"
    assert 190_000 < ref.stat().st_size < 210_000
    for name in ("flexforge.yaml", "Makefile", "dvc.yaml"):
        assert (root / name).is_file()
    stamp = (ref.stat().st_ino, ref.stat().st_mtime_ns)
    assert generate.ensure_project(spec, tmp_path, build=False) == root
    assert (ref.stat().st_ino, ref.stat().st_mtime_ns) == stamp  # reused, not written again
    other = generate.ensure_project(generate.ProjectSpec(3, seed=1), tmp_path, build=False)
    assert other != root
    assert (other / "refs" / "a00000.png").read_bytes() != ref.read_bytes()


def test_benchmark_smoke_run_prints_its_table(tmp_path: Path) -> None:
    out_json = tmp_path / "bench.json"
    proc = _run_bench(tmp_path, "--json", str(out_json))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    out = proc.stdout
    headings = ("no-op (nothing changed)", "cold (no .flexforge/)", "cost (1 run)", "review pages")
    headings += ("Targets (issue 4",)
    for heading in headings:
        assert heading in out, out
    assert "pricing: worst |estimate - bill| / bill = 0.00 (target <= 0.05) OK" in out, out
    for row in ("python -c pass", "floor script", "flexforge build", "python -m flexforge plan"):
        assert row in out, out
    assert out_json.exists()

    # Run twice, compare: an earlier run whose makespan ratios were all far lower makes every
    # makespan row of this one a regression (whatever the machine's load), and the flag fails it.
    earlier = json.loads(out_json.read_text())
    for row in earlier["results"]:
        if "bound_s" in row:
            row["bound_s"] = row["median_s"] * 1000
    doctored = tmp_path / "earlier.json"
    doctored.write_text(json.dumps(earlier))
    again = _run_bench(
        tmp_path, "--only", "makespan,pricing", "--compare", str(doctored), "--fail-on-regression"
    )
    assert again.returncode == 1, again.stdout[-4000:] + again.stderr[-4000:]
    assert f"Compared with {doctored}" in again.stdout
    assert "makespan: independent, --jobs 4 (N=10) / bound" in again.stdout
    assert "REGRESSED" in again.stdout and "regressions beyond 10 %: makespan" in again.stdout
    assert "pricing: worst |estimate - bill| / bill" in again.stdout


def test_the_100k_project_fits_flexforges_limits_and_the_disk() -> None:
    """Above 10,000 assets the no-op project has 16 x 16 references and short prompts: its
    manifest must stay under the manifest size limit (a 100k manifest with the usual prompts
    would not), and its references must not be 20 GB."""
    from flexforge.yamlsource import MAX_BYTES

    generate = _generate_module()
    spec = generate.ProjectSpec.for_noop(100_000)
    assert generate.ProjectSpec.for_noop(10_000) == generate.ProjectSpec(10_000)  # unchanged up to 10k
    assert len(generate.manifest_text(spec, generate.plan_assets(spec)).encode()) < MAX_BYTES
    usual = generate.ProjectSpec(100_000)
    assert len(generate.manifest_text(usual, generate.plan_assets(usual)).encode()) > MAX_BYTES


def test_a_small_reference_is_a_valid_png(tmp_path: Path) -> None:
    from PIL import Image

    generate = _generate_module()
    generate.write_reference_png(tmp_path / "r.png", "seed", generate.SMALL_REF_SIDE)
    with Image.open(tmp_path / "r.png") as img:
        img.load()
        assert img.size == (generate.SMALL_REF_SIDE, generate.SMALL_REF_SIDE)
    assert (tmp_path / "r.png").stat().st_size < 1_000


def test_compare_refuses_a_file_that_is_not_an_earlier_run_before_running_anything(tmp_path: Path) -> None:
    bad = tmp_path / "old.json"
    bad.write_text("[1, 2]")

    proc = _run_bench(tmp_path, "--compare", str(bad))

    assert proc.returncode == 2
    assert f"--compare {bad}: no 'targets' list; give a file written by run.py --json" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "work").exists()


def _run_bench(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "run.py"),
            "--smoke",
            "--work-dir",
            str(tmp_path / "work"),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=300,  # a hang must fail the test, not the CI job
        check=False,
    )


def test_pricing_copies_an_example_as_committed_not_as_the_readme_built_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README's first command builds launch-kit in place; the tests (its second) then price
    the examples from nothing. Outputs left in gitignored folders must not come along: they
    would be files nobody recorded (conflicts), and the smoke run failed on them."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    spec = importlib.util.spec_from_file_location("flexforge_bench_run", REPO / "benchmarks" / "run.py")
    assert spec is not None and spec.loader is not None
    run = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "flexforge_bench_run", run)
    spec.loader.exec_module(run)
    example = tmp_path / "repo" / "kit"
    (example / "brand").mkdir(parents=True)
    (example / "flexforge.yaml").write_text("version: 1\n")
    (example / "brand" / "logo.png").write_bytes(b"logo")
    (example / ".gitignore").write_text("/site/\n/flexforge.lock\n")
    subprocess.run(["git", "init", "-q", str(tmp_path / "repo")], check=True)
    subprocess.run(["git", "-C", str(tmp_path / "repo"), "add", "-A"], check=True)
    (example / "site" / "img").mkdir(parents=True)
    (example / "site" / "img" / "shelf.webp").write_bytes(b"built")
    (example / "flexforge.lock").write_text("{}")
    run._copy_unbuilt(example, tmp_path / "copy")
    copied = sorted(p.relative_to(tmp_path / "copy").as_posix() for p in (tmp_path / "copy").rglob("*"))
    assert copied == [".gitignore", "brand", "brand/logo.png", "flexforge.yaml"]
