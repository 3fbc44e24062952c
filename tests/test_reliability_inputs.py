"""Issue 5, points 1-3: hostile manifests and files. Refused with located messages, quickly,
within bounded memory; nothing read or written outside the project root.

A test whose docstring starts "Regression" showed a bug first (as an xfail) and names the fix.
"""

from __future__ import annotations

import os
import re
import resource
import subprocess
from pathlib import Path

import pytest

from tests.helpers import Project, png
from tests.support.spawn import run_flexforge

LOCATED = re.compile(r"^flexforge\.yaml:\d+:\d+: ", re.M)


def errors(project: Project) -> str:
    """`validate`'s messages for a broken manifest (exit 1, every line located, no traceback)."""
    result = project.run("validate")
    assert result.exit_code == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1].endswith("in the manifest"), result.stderr
    assert all(LOCATED.match(line) for line in lines[:-1]), result.stderr
    return "\n".join(lines[:-1])


def confined(
    root: Path, *args: str, memory_mb: int = 1024, cpu_s: int = 30
) -> subprocess.CompletedProcess[str]:
    """Run flexforge in a child with hard limits on address space and CPU time: a bomb that gets
    through shows up as a MemoryError, a SIGXCPU or a crash, not as a hung test machine."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (memory_mb * 2**20, memory_mb * 2**20))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s))

    return run_flexforge("-C", str(root), *args, preexec_fn=limit, timeout=120)


def assert_refused(result: subprocess.CompletedProcess[str], *fragments: str) -> str:
    assert result.returncode == 1, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr, result.stderr[-2000:]
    assert LOCATED.search(result.stderr), result.stderr[-2000:]
    for fragment in fragments:
        assert re.search(fragment, result.stderr, re.I), result.stderr[-2000:]
    return result.stderr


# -- 2. YAML ----------------------------------------------------------------------------------------


def test_billion_laughs_is_refused_within_a_small_memory_and_cpu_budget(project: Project) -> None:
    lines = ["version: 1", 'lol0: &l0 "lol"']
    lines += [f"lol{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, 10)]  # 10**9 lols
    lines.append("assets: {a: {prompt: *l9}}")
    project.write("flexforge.yaml", "\n".join(lines) + "\n")
    assert_refused(confined(project.root, "validate", memory_mb=512, cpu_s=20), "alias bomb")


def test_aliases_that_amplify_text_are_refused(project: Project) -> None:
    """Regression (fixed in fb90bd8): only nodes were counted, so 1,001 aliases of a 64 KB string expanded a
    130 KB manifest to a 64 MB prompt."""
    big = "x" * 65536
    aliases = ", ".join(["*d"] * 1000)
    project.write(
        "flexforge.yaml",
        f'version: 1\nassets:\n  a:\n    prompt:\n      subjects: [&d {{description: "{big}"}}, {aliases}]\n',
    )
    assert_refused(confined(project.root, "validate"), "alias|expan|large|size")


def test_vars_that_amplify_a_prompt_are_refused(project: Project) -> None:
    """Regression (fixed in fb90bd8): {var} substitution had no output limit (a 64 MB prompt from a 130 KB
    manifest)."""
    big = "x" * 65536
    project.write(
        "flexforge.yaml",
        f'version: 1\nvars: {{v: "{big}"}}\nassets:\n  a: {{prompt: "{"{v}" * 1000}"}}\n',
    )
    assert_refused(confined(project.root, "validate"), "long|large|size|limit")


@pytest.mark.parametrize(
    "nested",
    [
        "x: " + "[" * 100_000 + "]" * 100_000,
        "x:\n" + "- " * 100_000 + "deep",
        "x: " + "{a: " * 100_000 + "1" + "}" * 100_000,
    ],
    ids=["flow-sequences", "block-sequences", "flow-mappings"],
)
def test_deep_nesting_is_refused_without_crashing(project: Project, nested: str) -> None:
    """Regression (fixed in fb90bd8): libyaml's composer recursed in C and ~30,000 levels crashed flexforge
    with SIGSEGV before the depth check ran."""
    project.write("flexforge.yaml", "version: 1\nassets: {a: {prompt: x}}\n" + nested + "\n")
    assert_refused(confined(project.root, "validate"), "deeper than")


def test_deep_nesting_spread_over_lines_is_refused_without_crashing(project: Project) -> None:
    """Regression (fixed in 657d207): the fb90bd8 guard (yamlsource._may_nest_deeply) counts brackets per
    line, so flow collections opened one per line still reach libyaml's recursive composer: SIGSEGV"""
    nested = "x: " + "[\n" * 100_000 + "]" * 100_000
    project.write("flexforge.yaml", "version: 1\nassets: {a: {prompt: x}}\n" + nested + "\n")
    assert_refused(confined(project.root, "validate"), "deeper than")


def test_aliased_duplicate_keys_are_refused_within_a_memory_budget(project: Project) -> None:
    """Regression (fixed in 657d207): mapping keys are outside yamlsource's text budget, and a duplicate
    key's message quotes the key in full: 20,000 aliases of a 100 KB key in a 260 KB file make 2 GB of
    messages"""
    big = "k" * 100_000
    keys = ", ".join(["*k : 1"] * 20_000)
    project.write(
        "flexforge.yaml", f'version: 1\nassets: {{a: {{prompt: x}}}}\nz: &k "{big}"\ny: {{{keys}}}\n'
    )
    stderr = assert_refused(confined(project.root, "validate"))
    assert len(stderr) < 100_000  # messages quote a name, they do not reproduce it


def test_many_duplicate_keys_in_one_mapping_are_reported_within_a_cpu_budget(project: Project) -> None:
    """Regression: each duplicate key's message names the line of the first, found by indexing
    the mapping's keys; indexing it again for each of 60,000 duplicates was quadratic (hours)."""
    keys = ", ".join(["k: 1"] * 60_000)
    project.write("flexforge.yaml", f"version: 1\nassets: {{a: {{prompt: x}}}}\ny: {{{keys}}}\n")
    stderr = assert_refused(confined(project.root, "validate", cpu_s=20), "duplicate key 'k'")
    assert "first defined on line 3" in stderr


def test_vars_amplified_across_a_structured_prompt_are_refused(project: Project) -> None:
    """Regression (fixed in 657d207): the fb90bd8 limit (manifest.MAX_TEXT) applies to each string on its
    own: a 64 KB var in 2,000 subjects of a structured prompt still makes a 128 MB prompt from a 140 KB
    file"""
    big = "v" * 65536
    subjects = ", ".join(['{description: "{v}"}'] * 2000)
    project.write(
        "flexforge.yaml",
        f'version: 1\nvars: {{v: "{big}"}}\nassets:\n  a:\n    prompt:\n      subjects: [{subjects}]\n',
    )
    assert_refused(confined(project.root, "validate"), "long|large|size|limit")


def test_moderate_nesting_is_refused_by_the_depth_limit(project: Project) -> None:
    project.write("flexforge.yaml", "version: 1\nassets: {a: {prompt: x}}\nx: " + "[" * 200 + "]" * 200)
    assert "nested deeper than 64 levels" in errors(project)


def test_a_manifest_over_the_size_limit_is_refused_before_parsing(project: Project) -> None:
    filler = "# " + "x" * 1022 + "\n"
    project.write("flexforge.yaml", "version: 1\nassets: {a: {prompt: x}}\n" + filler * (17 * 1024))
    assert "flexforge.yaml:1:1: larger than 16 MiB" in errors(project)


def test_duplicate_keys_in_vars_defaults_and_structured_prompts(project: Project) -> None:
    project.manifest("""
        version: 1
        defaults: {width: 64, width: 128}
        vars:
          brand: a
          brand: b
        assets:
          a:
            prompt:
              scene: one
              scene: two
              subjects: [{description: x, description: y}]
              camera: {lens: 35mm, lens: 50mm}
    """)
    text = errors(project)
    assert "flexforge.yaml:2:23: defaults.width: duplicate key 'width' (first defined on line 2)" in text
    assert "flexforge.yaml:5:3: vars.brand: duplicate key 'brand' (first defined on line 4)" in text
    assert (
        "flexforge.yaml:10:7: assets.a.prompt.scene: duplicate key 'scene' (first defined on line 9)" in text
    )
    assert "assets.a.prompt.subjects.0.description: duplicate key 'description'" in text
    assert "assets.a.prompt.camera.lens: duplicate key 'lens'" in text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "version: 1\nassets: {a: {prompt: x}}\n---\nversion: 1\n",
            "3:1: invalid YAML: but found another document",
        ),
        (
            'version: 1\nassets: {a: {prompt: !!python/object/apply:os.system ["echo pwned"]}}\n',
            "assets.a.prompt: .* is not of type",
        ),
        ("version: 1\nassets: {a: {prompt: !secret x}}\n", "could not determine a constructor for the tag"),
        (
            "base: &b {width: 64}\nversion: 1\nassets: {a: {<<: *b, prompt: x}}\n",
            "merge keys .* not supported",
        ),
        ("version: 1\nassets: {? [a, b] : {prompt: x}}\n", "a mapping key must be a plain string"),
        ("version: 1\nassets: {~: {prompt: x}}\n", "a mapping key must be a plain string"),
        (
            'version: 1\nassets: {a: {prompt: "x\\u0000y", out: "a.png"}}\nbad: "\x07"\n',
            "invalid YAML|not valid",
        ),
    ],
    ids=["two-documents", "python-tag", "custom-tag", "merge-key", "complex-key", "null-key", "control-char"],
)
def test_yaml_beyond_plain_data_is_a_clear_error(project: Project, text: str, expected: str) -> None:
    project.write("flexforge.yaml", text)
    assert re.search(expected, errors(project)), errors(project)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("\ufeffversion: 1\n".encode("utf-16"), "not UTF-8"),
        (b"version: 1\r\nassets:\r\n\thero: {prompt: a}\r\n", "use spaces"),
        (b"\n\n   \n", "the file is empty"),
        (b"version: 1\nassets: {a: {prompt: \xff}}\n", "flexforge.yaml:2:1: not UTF-8 \\(byte 0xff\\)"),
    ],
    ids=["utf-16", "tabs-crlf", "blank", "latin-1"],
)
def test_encodings_and_blank_files_are_clear_errors(project: Project, raw: bytes, expected: str) -> None:
    (project.root / "flexforge.yaml").write_bytes(raw)
    assert re.search(expected, errors(project))


def test_crlf_line_endings_are_fine(project: Project) -> None:
    (project.root / "flexforge.yaml").write_bytes(b"version: 1\r\nassets:\r\n  a: {prompt: x}\r\n")
    assert project.run("validate").exit_code == 0


# -- 1. confinement ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("out", "/tmp/x.png", "is absolute"),
        ("out", "C:/x.png", "is absolute"),
        ("out", "../x.png", "leaves the project root"),
        ("out", "img/../../x.png", "leaves the project root"),
        ("out", "img\\\\x.png", "use '/' as the path separator"),
        ("out", "outside/x.png", "leaves the project root"),  # a folder linking out of the root
        ("out", ".flexforge/x.png", "inside .flexforge/, which flexforge never writes"),
        ("references", "[/etc/hostname]", "is absolute"),
        ("references", "[brand/../../secret.png]", "leaves the project root"),
        ("references", "[brand/secret-link.png]", "leaves the project root"),  # a file linking out
    ],
)
def test_paths_that_leave_the_root_are_refused(
    project: Project, field: str, value: str, expected: str
) -> None:
    secret = png(project.root.parent / "secret.png")
    (project.root.parent / "elsewhere").mkdir()
    (project.root / "outside").symlink_to(project.root.parent / "elsewhere", target_is_directory=True)
    (project.root / "brand").mkdir()
    (project.root / "brand" / "secret-link.png").symlink_to(secret)
    quoted = value if field == "references" else f'"{value}"'
    project.manifest(f"""
        version: 1
        assets:
          a: {{prompt: x, {field}: {quoted}}}
    """)
    assert f"assets.a.{field}" in errors(project)
    assert expected in errors(project)
    assert project.build().exit_code == 1
    assert list((project.root.parent / "elsewhere").iterdir()) == []


def test_output_folders_are_created_inside_the_root(project: Project) -> None:
    project.manifest("""
        version: 1
        defaults: {width: 64, height: 64}
        assets:
          a: {prompt: x, seed: 1, out: site/img/deep/er/a.png}
    """)
    assert project.build().exit_code == 0
    assert (project.root / "site/img/deep/er/a.png").is_file()


def test_an_output_file_that_links_out_of_the_root_is_never_written_through(project: Project) -> None:
    victim = project.root.parent / "victim.png"
    victim.write_bytes(b"precious")
    (project.root / "assets").mkdir()
    (project.root / "assets" / "a.png").symlink_to(victim)
    project.manifest("""
        version: 1
        defaults: {width: 64, height: 64}
        assets:
          a: {prompt: x, seed: 1}
    """)
    assert "leaves the project root" in errors(project)
    assert project.build().exit_code == 1
    assert victim.read_bytes() == b"precious"


def test_two_assets_writing_one_file_under_different_spellings(project: Project) -> None:
    (project.root / "img").mkdir()
    (project.root / "alias").symlink_to(project.root / "img", target_is_directory=True)
    project.manifest("""
        version: 1
        assets:
          a: {prompt: x, out: img/x.png}
          b: {prompt: y, out: img/../img/x.png}
          c: {prompt: z, out: alias/x.png}
    """)
    text = errors(project)
    assert "assets.b.out: 'a' already writes 'img/x.png'" in text
    assert "assets.c.out: 'a' already writes 'img/x.png'" in text


@pytest.mark.parametrize("ref", ["assets/../assets/hero.png", "brand/hero-link.png"])
def test_another_assets_output_under_another_spelling_is_refused(project: Project, ref: str) -> None:
    """Regression (fixed in 657d207): manifest._Checker._outputs compares a reference as written
    (Path(ref).as_posix()) with the owners' normalised outputs: '..' segments and links inside the root
    evade the 'reference the asset id instead' check, so the dependency edge is silently missing"""
    project.manifest("""
        version: 1
        defaults: {width: 64, height: 64}
        assets:
          hero: {prompt: x, seed: 1}
    """)
    assert project.build().exit_code == 0
    (project.root / "brand").mkdir()
    (project.root / "brand" / "hero-link.png").symlink_to(Path("..") / "assets" / "hero.png")
    project.manifest(f"""
        version: 1
        defaults: {{width: 64, height: 64}}
        assets:
          hero: {{prompt: x, seed: 1}}
          edit: {{prompt: y, seed: 2, references: [{ref}]}}
    """)
    assert "is the output of asset 'hero'; reference the asset id instead" in errors(project)


def test_a_state_folder_linking_out_of_the_root_is_never_written_through(project: Project) -> None:
    """Regression (fixed in 657d207): a committed `.flexforge` symlink leading out of the root is followed:
    even `validate` writes cache files there, `build` the object cache (Store never checks its dir)"""
    elsewhere = project.root.parent / "elsewhere"
    elsewhere.mkdir()
    (project.root / ".flexforge").symlink_to(elsewhere, target_is_directory=True)
    project.manifest("""
        version: 1
        defaults: {width: 64, height: 64}
        assets:
          a: {prompt: x, seed: 1}
    """)
    for command in (["validate"], ["plan", "--provider", "draft"], ["build", "--provider", "draft"]):
        result = project.run(*command)
        assert "Traceback" not in result.stderr
    assert sorted(p.name for p in elsewhere.iterdir()) == []


@pytest.mark.parametrize("field", ["out: 'a\\0.png'", "references: ['r\\0.png']"])
def test_a_nul_in_a_path_is_a_located_error(project: Project, field: str) -> None:
    """Regression (fixed in 657d207): a NUL character in `out` or a reference reaches Path.resolve()
    unchecked: 'internal error: ValueError: embedded null byte' instead of a located message"""
    project.write(
        "flexforge.yaml", f"version: 1\nassets:\n  a: {{prompt: x, {field.replace(chr(39), chr(34))}}}\n"
    )
    assert "assets.a." in errors(project)


# -- 3. reference images ----------------------------------------------------------------------------


def test_a_reference_over_20_mb_is_refused(project: Project) -> None:
    ref = png(project.root / "refs" / "padded.png")
    with ref.open("ab") as f:  # decodes fine, but is too big to send
        f.write(os.urandom(21 * 2**20))
    project.manifest("""
        version: 1
        assets:
          a: {prompt: x, references: [refs/padded.png]}
    """)
    assert "references.0: reference 'refs/padded.png': 21.0 MB; the API takes at most 20 MB" in errors(
        project
    )


def test_a_truncated_reference_is_refused(project: Project) -> None:
    """Regression (fixed in 657d207): imaging.check_reference reads only the header, so a truncated PNG
    passes validation and is sent (paid) to the API; the issue asks for 'decodable'"""
    from PIL import Image

    ref = project.root / "refs" / "cut.png"
    ref.parent.mkdir()
    Image.effect_noise((256, 256), 60).convert("RGB").save(ref)
    data = ref.read_bytes()
    ref.write_bytes(data[: len(data) // 2])
    project.manifest("""
        version: 1
        assets:
          a: {prompt: x, references: [refs/cut.png]}
    """)
    assert "references.0: reference 'refs/cut.png'" in errors(project)
