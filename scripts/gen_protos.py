"""Generate proto/gen/ from the .proto files (run at Docker build; the app also does it
on first import when the generated code is missing or stale).

Usage: python scripts/gen_protos.py [--if-stale]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from proto.build import GEN_DIR, generate, load


def main(argv: list[str]) -> int:
    generated = generate(force="--if-stale" not in argv)
    load()  # prove the result imports
    print(f"{GEN_DIR}: {'generated' if generated else 'up to date'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
