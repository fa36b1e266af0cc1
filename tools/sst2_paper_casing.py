"""Diagnostic: the SST-2 text-classifier recipe with the casing of the OE paper's released code emulated.

The paper's ``NLP_classification/train_OE.py`` / ``eval_OOD_sst.py`` read SST cased (torchtext ``Field()``, a cased
10,000-word vocabulary) and lower-case every other text (``Field(lower=True)``: the WikiText-2 outliers and every
anomaly set) before looking it up in that vocabulary. So OE can learn "no capital letter" as the mark of an
outlier, and every test anomaly shows that mark. The data folder's SST-2 is GLUE's (lower-cased), so this tool puts
back the most common capital: each SST-2 text (train, validation, test) gets an upper-case first letter; WikiText-2
(outliers and the ``wikitext2_valid`` selection set) and every named anomaly set are lower-cased. Everything else is
the recipe (``recipes/textcls_oe.py``), with the arguments given here; pass ``--word-vocab-size 10000
--word-vocab-cased`` for the paper's cased word vocabulary.

This measures how much of the paper's SST number such a cue can give; it is not a detector anyone should deploy,
and it is not a recipe setting (docs/results/textcls.md, SST-2 section).

    OE_DATA_DIR=../shared/data python tools/sst2_paper_casing.py --dataset sst2 --model gru --preset full \\
        --train-split train_sentences --word-vocab-size 10000 --word-vocab-cased --baseline-lr 0.01 \\
        --baseline-epochs 5 --oe-lr 0.01 --oe-epochs 5 --batch-size 64 --output-dir runs/sst2_gru_paper_casing
"""

from __future__ import annotations

import contextlib
import sys
from unittest import mock
from typing import Any, Iterator, Sequence

import oe_text.textcls.textcls_experiment as textcls_experiment
from oe_text.textcls.textcls_outliers import OutlierCorpus
from oe_text.textcls.textcls_recipe import main as recipe_main


def capitalise_first_letter(text: str) -> str:
    """``text`` with its first character upper-cased (``"it 's fun ."`` -> ``"It 's fun ."``)."""
    return text[:1].upper() + text[1:]


def _map_text(dataset: Any, fn: Any) -> Any:
    return dataset.map(lambda batch: {"text": [fn(t) for t in batch["text"]]}, batched=True)


@contextlib.contextmanager
def paper_casing() -> Iterator[None]:
    """While open, the recipe's readers give SST-2 texts a capital first letter and lower-case every other text
    (outliers, the selection set, the anomaly sets); they are restored on exit."""

    def load_textcls(name: str, *args: Any, **kwargs: Any) -> Any:
        if name != "sst2":
            raise ValueError(f"the paper's casing is emulated for SST-2 only: --dataset must be sst2, got {name!r}")
        data = originals["load_textcls"](name, *args, **kwargs)
        for split in list(data.splits):
            data.splits[split] = _map_text(data.splits[split], capitalise_first_letter)
        return data

    def named_anomaly_sets(*args: Any, **kwargs: Any) -> Any:
        whole, skipped = originals["named_anomaly_sets"](*args, **kwargs)
        return {name: [t.lower() for t in texts] for name, texts in whole.items()}, skipped

    def load_outlier_corpus(*args: Any, **kwargs: Any) -> OutlierCorpus:
        corpus = originals["load_outlier_corpus"](*args, **kwargs)
        return OutlierCorpus(corpus.name, corpus.kind, _map_text(corpus.texts, str.lower))

    def wikitext_sentences(*args: Any, **kwargs: Any) -> Any:
        return _map_text(originals["wikitext_sentences"](*args, **kwargs), str.lower)

    replacements = {"load_textcls": load_textcls, "named_anomaly_sets": named_anomaly_sets,
                    "load_outlier_corpus": load_outlier_corpus, "wikitext_sentences": wikitext_sentences}
    originals = {name: getattr(textcls_experiment, name) for name in replacements}  # the wrappers call these
    with mock.patch.multiple(textcls_experiment, **replacements):
        yield


def main(argv: Sequence[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--dataset=sst2" not in argv and not any(a == "--dataset" and b == "sst2" for a, b in zip(argv, argv[1:])):
        print("sst2_paper_casing.py: error: give --dataset sst2 (the tool emulates the paper's SST-2 casing only)", file=sys.stderr)
        sys.exit(2)
    with paper_casing():
        return recipe_main(argv)


if __name__ == "__main__":
    main()
