"""The versions of a stack's core packages; fails if installing vqgan-flax changed any of them.

Usage: ``python ci/core_versions.py record FILE`` before ``pip install -e .``, then
``python ci/core_versions.py compare FILE`` after it: every package recorded (jax, jaxlib, flax,
transformers, huggingface_hub: the newest versions the registry serves) must be unchanged.
``python ci/core_versions.py show`` prints Python's and the core packages' versions (and torch's).
"""

from __future__ import annotations

import json
import platform
import sys
from importlib.metadata import PackageNotFoundError, version

CORE = ("jax", "jaxlib", "flax", "transformers", "huggingface_hub")


def installed(names: tuple = CORE) -> dict:
    found = {}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def main(argv: list) -> int:
    if argv == ["show"]:
        versions = {**installed(), "torch": installed(("torch",))["torch"]}
        print(f"Python {platform.python_version()}, " + ", ".join(f"{k} {v}" for k, v in versions.items()))
        return 0
    if len(argv) != 2 or argv[0] not in ("record", "compare"):
        print("usage: python ci/core_versions.py record FILE | compare FILE | show", file=sys.stderr)
        return 2
    command, path = argv
    if command == "record":
        with open(path, "w") as f:
            json.dump(installed(), f)
        return 0
    with open(path) as f:
        before = json.load(f)
    after = installed()
    changed = {name: (before[name], after[name]) for name in CORE if before[name] != after[name]}
    if changed:
        for name, (old, new) in changed.items():
            print(f"installing vqgan-flax changed {name}: {old} -> {new}", file=sys.stderr)
        return 1
    print("vqgan-flax installed beside " + ", ".join(f"{k} {v}" for k, v in after.items()) + ": nothing changed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
