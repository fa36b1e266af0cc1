"""--outliers: any outlier corpus for the text-classifier recipe's OE stage (issue 21 item 2). Files (.txt, a .csv /
.jsonl column, .gz), dataset folders and Hub ids are STREAMED (datasets.IterableDataset, read lazily); WikiText-2
stays the default."""

from __future__ import annotations

import gzip
import json
import math
import types

import datasets
import pytest

from oe_common.experiments.data_dir import MissingDataError
from oe_common.training.outlier_stream import OutlierStream
from oe_common.experiments.table_files import MissingColumnError, TableFileError, stream_text_column
from oe_text.textcls import textcls_experiment as tx
from oe_text.textcls.textcls_outliers import load_outlier_corpus, outlier_source_kind

TORCH_THREADS = 1

TEXTS = [f"outlier text number {i}, with a comma" for i in range(40)]


def write_txt(path, texts=TEXTS):
    path.write_text("\n".join(t if i % 7 else t + "\n" for i, t in enumerate(texts)) + "\n")  # empty lines in between
    return path


def write_csv(path):
    rows = ['id,query,other'] + [f'{i},"{t}",x' for i, t in enumerate(TEXTS)]
    path.write_text("\n".join(rows) + "\n")
    return path


def write_jsonl_gz(path):
    with gzip.open(path, "wt") as f:
        for i, t in enumerate(TEXTS):
            f.write(json.dumps({"sentence": t, "n": i}) + "\n")
        f.write(json.dumps({"sentence": None, "n": -1}) + "\n")  # no text: skipped
    return path


@pytest.mark.parametrize("make, column", [(write_txt, "text"), (write_csv, "query"), (write_jsonl_gz, "sentence")],
                         ids=["txt", "csv_quoted_column", "jsonl_gz"])
def test_a_file_corpus_streams_its_texts_in_file_order(tmp_path, make, column):
    name = {"write_txt": "corpus.txt", "write_csv": "corpus.csv", "write_jsonl_gz": "corpus.jsonl.gz"}[make.__name__]
    stream = stream_text_column(make(tmp_path / name), column)
    assert isinstance(stream, datasets.IterableDataset)  # streamed, not materialised
    assert [row["text"] for row in stream] == TEXTS  # empty lines / missing texts skipped


def test_the_outlier_stream_of_a_file_is_seeded_and_covers_the_file(tmp_path):
    stream = stream_text_column(write_txt(tmp_path / "c.txt"))

    def texts(seed: int, n_batches: int) -> list[str]:
        s = OutlierStream(stream, batch_size=8, collate_fn=lambda rows: [r["text"] for r in rows], seed=seed, shuffle_buffer_size=16)
        return [t for _ in range(n_batches) for t in next(s)]

    first = texts(0, 5)  # one pass: 40 texts
    assert sorted(first) == sorted(TEXTS) and first != TEXTS  # shuffled within the buffer, every text once
    assert texts(0, 5) == first and texts(1, 5) != first  # seeded
    assert texts(0, 10)[40:] != first and sorted(texts(0, 10)[40:]) == sorted(TEXTS)  # the next pass: reshuffled


def test_a_streamed_file_is_read_lazily_never_whole(tmp_path):
    """A .txt file with bad bytes after its first MiB: reading it whole fails, while the stream (64 KiB chunks) gives
    its first texts; the outlier stream draws batches from it."""
    path = tmp_path / "big.txt"
    good = "".join(f"line {i} of a large corpus\n" for i in range(50_000)).encode()
    path.write_bytes(good + b"\xff\xfe not utf-8 \xff\n" * 10)
    assert len(good) > 2**20
    stream = stream_text_column(path, chunk_bytes=2**16)
    head = [row["text"] for _, row in zip(range(1000), stream)]
    assert head[:2] == ["line 0 of a large corpus", "line 1 of a large corpus"]
    batches = OutlierStream(stream, batch_size=100, collate_fn=len, seed=0, shuffle_buffer_size=100)
    assert [next(batches) for _ in range(5)] == [100] * 5
    with pytest.raises(Exception):  # noqa: B017 - whatever datasets raises for the undecodable tail
        list(stream)


def test_file_errors_name_the_file_and_the_columns(tmp_path):
    with pytest.raises(MissingColumnError, match=r"corpus\.csv has no column 'text'; its columns: 'id', 'query', 'other'"):
        stream_text_column(write_csv(tmp_path / "corpus.csv"))
    with pytest.raises(TableFileError, match="does not exist"):
        stream_text_column(tmp_path / "missing.txt")
    (tmp_path / "empty.txt.gz").write_bytes(gzip.compress(b""))
    with pytest.raises(TableFileError, match="empty"):
        stream_text_column(tmp_path / "empty.txt.gz")
    with pytest.raises(TableFileError, match="one text per line"):
        stream_text_column(write_txt(tmp_path / "c.txt"), "query")
    with pytest.raises(TableFileError, match="unknown file type"):
        stream_text_column(tmp_path / "c.parquet")


def test_corpus_kinds_folder_through_load_dataset_and_an_unreachable_hub_id(tmp_path, data_dir, monkeypatch):
    import huggingface_hub

    # datasets / huggingface_hub read HF_*_OFFLINE when imported (before conftest's _offline): no network try here
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    folder = tmp_path / "my_outliers"
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "train.jsonl").write_text("".join(json.dumps({"body": t}) + "\n" for t in TEXTS))
    assert [outlier_source_kind(s) for s in ("wikitext2", str(folder), str(tmp_path / "x.csv.gz"), "org/corpus")] == [
        "wikitext2", "folder", "file", "hub"]
    corpus = load_outlier_corpus(str(folder), text_column="body")  # the real datasets.load_dataset, streaming
    assert corpus.kind == "folder" and corpus.streamed and isinstance(corpus.texts, datasets.IterableDataset)
    assert [r["text"] for r in corpus.texts] == TEXTS
    with pytest.raises(MissingColumnError, match="no column 'text'; its columns: 'body'"):
        load_outlier_corpus(str(folder))
    with pytest.raises(MissingDataError, match="cannot stream the outlier dataset id 'no-such-org/no-such-corpus'") as err:
        load_outlier_corpus("no-such-org/no-such-corpus")  # the tests run offline
    assert "\n" not in str(err.value)
    wiki = load_outlier_corpus("wikitext2", data_dir, examples=50, seed=1)
    assert wiki.name == "wikitext2" and not wiki.streamed and len(wiki.texts) == 50


def test_the_oe_stage_trains_on_a_streamed_file_and_records_it(tmp_path):
    """make_trainer with a streamed corpus: max_steps = the steps of the stage's epochs (OETrainer needs it), the outlier
    batches come from the file; records say which corpus."""
    from transformers import BertTokenizer

    from oe_common.experiments.experiment import Stage
    from oe_text import GRUClassifierConfig, GRUForSequenceClassification

    words = sorted({w for t in TEXTS for w in t.replace(",", " ,").split()} | {"a", "b"})
    tok = BertTokenizer(vocab={w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words])})
    path = write_txt(tmp_path / "corpus.txt")
    cfg = tx.TextClsConfig(dataset="trec", model="gru", outliers=str(path), batch_size=4)
    assert tx.stage_outliers("oe", cfg) == str(path) and tx.stage_outliers("oe", tx.TextClsConfig()) == "wikitext2"
    corpus = load_outlier_corpus(cfg.outliers)
    outliers = corpus.texts.map(lambda b: tok(b["text"], truncation=True, max_length=16), batched=True, remove_columns=["text"])
    train = datasets.Dataset.from_dict({**tok(["a b", "b a b", "a", "b b"] * 3), "labels": [0, 1, 2, 0] * 3})
    exp = tx.TextClsExperiment(cfg)
    exp.data = types.SimpleNamespace(tokenizer=tok, train=train, outliers=outliers)
    model = GRUForSequenceClassification(GRUClassifierConfig(vocab_size=len(tok), embedding_size=4, hidden_size=4, num_labels=3))
    trainer = exp.make_trainer(Stage("oe", 1e-3, epochs=2.0, oe_lambda=1.0), model, tmp_path)
    assert trainer.args.max_steps == math.ceil(2.0 * math.ceil(12 / 4)) == 6
    trainer.train()
    assert trainer.state.global_step == 6 and trainer.outlier_stream.examples_drawn == 24
    assert corpus.describe("text", "train", None) == {"name": str(path), "kind": "file", "streamed": True, "text_column": "text"}
    with pytest.raises(ValueError, match="missing.csv.gz is not a file"):  # checked with the flags, before any output
        tx.TextClsConfig(outliers=str(tmp_path / "missing.csv.gz"))
    with pytest.raises(ValueError, match="extra_outliers .* needs outliers 'wikitext2'"):
        tx.TextClsConfig(dataset="clinc150", outliers=str(path), extra_outliers="clinc150_oos_train")


def test_recipe_flags_for_outliers_padding_and_grouping():
    from oe_text.textcls.textcls_recipe import build_parser

    parsed = build_parser().parse_args(["--outliers", "traffic.csv.gz", "--outlier-text-column", "query", "--outlier-split",
                                        "validation", "--outlier-config", "raw", "--padding", "max_length", "--group-by-length"])
    assert (parsed.outliers, parsed.outlier_text_column, parsed.outlier_split, parsed.outlier_config) == (
        "traffic.csv.gz", "query", "validation", "raw")
    assert parsed.padding == "max_length" and parsed.group_by_length is True
