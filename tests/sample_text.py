"""A text file with known counts, for the download-link templates."""

from __future__ import annotations

import hashlib
from pathlib import Path

LINES = [f"line {n}: the quick brown fox ✓ jumps over {n} lazy dogs" for n in range(2000)]


def write_sample(folder: Path) -> dict[str, object]:
    """Write sample.txt into `folder` and return the counts the job must report."""
    data = ("\n".join(LINES) + "\n").encode()
    (folder / "sample.txt").write_bytes(data)
    return {
        "bytes": len(data),
        "lines": data.count(b"\n"),
        "words": len(data.split()),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
