"""The ``oe`` command line: score inputs with a detector or a fine-tuned classifier, evaluate it, build a post-hoc
detector, run the training recipes.

Details: docs/modules.md, section ``oe_common.deployment.cli``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import runpy
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

from ..experiments import files
from ..experiments.arg_types import positive_int
from .plugins import commands, recipes

__all__ = ["main", "build_parser", "CliError", "read_text_lines", "list_images", "atomic_write_text", "check_output_file",
           "check_output_outside_model", "CliUsageError", "STDIN"]


class CliError(Exception):
    """A user-facing error: printed as ``oe <command>: error: <message>``, exit code 1 (bad input, model or recipe)."""

    exit_code = 1


class CliUsageError(CliError):
    """A :class:`CliError` about how the command was called (a forbidden argument value, a column name that is not
    in the file): exit code 2, as argparse's."""

    exit_code = 2


# =============================================================================================== input / output
#: ``--input -``: read the examples from standard input.
STDIN = "-"
#: The files of an ``--input`` folder that an image detector scores (by suffix, case-insensitive).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def read_text_lines(path: str | os.PathLike) -> list[str]:
    """The examples of a text file, one per line (``\\n`` or ``\\r\\n``; a final newline adds no example).

    ``"-"`` reads standard input. The text is UTF-8; a leading byte-order mark (``\\ufeff``, written by some
    editors) is not part of the first example.

    Raises:
        CliError: the file does not exist / is a folder / is not UTF-8 / has no line.
    """
    if str(path) == STDIN:
        name = "standard input"
        try:
            text = sys.stdin.buffer.read().decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise CliError(f"{name} is not UTF-8 text ({exc})") from None
    else:
        path = Path(path)
        name = repr(str(path))
        if not path.exists():
            raise CliError(f"input file {name} does not exist")
        if path.is_dir():
            raise CliError(f"{name} is a folder; this is a text detector, give a file with one example per line")
        try:
            text = path.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError as exc:
            raise CliError(f"{name} is not UTF-8 text ({exc})") from None
        except OSError as exc:
            raise CliError(f"cannot read {name}: {exc}") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    lines = [line[:-1] if line.endswith("\r") else line for line in lines]
    if not lines:
        raise CliError(f"{name} is empty: give one example per line")
    return lines


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files (by suffix) directly in ``folder``, sorted by name; hidden files are skipped.

    Raises:
        CliError: the folder does not exist, is a file, or holds no image file.
    """
    folder = Path(folder)
    if not folder.exists():
        raise CliError(f"input folder {str(folder)!r} does not exist")
    if not folder.is_dir():
        raise CliError(f"{str(folder)!r} is a file; this is an image detector, give a FOLDER of image files")
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise CliError(f"{str(folder)!r} holds no image file ({', '.join(IMAGE_SUFFIXES)})")
    return files


def check_output_file(output: str | os.PathLike, inputs: Sequence[str | os.PathLike] = (), flag: str = "--output") -> None:
    """Fail early (before a long scoring run) when ``output`` cannot be written, or would replace an input.

    Checks: not a folder; its folder exists and a file can be created in it (a real probe: permission bits do
    not tell the whole story, e.g. read-only mounts); not the same file as any of ``inputs`` (``os.path.samefile``:
    other spellings, symlinks and hard links included).

    Raises:
        CliError: naming ``flag`` and the path.
    """
    out = Path(output)
    if out.is_dir():
        raise CliError(f"{flag} {str(output)!r} is a folder; give a file name")
    if not out.parent.is_dir():
        raise CliError(f"{flag} {str(output)!r}: its folder {str(out.parent)!r} does not exist")
    for source in inputs:
        if str(source) != STDIN and out.exists() and Path(source).exists() and os.path.samefile(out, source):
            raise CliError(f"{flag} {str(output)!r} is the input file {str(source)!r}: writing would replace the input; give another file name")
    try:
        fd, probe = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".probe")
    except OSError as exc:
        raise CliError(f"{flag} {str(output)!r}: cannot write to the folder {str(out.parent)!r} ({exc.strerror or exc})") from None
    os.close(fd)
    os.unlink(probe)


def _is_within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_output_outside_model(output: str | os.PathLike, model_folder: str | os.PathLike, flag: str = "--output") -> None:
    """Refuse an ``output`` file inside the detector folder being used (it would replace e.g. its tokenizer or config).

    ``output`` is inside when its path (folder resolved, and the file itself resolved through a symlink) lies under the
    resolved ``model_folder``, or when it is an existing hard link to a file there.

    Raises:
        CliUsageError: naming ``flag``, the path and the model folder (exit code 2).
    """
    folder = Path(os.path.realpath(model_folder))
    out = Path(output)
    spellings = {Path(os.path.realpath(out.parent)) / out.name, Path(os.path.realpath(out))}
    inside = any(_is_within(p, folder) for p in spellings)
    if not inside and out.is_file() and folder.is_dir():
        st = out.stat()
        inside = any(p.is_file() and (p.stat().st_ino, p.stat().st_dev) == (st.st_ino, st.st_dev) for p in folder.rglob("*"))
    if inside:
        raise CliUsageError(f"{flag} {str(output)!r} is inside the model folder {str(model_folder)!r}: writing there would change "
                            "the detector in use; give a path outside it")


def _check_outputs_outside_model(args: argparse.Namespace, detector=None) -> None:
    """:func:`check_output_outside_model` for the file flags of ``score`` / ``eval``: against ``--model`` when it is a
    local folder (before loading), and against the folder the detector was loaded from (a Hub id's cache snapshot)."""
    folders = [args.model] if detector is None else [getattr(detector, "checkpoint_folder", None)]
    for flag, output in (("--output", getattr(args, "output", None)), ("--json", getattr(args, "json", None))):
        for folder in folders:
            if output is not None and folder is not None and Path(folder).is_dir():
                check_output_outside_model(output, folder, flag)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """:func:`oe_common.experiments.files.atomic_write_text` with the command line's one-line errors (:class:`CliError`)."""
    path = Path(path)
    if path.is_dir():
        raise CliError(f"output {str(path)!r} is a folder; give a file name")
    if not path.parent.is_dir():
        raise CliError(f"output folder {str(path.parent)!r} does not exist")
    try:
        files.atomic_write_text(path, text)
    except OSError as exc:
        raise CliError(f"cannot write {str(path)!r}: {exc.strerror or exc}") from None


def _quiet_loading(args: argparse.Namespace) -> None:
    """With ``--no-progress`` also silence transformers' own progress bars ("Loading weights")."""
    if args.progress is False:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


def _load_detector(args: argparse.Namespace):
    """The detector of ``--model``: a detector folder, or a plain fine-tuned model folder / Hub id
    (:func:`oe_common.deployment.detector_io.load_detector`); the output files are checked to lie outside the folder it is
    read from, before and after loading (:func:`_check_outputs_outside_model`)."""
    from .detector_io import load_detector

    _check_outputs_outside_model(args)
    _quiet_loading(args)
    try:
        detector = load_detector(args.model, revision=args.revision, score=args.score, max_length=args.max_length,
                                 device=args.device, batch_size=args.batch_size, progress=args.progress)
    except (ValueError, RuntimeError, OSError) as exc:
        raise CliError(f"cannot load detector {args.model!r}: {exc}") from exc
    _check_outputs_outside_model(args, detector)
    return detector


def _read_inputs(detector, source: str) -> tuple[list[Any], list[str] | None]:
    """(inputs for ``detector.score``, file names for images / None for text)."""
    if detector.is_text:
        return read_text_lines(source), None
    if source == STDIN:
        raise CliError("this is an image detector: give a FOLDER of image files, not '-' (standard input)")
    files = list_images(source)
    return [str(p) for p in files], [p.name for p in files]


def _indices_as_lines(message: str) -> str:
    """``message`` with the 0-based input indices of the library's errors (``index 1, 4``) as the 1-based line
    numbers the command line reports (``line 2, 5``): one numbering per message."""
    return _INDEX_RE.sub(lambda m: "line " + ", ".join(str(int(i) + 1) for i in m.group(1).split(", ")), message)


_INDEX_RE = re.compile(r"\bindex (\d+(?:, \d+)*)")


def _score(detector, inputs: list[Any], source: str, names: list[str] | None, *, predict: bool = False):
    """``detector.score`` with input errors turned into messages naming lines (1-based) or files; with ``predict``
    ``(scores, (label ids, probabilities))`` from ``detector.score_and_predict`` (one pass), else the scores."""
    import numpy as np

    from .detector import DetectorInputError

    try:
        if predict:
            scores, *predictions = detector.score_and_predict(inputs)
        else:
            scores = detector.score(inputs)
    except DetectorInputError as exc:
        if names is None and exc.indices:
            where = ", ".join(str(i + 1) for i in exc.indices[:10]) + (" ..." if len(exc.indices) > 10 else "")
            raise CliError(f"{source}: bad input on line {where}: {_indices_as_lines(str(exc))}") from None
        if names is not None and exc.indices:
            raise CliError(f"{source}: bad image {names[exc.indices[0]]!r}: {exc}") from None
        raise CliError(f"{source}: {exc}") from None
    nan = np.flatnonzero(np.isnan(scores))
    if nan.size:  # NaN > threshold is False: it would be reported as normal (and NaN is not JSON)
        where = ", ".join(names[i] if names is not None else f"line {i + 1}" for i in nan[:10]) + (" ..." if nan.size > 10 else "")
        raise CliError(f"{source}: the model gave NaN scores ({where}); the checkpoint is unusable for these inputs")
    return (scores, tuple(predictions)) if predict else scores


# =============================================================================================== commands
def _cmd_score(args: argparse.Namespace) -> int:
    if args.output is not None:  # check the destination before the (possibly long) scoring
        check_output_file(args.output, [args.input], "--output")
    detector = _load_detector(args)
    if args.long_text is not None:
        if not detector.is_text:
            raise CliError("--long-text applies to text detectors only")
        if not hasattr(detector.preprocessing, "long_text"):  # a tokenizer detector: one row per text, truncated
            raise CliError(f"--long-text applies to vocabulary-based text detectors; this one ({detector.preprocessing.kind}) "
                           f"truncates every text at max_length={getattr(detector.preprocessing, 'max_length', '?')} tokens")
        detector.preprocessing.long_text = args.long_text
    inputs, names = _read_inputs(detector, args.input)
    classifier = detector.task != "causal-lm"
    scored = _score(detector, inputs, args.input, names, predict=classifier)
    scores, (label_ids, probabilities) = scored if classifier else (scored, (None, None))
    flags = detector.predict_from_scores(scores) if detector.threshold is not None else None
    if flags is None:
        print("oe score: warning: the detector has no threshold; is_anomaly is null (fit one with fit_threshold)", file=sys.stderr)
    id2label = getattr(getattr(detector.model, "config", None), "id2label", None) or {}
    lines = []
    for i, value in enumerate(scores):
        record: dict[str, Any] = {"index": i, "score": float(value), "is_anomaly": None if flags is None else bool(flags[i])}
        if names is not None:
            record["file"] = names[i]
        if label_ids is not None:  # what the classifier predicts: the label's name (config.id2label) and its probability
            record["label"] = str(id2label.get(int(label_ids[i]), int(label_ids[i])))
            record["label_probability"] = float(probabilities[i])
        lines.append(json.dumps(record))
    text = "\n".join(lines) + "\n"
    if args.output is None:
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        atomic_write_text(args.output, text)
    return 0


def _set_names(paths: Sequence[str]) -> list[str]:
    """Short unique names for the anomaly sets (file stems; the full path where stems collide)."""
    stems = [Path(p.rstrip("/")).stem or p for p in paths]
    return [s if stems.count(s) == 1 and s != "mean" else p for s, p in zip(stems, paths, strict=True)]


def _cmd_eval(args: argparse.Namespace) -> int:
    if [args.in_path, *args.out_paths].count(STDIN) > 1:
        raise CliError("standard input ('-') can be read only once: give it for one of --in / --out")
    if args.json is not None:
        check_output_file(args.json, [args.in_path, *args.out_paths], "--json")
    detector = _load_detector(args)
    in_inputs, in_names = _read_inputs(detector, args.in_path)
    out_inputs = {name: (src, *_read_inputs(detector, src)) for name, src in zip(_set_names(args.out_paths), args.out_paths, strict=True)}
    in_scores = _score(detector, in_inputs, args.in_path, in_names)
    out_scores = {name: _score(detector, inputs, src, names) for name, (src, inputs, names) in out_inputs.items()}
    try:
        table = detector.evaluate_scores(in_scores, out_scores, recall_level=args.recall_level, n_draws=args.n_draws,
                                         ratio=args.ratio, seed=args.seed, allow_small_sets=args.allow_small_sets, store=False)
    except ValueError as exc:
        raise CliError(str(exc).replace("allow_small_sets=True", "--allow-small-sets")) from None
    table.meta["model"] = str(args.model)
    print(table.to_markdown())
    if args.json is not None:
        atomic_write_text(args.json, table.to_json() + "\n")
    return 0


def _cmd_build_detector(args: argparse.Namespace) -> int:
    from .posthoc import OutputFolderError, build_detector
    from .preprocessing import DetectorCheckpointError
    from ..experiments.table_files import MissingColumnError, TableFileError

    _quiet_loading(args)
    try:
        detector = build_detector(
            args.model, args.output, revision=args.revision, score=args.score, train_file=args.train_file,
            text_column=args.text_column, label_column=args.label_column, validation_file=args.validation_file,
            target_fpr=args.target_fpr, max_length=args.max_length, device=args.device, batch_size=args.batch_size, progress=args.progress,
        )
    except MissingColumnError as exc:  # a wrong --text-column / --label-column: a usage error
        raise CliUsageError(f"{exc} (--text-column / --label-column)") from None
    except (TableFileError, DetectorCheckpointError, OutputFolderError) as exc:
        raise CliError(str(exc)) from None
    except (ValueError, RuntimeError, OSError) as exc:
        raise CliError(f"cannot build a detector from {args.model!r}: {exc}") from exc
    fitted = "mahalanobis statistics fitted" if detector.mahalanobis is not None else "no mahalanobis statistics (no --train-file)"
    threshold = (f"threshold {detector.threshold!r} ({100 * args.target_fpr:g}% of the validation texts flagged at most)"
                 if detector.threshold is not None else "no threshold (no --validation-file)")
    print(f"oe build-detector: wrote {args.output}: score {detector.score_name}, {threshold}, {fitted}", file=sys.stderr)
    return 0


def _recipe_entry(name: str) -> Callable[..., Any]:
    """The function of the registered recipe ``name``, imported (:mod:`oe_common.deployment.plugins`)."""
    recipe = recipes()[name]
    try:
        return recipe.load()
    except (ImportError, AttributeError) as exc:
        raise CliError(f"recipe {name!r}: cannot import {recipe.target} ({exc}); install the package that provides it") from None


def _exit_code(exc: SystemExit) -> int:
    """The process exit status ``exc`` stands for (Python's rules: None -> 0, a message -> 1 after printing it)."""
    if exc.code is None or isinstance(exc.code, int):
        return int(exc.code or 0)
    print(exc.code, file=sys.stderr)
    return 1


def _cmd_train(args: argparse.Namespace) -> int:
    if args.list or not args.recipe:
        if not args.recipe and not args.list:
            print("oe train: give a recipe name; available:", file=sys.stderr)
        for name, recipe in recipes().items():
            print(f"{name:22s} {recipe.describe()}", file=sys.stdout if args.list else sys.stderr)
        return 0 if args.list else 2
    # The recipe runs in this process: its own guards print one line and raise SystemExit (1 data error,
    # 2 usage, 130 Ctrl-C with the resume command); that status is ours.
    registered = recipes()
    if args.recipe in registered:
        entry = _recipe_entry(args.recipe)
        try:
            entry(argv=list(args.recipe_args))
        except SystemExit as exc:
            return _exit_code(exc)
        return 0
    if not args.recipe.endswith(".py"):
        raise CliError(f"unknown recipe {args.recipe!r}; choose one of {sorted(registered)} (or give a path to a .py script)")
    script = Path(args.recipe)
    if not script.is_file():
        raise CliError(f"recipe script {args.recipe!r} does not exist")
    saved_argv = sys.argv
    sys.argv = [str(script), *args.recipe_args]  # what the script sees when run as `python SCRIPT ARGS`
    try:
        runpy.run_path(str(script), run_name="__main__")
    except SystemExit as exc:
        return _exit_code(exc)
    finally:
        sys.argv = saved_argv
    return 0


# =============================================================================================== parser
def _add_model_args(p: argparse.ArgumentParser, model_help: str | None = None, score_help: str | None = None) -> None:
    p.add_argument("--model", required=True, help=model_help or (
        "detector folder written by OODDetector.save_pretrained (or oe build-detector), a plain fine-tuned "
        "AutoModelForSequenceClassification folder (config.json + safetensors + tokenizer files), or a Hub repo id of either"))
    p.add_argument("--score", default=None, help=score_help or (
        "anomaly score for a plain model folder: msp (default), max_logit, energy, uniform_xent; a detector folder keeps its own"))
    p.add_argument("--max-length", type=int, default=None,
                   help="plain model folder: tokens per text (default: the smaller of the tokenizer's and the model's limit)")
    p.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit) when --model is a repo id")
    p.add_argument("--batch-size", type=positive_int, default=None, help="windows (text) / images per forward pass (default: by task)")
    p.add_argument("--device", default=None, help="torch device, e.g. cpu, cuda, cuda:1 (default: cuda if available)")
    progress = p.add_mutually_exclusive_group()
    progress.add_argument("--progress", dest="progress", action="store_true", default=None, help="always show a progress bar")
    progress.add_argument("--no-progress", dest="progress", action="store_false", help="never show a progress bar")


class _OneLineErrorParser(argparse.ArgumentParser):
    """A usage error is ONE line, ``oe <command>: error: <message> (see ...--help)``, exit code 2 (argparse prints the
    whole usage synopsis first, several lines that bury the message). Subcommand parsers inherit the class."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineErrorParser(
        prog="oe",
        description="Outlier Exposure anomaly detectors: score inputs, evaluate detectors, build post-hoc detectors for "
        "fine-tuned classifiers, run training recipes.",
        epilog="Scores are 'higher = more anomalous'; anomalies are the positive class. See docs/detector.md.",
    )
    sub = parser.add_subparsers(dest="command")
    sub.required = True

    p = sub.add_parser(
        "score",
        help="score a text file (one example per line) or a folder of images; JSON lines out",
        description="Score every example and write JSON lines {\"index\", \"score\", \"is_anomaly\"} (+ \"file\" for images; "
        "+ \"label\", the classifier's predicted label name, and \"label_probability\", its softmax probability).",
    )
    _add_model_args(p)
    p.add_argument("--input", required=True, help="text file, one example per line, or - for standard input (text detectors); folder of images")
    p.add_argument("--output", default=None, help="JSONL file to write (default: stdout); written atomically")
    p.add_argument("--long-text", choices=("window", "truncate", "error"), default=None,
                   help="text longer than one window: score windows (token-weighted mean), the first window only, or fail")
    p.set_defaults(func=_cmd_score)

    p = sub.add_parser(
        "eval",
        help="detection metrics (FPR at N%% recall, AUROC, AUPR) of in-distribution vs anomaly inputs",
        description="Score in-distribution and anomaly inputs and print the evaluate_ood table (Markdown): all "
        "in-distribution examples against len(in) // ratio anomalies per set.",
    )
    _add_model_args(p)
    p.add_argument("--in", dest="in_path", required=True, help="in-distribution test inputs (file or folder)")
    p.add_argument("--out", dest="out_paths", required=True, nargs="+", help="one or more anomaly test sets (files or folders)")
    p.add_argument("--recall-level", type=float, default=None, help="recall for the FPR column (default 0.90 text, 0.95 images)")
    p.add_argument("--n-draws", type=int, default=1, help="anomaly draws to average (paper: 10 for vision)")
    p.add_argument("--ratio", type=int, default=5, help="in-distribution : anomaly base rate (default 5)")
    p.add_argument("--allow-small-sets", action="store_true",
                   help="use an anomaly set with fewer than len(in) // ratio inputs whole (labelled in the table) instead of stopping")
    p.add_argument("--seed", type=int, default=0, help="seed of the anomaly draws")
    p.add_argument("--json", default=None, help="also write the table as JSON to this file")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser(
        "build-detector",
        help="a detector folder for your own fine-tuned classifier, without training (Mahalanobis, threshold)",
        description="Wrap a fine-tuned AutoModelForSequenceClassification (folder or Hub id) as a detector folder: "
        "with --train-file fit the mahalanobis score's class means and covariance on its texts and labels; with "
        "--validation-file fit the threshold that flags at most --target-fpr of its texts. Data files: .csv "
        "(quoted fields), .tsv, .jsonl, each optionally .gz. Labels (names or class ids) are mapped through the "
        "model's config.json label2id. Nothing is written before every input has been checked.",
    )
    _add_model_args(p, "the fine-tuned model: a folder (config.json + safetensors weights + tokenizer files) or a Hub repo id",
                    "the detector's anomaly score: msp (default), max_logit, energy, uniform_xent, or mahalanobis (needs --train-file)")
    p.add_argument("--output", required=True, help="new (or empty) folder for the detector; not inside the model folder")
    p.add_argument("--train-file", default=None, help="labelled training texts: fit the mahalanobis score (.csv/.tsv/.jsonl[.gz])")
    p.add_argument("--validation-file", default=None, help="held-out in-distribution texts: fit the threshold (labels not needed)")
    p.add_argument("--text-column", default="text", help="column of the texts (default: text)")
    p.add_argument("--label-column", default="label", help="column of the labels in --train-file (default: label)")
    p.add_argument("--target-fpr", type=float, default=0.05,
                   help="the threshold flags at most this fraction of the validation texts (default 0.05)")
    p.set_defaults(func=_cmd_build_detector)

    p = sub.add_parser(
        "train",
        help="run a training recipe: oe train NAME [recipe args]",
        description="Run a recipe with the remaining arguments, e.g. `oe train ptb-word --preset tiny` (the same as "
        "`python recipes/ptb_word_oe.py --preset tiny`). `oe train NAME --help` shows the recipe's own options. Recipes: " + ", ".join(recipes()),
    )
    p.add_argument("--list", action="store_true", help="list the recipes and exit")
    p.add_argument("recipe", nargs="?", help="recipe name (see --list) or a path to a .py script")
    p.add_argument("recipe_args", nargs=argparse.REMAINDER, help="arguments passed to the recipe unchanged")
    p.set_defaults(func=_cmd_train)

    for name, command in commands().items():  # the packages' own subcommands (oe_common.deployment.plugins.register_command)
        p = sub.add_parser(name, help=command.help, description=command.description)
        command.add_arguments(p)
        p.set_defaults(func=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``oe`` console script; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as exc:  # --help (0) or a usage error (2)
        return int(exc.code or 0)
    try:
        return int(args.func(args))
    except CliError as exc:
        message = " ".join(str(exc).splitlines())  # one line, whatever a library put in the message
        print(f"oe {args.command}: error: {message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"oe {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
