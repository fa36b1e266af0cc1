"""A user's own labelled texts for the text-classifier recipe (issue 21 items 1, 3, 5): data files, a ``datasets``
Hub id or a saved dataset folder, own anomaly sets, and the checks that run before anything is written.

Sources (:func:`load_own_textcls`), each giving ``train`` / ``validation`` / ``test`` with a text and a label column:

* files: ``--train-file`` / ``--validation-file`` / ``--test-file``, ``.csv`` (RFC 4180 quoting), ``.tsv``,
  ``.jsonl``, each optionally ``.gz``, read by ``datasets`` (:func:`oe_common.experiments.table_files.read_columns`);
* ``--dataset ID_OR_FOLDER``: a folder written by ``Dataset(Dict).save_to_disk`` (``datasets.load_from_disk``), else
  ``datasets.load_dataset(ID_OR_FOLDER, --dataset-config)`` (a Hub id, or a folder of script-free data files);
  the splits named by ``--train-split`` / ``--validation-split`` / ``--test-split``.

Without a validation file / split, validation is a seeded, stratified :data:`VALIDATION_FRACTION` of the train rows
(``datasets.Dataset.train_test_split(stratify_by_column=...)``, seed ``--seed``; both parts keep file order).

Labels may be strings or integers. Label names are the train labels sorted (integers numerically, then written as
strings), or the names of a ``ClassLabel`` column; ids are positions in that list and go into the model config
(``id2label`` / ``label2id``). Every problem is a one-line :class:`~oe_common.experiments.table_files.TableFileError` naming the
file (or dataset and split) and, for rows, the row (data order, from 1; the header of a CSV / TSV is not a row).
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from oe_common.experiments.data_dir import DataError, MissingDataError
from oe_common.deployment.preprocessing import some_indices
from oe_common.experiments.table_files import MissingColumnError, TableFileError, read_columns, text_column

from .textcls_data import TextClsData, labelled_dataset, load_ood_texts

__all__ = ["VALIDATION_FRACTION", "DEFAULT_OWN_MAX_LENGTH", "DatasetSourceError", "HeadMismatchError", "load_own_textcls", "read_texts",
           "parse_named_file", "check_classification_head", "named_anomaly_sets", "own_data_notes"]

#: Share of the train rows moved to validation when no validation file / split is given (stratified, seeded).
VALIDATION_FRACTION = 0.1
#: ``max_length`` (tokens per text) of a user's own data when ``--max-length`` is not given.
DEFAULT_OWN_MAX_LENGTH = 64


class DatasetSourceError(MissingDataError):
    """``--dataset`` is neither a named set, a saved dataset folder, nor a source ``datasets`` can load (a usage error)."""


class HeadMismatchError(DataError, ValueError):
    """``--model`` has a classification head of another size and ``--keep-head`` forbids replacing it."""


def parse_named_file(value: str, flag: str) -> tuple[str, str]:
    """``NAME=PATH`` (or a bare ``PATH``: the name is the file name without its suffixes) as ``(name, path)``."""
    name, sep, path = value.partition("=")
    if not sep:
        name, path = Path(value).name.split(".")[0], value
    if not name or not path:
        raise ValueError(f"{flag} {value!r}: give NAME=PATH (a name for the results and a .csv/.tsv/.jsonl[.gz] file)")
    return name, path


def _bad_utf8_line(path: Path) -> int | None:
    """The first line (from 1) of ``path`` (decompressed) that is not UTF-8, or None."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            for number, line in enumerate(f, 1):
                try:
                    line.decode("utf-8")
                except UnicodeDecodeError:
                    return number
    except (OSError, EOFError):
        return None
    return None


def _read_table(path: str | os.PathLike, columns: Sequence[str]) -> dict[str, list[Any]]:
    """:func:`read_columns`, with the line of the first non-UTF-8 byte named when that is why it failed."""
    try:
        return read_columns(path, columns)
    except MissingColumnError:
        raise
    except TableFileError:
        line = _bad_utf8_line(Path(path)) if Path(path).is_file() else None
        if line is not None:
            raise TableFileError(f"{path}: line {line} is not UTF-8 text; save the file as UTF-8") from None
        raise


def read_texts(path: str | os.PathLike, column: str) -> list[str]:
    """The texts of column ``column`` of a data file (an anomaly set): every row a non-empty text."""
    return text_column(_read_table(path, [column])[column], path, column)


def _labels_of(values: Sequence[Any], where: str, column: str) -> list[str]:
    """Labels as strings (an integer ``7`` -> ``"7"``); an empty or missing label is an error naming its rows."""
    bad = [i + 1 for i, v in enumerate(values) if v is None or isinstance(v, (bool, float, list, dict)) or not str(v).strip()]
    if bad:
        raise TableFileError(f"{where}: column {column!r} has {len(bad)} empty or non-label cell(s) at row {some_indices(bad)}; "
                             "every row needs a label (a string or an integer)")
    return [str(v) for v in values]


def _sorted_label_names(values: Sequence[Any]) -> list[str]:
    """The distinct labels, integers in numeric order, else strings sorted."""
    distinct = set(values)
    if all(isinstance(v, int) for v in distinct):
        return [str(v) for v in sorted(distinct)]
    return sorted(str(v) for v in distinct)


def _ids(labels: list[str], names: list[str], where: str, column: str) -> list[int]:
    """Label ids (positions in ``names``); a label never seen in training is named with its first row."""
    index = {name: i for i, name in enumerate(names)}
    unknown: dict[str, int] = {}
    for row, label in enumerate(labels, 1):
        if label not in index:
            unknown.setdefault(label, row)
    if unknown:
        shown = ", ".join(f"{label!r} (row {row})" for label, row in list(unknown.items())[:5])
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        raise TableFileError(f"{where}: column {column!r} has label(s) never seen in training: {shown}{more}; "
                             f"the training labels are {', '.join(map(repr, names[:10]))}{', ...' if len(names) > 10 else ''}")
    return [index[label] for label in labels]


def _stratified_split(train: Any, where: str, seed: int) -> tuple[Any, Any]:
    """``(train, validation)``: a seeded, stratified :data:`VALIDATION_FRACTION` of ``train`` (file order kept)."""
    n, k = len(train), len(train.features["label"].names)
    counts = np.bincount(np.asarray(train["label"]), minlength=k)
    need = int(np.ceil(k / VALIDATION_FRACTION))
    if n < need or counts[counts > 0].min() < 2:
        raise TableFileError(
            f"{where}: {n} rows in {int((counts > 0).sum())} classes (smallest class: {int(counts[counts > 0].min())} rows) are too few "
            f"for a stratified {VALIDATION_FRACTION:.0%} validation split, which needs at least {need} rows and 2 rows per class; "
            "give a validation file (--validation-file / --validation-split) or more rows")
    numbered = train.add_column("_row", list(range(n)))
    parts = numbered.train_test_split(test_size=VALIDATION_FRACTION, stratify_by_column="label", seed=seed)
    return tuple(parts[p].sort("_row").remove_columns("_row").flatten_indices() for p in ("train", "test"))


def _from_values(rows: dict[str, tuple[list[str], list[Any]]], wheres: dict[str, str], column: str, seed: int,
                 names: list[str] | None = None) -> tuple[Any, list[str], str]:
    """The DatasetDict of ``rows`` ``{split: (texts, raw labels)}`` (validation carved out when absent), the label
    names and how validation was made."""
    import datasets

    if names is None:
        names = _sorted_label_names(rows["train"][1])
    labels = {split: _labels_of(raw, wheres[split], column) for split, (_, raw) in rows.items()}
    parts = {split: labelled_dataset(rows[split][0], _ids(labels[split], names, wheres[split], column), names, split) for split in rows}
    if "validation" in parts:
        how = f"given: {wheres['validation']}"
    else:
        parts["train"], parts["validation"] = _stratified_split(parts["train"], wheres["train"], seed)
        how = (f"a seeded (seed {seed}), stratified {VALIDATION_FRACTION:.0%} of {wheres['train']} "
               f"({len(parts['validation'])} of {len(rows['train'][0])} rows; train keeps the other {len(parts['train'])})")
    return datasets.DatasetDict({s: parts[s] for s in ("train", "validation", "test")}), names, how


def _load_files(cfg: Any) -> tuple[Any, list[str], str]:
    files = {"train": cfg.train_file, "validation": cfg.validation_file, "test": cfg.test_file}
    rows, wheres = {}, {}
    for split, path in files.items():
        if path is None:
            continue
        table = _read_table(path, [cfg.text_column, cfg.label_column])
        rows[split] = (text_column(table[cfg.text_column], path, cfg.text_column), table[cfg.label_column])
        wheres[split] = str(path)
    return _from_values(rows, wheres, cfg.label_column, cfg.seed)


def _load_source(cfg: Any) -> tuple[Any, list[str], str]:
    """``--dataset`` as a saved dataset folder or a ``load_dataset`` source, its named splits."""
    import datasets

    source, folder = cfg.dataset, Path(cfg.dataset).expanduser()
    saved = folder.is_dir() and ((folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file())
    try:
        loaded = datasets.load_from_disk(str(folder)) if saved else datasets.load_dataset(source, cfg.dataset_config)
    except Exception as exc:  # offline Hub id, unknown folder, bad files: one line naming the source
        if isinstance(exc, DataError):
            raise
        raise DatasetSourceError(
            f"--dataset {source!r} is not a named set (clinc150, sst2, trec) and datasets cannot load it ({type(exc).__name__}: "
            f"{' '.join(str(exc).split())[:200]}); give a saved dataset folder, a folder of .csv/.jsonl files, a cached Hub id, "
            "or --train-file") from None
    if isinstance(loaded, datasets.Dataset):
        loaded = datasets.DatasetDict({"train": loaded})
    names_of = {"train": cfg.train_split, "validation": cfg.validation_split, "test": cfg.test_split}
    for role in ("train", "test"):
        if names_of[role] not in loaded:
            raise TableFileError(f"dataset {source!r} has no split {names_of[role]!r} (its splits: {', '.join(map(repr, loaded))}); "
                                 f"name it with --{role}-split")
    rows, wheres, names = {}, {}, None
    for role, split in names_of.items():
        if split not in loaded:
            continue
        part, where = loaded[split], f"dataset {source!r} split {split!r}"
        missing = [c for c in (cfg.text_column, cfg.label_column) if c not in part.column_names]
        if missing:
            raise MissingColumnError(f"{where} has no column {', '.join(map(repr, missing))}; its columns: "
                                     f"{', '.join(map(repr, part.column_names))} (--text-column / --label-column)")
        feature = part.features[cfg.label_column]
        raw = list(part[cfg.label_column])
        if isinstance(feature, datasets.ClassLabel):
            names = list(feature.names)
            unlabelled = sum(1 for v in raw if v == -1)
            if unlabelled:
                raise TableFileError(f"{where}: {unlabelled} of {len(raw)} rows have no label (ClassLabel -1, e.g. a GLUE test split); "
                                     f"name a labelled split with --{role}-split")
            raw = [feature.int2str(v) if isinstance(v, int) and 0 <= v < len(names) else v for v in raw]
        rows[role] = (text_column(list(part[cfg.text_column]), where, cfg.text_column), raw)
        wheres[role] = where
    return _from_values(rows, wheres, cfg.label_column, cfg.seed, names)


def load_own_textcls(cfg: Any) -> tuple[TextClsData, str]:
    """``(the in-distribution set, how its validation split was made)`` from ``cfg``'s files or ``cfg.dataset``
    (a :class:`~oe_text.textcls.textcls_experiment.TextClsConfig` with ``own_data``); see the module docstring."""
    splits, names, how = _load_files(cfg) if cfg.train_file is not None else _load_source(cfg)
    return TextClsData(name=cfg.dataset, splits=splits, label_names=names), how


def check_classification_head(model: str, num_labels: int, keep_head: bool) -> str | None:
    """A notice when the checkpoint ``model`` has a classification head of another size than ``num_labels`` (it
    is then re-initialised), None when it has none or the same size. Reads ``config.json`` only.

    Raises:
        HeadMismatchError: the sizes differ and ``keep_head`` asks to keep the head.
    """
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(model)
    except (OSError, ValueError):
        return None  # build_model names a missing checkpoint
    has_head = any(str(a).endswith("ForSequenceClassification") for a in (config.architectures or []))
    if not has_head or config.num_labels == num_labels:
        return None
    if keep_head:
        raise HeadMismatchError(f"--model {model} has a {config.num_labels}-label classification head but the data has "
                                f"{num_labels} labels; drop --keep-head to re-initialise the head")
    return (f"--model {model} has a {config.num_labels}-label classification head; it is re-initialised for the "
            f"{num_labels} labels of the data (--keep-head refuses instead)")


def named_anomaly_sets(named: Sequence[str], own: dict[str, list[str]], own_data: bool, data_dir: str | os.PathLike | None
                       ) -> tuple[dict[str, list[str]], list[str]]:
    """``({name: every text}, skipped)``: the anomaly sets of a run, in the order their seeds follow.

    A named in-distribution set: its ``named`` anomaly sets (:func:`oe_text.textcls.textcls_experiment.ood_set_names`, each
    required), then the ``--ood-file`` sets ``own``. Own data: ``own`` first, then the named sets whose files are in
    the data directory; the others are ``skipped`` (results.md says so). A file named like a named set replaces it."""
    sets: dict[str, list[str]] = dict(own) if own_data else {}
    skipped = []
    for name in named:
        if name in own:
            continue
        try:
            sets[name] = list(load_ood_texts(name, data_dir)["text"])
        except MissingDataError:
            if not own_data:
                raise
            skipped.append(name)
    return {**sets, **own}, skipped


def own_data_notes(sources: Mapping[str, Any]) -> list[str]:
    """results.md lines on where the data came from: how validation was made, named anomaly sets left out, the
    head of ``--model``, the time spent reading and checking the data."""
    lines = []
    if sources.get("validation"):
        lines.append(f"Validation texts: {sources['validation']}.")
    if sources.get("anomaly_sets_skipped"):
        lines.append("Evaluated only on the anomaly sets given and found: the named sets "
                     f"{', '.join(sources['anomaly_sets_skipped'])} have no files in the data directory and were not used.")
    if sources.get("head_notice"):
        lines.append(f"Model: {sources['head_notice']}.")
    if sources.get("data_seconds") is not None:
        lines.append(f"Reading and checking the data took {sources['data_seconds']:.0f} s (before the total above).")
    return ["", *lines] if lines else []
