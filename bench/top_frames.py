"""Summarize a py-spy collapsed-stack file: the functions with the most samples.

    .venv/bin/python bench/top_frames.py profile.txt [--limit 25]

`self` counts samples where the function was running, `total` samples where it was
anywhere on the stack; both are percentages of all samples.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("profile", type=Path, help="output of py-spy record --format raw")
    parser.add_argument("--limit", type=int, default=25, help="rows to print (default 25)")
    args = parser.parse_args()

    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in args.profile.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    if not total:
        print(f"no samples in {args.profile}", file=sys.stderr)
        return 1
    print(f"{total} samples")
    print(f"{'self %':>7} {'total %':>7}  function (file)")
    for frame, count in own.most_common(args.limit):
        print(f"{100 * count / total:7.1f} {100 * inclusive[frame] / total:7.1f}  {frame}")
    print()
    print(f"{'total %':>7}  function (file), by samples anywhere on the stack")
    for frame, count in inclusive.most_common(args.limit):
        print(f"{100 * count / total:7.1f}  {frame}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
