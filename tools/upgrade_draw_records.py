"""Bring the detection records of a results.json written before the records said what ran up to today's fields.

    python tools/upgrade_draw_records.py docs/results/cifar10.json [MORE.json ...]

Records written before ``oe_common.maths.metrics.evaluate_ood`` counted DISTINCT draws say ``n_draws`` = the requested
number even where every draw took the whole anomaly set (e.g. ``cifar10.json``: 1,000 anomalies per set against
10,000 test images, ``n_draws: 10``, std 1e-16: one distinct draw). This adds what today's records carry
(``n_out_wanted``, ``n_out_available``, ``capped``, ``base_rate``, ``n_draws`` = distinct draws,
``n_draws_requested``, ``sampling``; :meth:`oe_common.maths.metrics.OODTable.records`), computed the way
``evaluate_ood`` computes them, from each record's ``n_in`` / ``n_out`` and the set sizes in the file's own meta:
``meta.data.n_ood`` (vision recipes) or ``meta.n_windows["<protocol>/<domain>"]`` (PTB recipes). The ratio is
``meta.config.ratio`` (default 5). Metrics are not touched. A record that already has ``n_draws_requested`` is left
as it is; a set whose size the meta does not give is an error (nothing is written).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from oe_common.maths.metrics import base_rate_label, sampling_label


def _set_name(record: dict[str, Any]) -> str:
    """The anomaly set of a record: ``ood_set`` (the one record schema) or, in older files, ``domain``."""
    return record["ood_set"] if "ood_set" in record else record["domain"]


def _set_size(meta: dict[str, Any], record: dict[str, Any]) -> int:
    sizes = meta.get("data", {}).get("n_ood") or {}
    if _set_name(record) in sizes:
        return int(sizes[_set_name(record)])
    key = f"{record.get('protocol')}/{_set_name(record)}"
    if key in meta.get("n_windows", {}):
        return int(meta["n_windows"][key])
    raise ValueError(f"the meta gives no size for anomaly set {_set_name(record)!r} (looked in meta.data.n_ood and meta.n_windows[{key!r}])")


def upgrade(data: dict[str, Any]) -> int:
    """Add the what-ran fields to the old records of ``data`` (in place); return how many records changed."""
    meta, ratio = data["meta"], int(data["meta"].get("config", {}).get("ratio", 5))
    old = [r for r in data["records"] if "n_draws" in r and "n_draws_requested" not in r]
    sets = [r for r in old if _set_name(r) != "mean"]
    for r in sets:
        requested, available, wanted = int(r["n_draws"]), _set_size(meta, r), int(r["n_in"]) // ratio
        capped = r["n_out"] < wanted
        distinct = 1 if r["n_out"] >= available else requested
        r.update(n_out_wanted=wanted, n_out_available=available, capped=capped,
                 base_rate=base_rate_label(int(r["n_in"]), int(r["n_out"]), ratio, capped), n_draws=distinct,
                 n_draws_requested=requested, sampling=sampling_label(base_rate_label(int(r["n_in"]), int(r["n_out"]), ratio, capped), distinct))
    for mean in (r for r in old if _set_name(r) == "mean"):  # oe_common.maths.metrics.mean_summary over its group's sets
        group = [r for r in sets if all(r.get(k) == mean.get(k) for k in mean if k in ("level", "protocol", "model", "score", "dataset"))]
        if not group:
            raise ValueError(f"no set records for the mean record {mean}")
        labels = {r["base_rate"] for r in group}
        rate = labels.pop() if len(labels) == 1 else "mixed"
        distinct = min(r["n_draws"] for r in group)
        mean.update(n_out_wanted=sum(r["n_out_wanted"] for r in group), n_out_available=sum(r["n_out_available"] for r in group),
                    capped=any(r["capped"] for r in group), base_rate=rate, n_draws=distinct, n_draws_requested=int(mean["n_draws"]),
                    sampling=sampling_label(rate, distinct))
    return len(old)


def main(paths: list[str]) -> int:
    if not paths:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    for path in map(Path, paths):
        data = json.loads(path.read_text())
        changed = upgrade(data)
        if changed:
            path.write_text(json.dumps(data, indent=2) + "\n")
        print(f"{path}: {changed} records upgraded")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
