"""List modules over the size we hold ourselves to (STYLE.md section 7), and fail on them.

A module may exceed the limit only with a reason recorded in ALLOWED below.
"""

import statistics
import sys
from pathlib import Path

LIMIT = 500
ALLOWED: dict[str, str] = {}
ROOTS = ("common", "data_owner", "consumer")

sizes = {
    str(path): len(path.read_text().splitlines())
    for root in ROOTS
    for path in Path(root).rglob("*.py")
}
outliers = {path: n for path, n in sizes.items() if n > LIMIT and path not in ALLOWED}
print(
    f"{len(sizes)} modules, median {statistics.median(sizes.values()):.0f} lines, "
    f"largest {max(sizes.values())}"
)
for path, n in sorted(outliers.items()):
    print(f"{path}: {n} lines (over {LIMIT}; split it or record why in ALLOWED)")
sys.exit(1 if outliers else 0)
