"""Bring results records written before the one record schema (issue #22) to it.

    python tools/upgrade_records.py docs/results/*.json

The one schema (:meth:`oe_common.maths.metrics.OODTable.records`): every record has ``task`` (``detection``,
``misclassification``, ``accuracy``, ``selection``), ``dataset``, ``model`` (the architecture), ``stage`` (the
training stage: ``baseline``, ``oe``, ...), ``score`` and, for detection, ``ood_set``. Older records named the stage
``model``, the anomaly set ``domain`` (text classifiers: ``ood_set`` plus a duplicate ``draws``) and had no
architecture; this renames them and takes the architecture from the file's ``meta.config``. Numbers are not touched.
A record that already has ``stage`` and no ``domain`` / ``draws`` is left as it is; ``meta.misclassification`` (the
vision classifiers' misclassification records) is upgraded too. Used by
``tools/compare_results.py --upgrade-before`` to compare runs across the schema change.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Mapping

#: ``model`` of the vision classifiers' records, by dataset (their configs name no architecture field).
VISION_ARCHITECTURES = {"mnist": "convnet", "cifar10": "wrn"}
#: ``model`` of the PixelCNN++ records.
DENSITY_ARCHITECTURE = "pixelcnn++"
#: ``dataset`` of the PTB language models' records (``level`` says word or char).
PTB_DATASET = "ptb"


def architecture(record: Mapping[str, Any], config: Mapping[str, Any]) -> str:
    """The ``model`` (architecture) of an old record whose ``model`` named its stage."""
    if "level" in record:
        return str(config.get("model", "transformer"))
    if record.get("score") == "bits_per_dim":
        return DENSITY_ARCHITECTURE
    return VISION_ARCHITECTURES[record["dataset"]]


def upgrade_record(record: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    """``record`` in the one schema (a new dict; ``config``: the run's ``meta.config``)."""
    new = {k: v for k, v in record.items() if k != "draws"}
    if "stage" not in new:
        new["stage"] = new.pop("model")
        new["model"] = architecture(record, config)
    if "level" in new:
        new.setdefault("dataset", PTB_DATASET)
    if "domain" in new:
        domain = new.pop("domain")
        if "n_out" in new:
            new["ood_set"] = domain
    new.setdefault("task", "detection" if "ood_set" in new else "misclassification")
    return new


def upgrade_results(data: Mapping[str, Any]) -> dict[str, Any]:
    """A ``results.json``-like dict with every record list (``records``, ``runs.<name>.records``) upgraded."""
    def upgraded(block: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
        meta = block.get("meta")
        config = meta.get("config", config) if isinstance(meta, Mapping) else config
        new = {**block, "records": [upgrade_record(r, config) for r in block["records"]]} if "records" in block else dict(block)
        if isinstance(meta, Mapping) and isinstance(meta.get("misclassification"), list):  # the vision classifiers' records
            new["meta"] = {**meta, "misclassification": [upgrade_record(r, config) for r in meta["misclassification"]]}
        return new

    config = data.get("meta", {}).get("config", {}) if isinstance(data.get("meta"), Mapping) else {}
    out = upgraded(data, config)
    if isinstance(data.get("runs"), Mapping):
        out["runs"] = {name: upgraded(run, config) if isinstance(run, Mapping) else run for name, run in data["runs"].items()}
    return out


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    for path in map(Path, argv):
        data = json.loads(path.read_text())
        new = upgrade_results(data)
        if new != data:
            path.write_text(json.dumps(new, indent=2) + "\n")
            print(f"{path}: upgraded")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
