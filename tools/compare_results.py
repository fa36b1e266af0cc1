"""Compare the ``records`` of two runs' ``results.json`` (e.g. a recipe before and after a refactor).

    python tools/compare_results.py [--upgrade-before] BEFORE_ROOT AFTER_ROOT [NAME ...]

Each NAME (default: every folder under BEFORE_ROOT) is a run folder under both roots. Prints per run the number of
records and numbers compared, the largest absolute difference, any key that differs and any key only the AFTER
records have; exits 1 unless every run's records are identical (NaN equals NaN) apart from added keys.
``--upgrade-before``: first bring the BEFORE records to the one record schema (``tools/upgrade_records.py``), to
compare runs across that renaming.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from upgrade_records import upgrade_results  # noqa: E402


def compare(before: Path, after: Path, upgrade_before: bool = False) -> tuple[str, bool]:
    """One line about the two ``results.json`` files, and whether their records are identical (keys only AFTER
    has are listed, not counted as a difference)."""
    if not (before.is_file() and after.is_file()):
        return f"missing {before if not before.is_file() else after}", False
    old_data = json.loads(before.read_text())
    old = (upgrade_results(old_data) if upgrade_before else old_data)["records"]
    new = json.loads(after.read_text())["records"]
    if len(old) != len(new):
        return f"{len(old)} vs {len(new)} records", False
    worst, keys, added, numbers = 0.0, set(), set(), 0
    for x, y in zip(old, new, strict=True):
        keys |= set(x) - set(y)
        added |= set(y) - set(x)
        for key in set(x) & set(y):
            if isinstance(x[key], float) and isinstance(y[key], float):
                numbers += 1
                if not (x[key] == y[key] or (math.isnan(x[key]) and math.isnan(y[key]))):
                    worst = max(worst, abs(x[key] - y[key]))
            elif x[key] != y[key]:
                keys.add(key)
    line = f"{len(old)} records, {numbers} numbers, max |diff| {worst:.3g}, differing keys {sorted(keys)}, added keys {sorted(added)}"
    return line, worst == 0 and not keys


def main(argv: list[str]) -> int:
    upgrade_before = "--upgrade-before" in argv
    argv = [a for a in argv if a != "--upgrade-before"]
    if len(argv) < 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    before, after = Path(argv[0]), Path(argv[1])
    names = argv[2:] or sorted(p.name for p in before.iterdir() if p.is_dir())
    identical = True
    for name in names:
        line, same = compare(before / name / "results.json", after / name / "results.json", upgrade_before)
        print(f"{name}: {line}")
        identical &= same
    return 0 if identical else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
