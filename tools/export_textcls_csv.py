"""Export a named text-classification set of the data directory as quoted CSV files (RFC 4180, every cell quoted),
for the identity check of ``--train-file`` / ``--validation-file`` / ``--test-file`` against ``--dataset NAME``.

    python tools/export_textcls_csv.py clinc150 OUT_DIR [--data-dir DIR]

Writes OUT_DIR/{train,validation,test}.csv (columns text,label; labels as names) and, for clinc150, the out-of-scope
queries OUT_DIR/oos_{validation,test}.csv (column text), read through the recipe's own loaders.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from oe_text.textcls.textcls_data import load_ood_texts, load_textcls


def write_csv(path: Path, columns: dict[str, list]) -> None:
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, quoting=csv.QUOTE_ALL)  # RFC 4180: quotes doubled inside quoted cells, CRLF rows
        writer.writerow(list(columns))
        writer.writerows(zip(*columns.values(), strict=True))


def export(name: str, out: Path, data_dir: str | None = None) -> list[Path]:
    """The files written (see the module docstring)."""
    out.mkdir(parents=True, exist_ok=True)
    data = load_textcls(name, data_dir)
    paths = []
    for split, part in data.splits.items():
        paths.append(out / f"{split}.csv")
        write_csv(paths[-1], {"text": part["text"], "label": [data.label_names[i] for i in part["label"]]})
    if name == "clinc150":
        for split in ("validation", "test"):
            paths.append(out / f"oos_{split}.csv")
            write_csv(paths[-1], {"text": load_ood_texts(f"clinc150_oos{'_validation' if split == 'validation' else ''}", data_dir)["text"]})
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=("clinc150", "sst2", "trec"))
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args(argv)
    for path in export(args.name, args.out_dir, args.data_dir):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
