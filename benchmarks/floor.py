"""The floor: the least a Python tool must do to answer "is anything to build?" naively.

It parses the manifest with PyYAML's C loader, reads the lock JSON and stats every output and
reference file, and nothing else: no validation, no hashing, no graph. A no-op `flexforge build`
that beats it must be caching something (the parsed manifest, keyed by its bytes) rather than
parsing the YAML on every run.

    python benchmarks/floor.py PROJECT_DIR
"""

import json
import os
import sys

import yaml


def main(root: str) -> int:
    with open(os.path.join(root, "flexforge.yaml"), "rb") as f:
        manifest = yaml.load(f, Loader=yaml.CSafeLoader)
    with open(os.path.join(root, "flexforge.lock"), "rb") as f:
        lock = json.load(f)
    assets = manifest["assets"]
    fmt = manifest.get("defaults", {}).get("output_format", "png")
    missing = 0
    for asset_id, asset in assets.items():
        files = [asset.get("out") or f"assets/{asset_id}.{asset.get('output_format', fmt)}"]
        files += [r for r in asset.get("references", ()) if r not in assets]
        for rel in files:
            try:
                os.stat(os.path.join(root, rel))
            except FileNotFoundError:
                missing += 1
    # Use what was read, so that no step can be skipped as dead code.
    stale = len(assets) - len(lock.get("assets", {})) + missing
    print(f"floor: {len(assets)} assets, {stale} stale")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1]))
