"""Wrong data stops the run with one line naming the file (issue 14, items 1 and 2).

The checksum cache is pinned down on small files; the corruption cases run on copies of the real data folder
(symlinks to $OE_DATA_DIR with one file replaced), so every test here fails on a loader that reads what it is
given without checking it.
"""

from __future__ import annotations

import gzip
import os
import time
from pathlib import Path

import pytest

from oe_common.experiments import data_integrity as I
from oe_common.experiments.data_dir import DataError, MissingDataError
from oe_common.experiments.data_integrity import DataIntegrityError
from oe_text.lm import data as T

TEXT_DIRS = ("ptb", "wikitext-2", "ewt")


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    """Every test gets an empty checksum cache of its own, and the data checks on."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv(I.SKIP_ENV, raising=False)


def _hash_calls(monkeypatch) -> list[Path]:
    calls: list[Path] = []
    real = I.sha256_file

    def counting(path):
        calls.append(Path(path))
        return real(path)

    monkeypatch.setattr(I, "sha256_file", counting)
    return calls


def _old(path: Path) -> Path:
    """Set the file's mtime 10 s back: digests of files modified in the last 2 s are not cached (racy writes)."""
    t = time.time() - 10
    os.utime(path, (t, t))
    return path


def _sums_folder(tmp_path: Path) -> tuple[Path, Path]:
    import hashlib

    root = tmp_path / "data"
    (root / "c").mkdir(parents=True)
    f = root / "c" / "a.txt"
    f.write_text("hello\n")
    _old(f)
    digest = hashlib.sha256(b"hello\n").hexdigest()
    (root / "SHA256SUMS").write_text(f"{digest}  c/a.txt\n")
    return root, f


# ================================================================================================ checksums
def test_checksum_verified_cached_per_file_change_and_kept_out_of_the_data_folder(tmp_path, monkeypatch):
    root, f = _sums_folder(tmp_path)
    calls = _hash_calls(monkeypatch)
    I.verify_checksums([f])
    assert calls == [f.resolve()]
    I.verify_checksums([f])
    assert len(calls) == 1  # same path, size and mtime_ns: from the cache file
    assert I.cache_file() == tmp_path / "cache" / "oe" / "sha256.json" and I.cache_file().is_file()
    assert sorted(p.name for p in root.rglob("*")) == ["SHA256SUMS", "a.txt", "c"]  # nothing written beside the data

    f.write_text("hellO\n")  # same size, new mtime: hashed again, and wrong
    _old(f)
    with pytest.raises(DataIntegrityError) as err:
        I.verify_checksums([f])
    assert len(calls) == 2
    msg = str(err.value)
    assert "\n" not in msg and str(f) in msg and "SHA256SUMS" in msg and "sha256sum -c" in msg and I.SKIP_ENV in msg
    assert isinstance(err.value, DataError) and isinstance(err.value, ValueError)

    monkeypatch.setenv(I.SKIP_ENV, "1")  # the opt-out
    I.verify_checksums([f])


def test_checksum_unlisted_files_are_not_failed_and_fresh_files_not_cached(tmp_path, monkeypatch):
    root, f = _sums_folder(tmp_path)
    own = root / "c" / "mine.txt"  # a user's own corpus beside the listed ones
    own.write_text("anything")
    calls = _hash_calls(monkeypatch)
    I.verify_checksums([own, tmp_path / "elsewhere.txt"])
    assert calls == []
    f.write_text("hello\n")  # modified just now: its digest is checked but not cached
    I.verify_checksums([f])
    I.verify_checksums([f])
    assert len(calls) == 2


def test_checksum_cache_unwritable_only_costs_rehashing(tmp_path, monkeypatch):
    root, f = _sums_folder(tmp_path)
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))  # <file>/oe cannot be created
    I.verify_checksums([f])  # no error
    assert not (blocker / "oe").exists()


def test_sha256sums_malformed_line_names_the_list(tmp_path):
    root, f = _sums_folder(tmp_path)
    (root / "SHA256SUMS").write_text("not a checksum line\n")
    with pytest.raises(DataIntegrityError, match=r"SHA256SUMS:1: not a sha256sum line"):
        I.verify_checksums([f])


def test_check_counts_and_opt_out(tmp_path, monkeypatch):
    I.check_counts("x", {"lines": 3}, None)  # not a known corpus
    I.check_counts("x", {"lines": 3, "tokens": 9}, {"lines": 3})
    with pytest.raises(DataIntegrityError, match=r"^x: read 1 lines where this corpus has 42,068 .*OE_SKIP_DATA_CHECKS=1"):
        I.check_counts("x", {"lines": 1}, {"lines": 42_068})
    monkeypatch.setenv(I.SKIP_ENV, "yes")
    I.check_counts("x", {"lines": 1}, {"lines": 42_068})


# ================================================================================================ real corpora
def _mirror(data_dir: Path, dst: Path, subdirs=TEXT_DIRS, sums: bool = True) -> Path:
    """``dst`` with symlinks to the files of ``subdirs`` of the real data folder (and its SHA256SUMS)."""
    for sub in subdirs:
        (dst / sub).mkdir(parents=True)
        for f in (data_dir / sub).iterdir():
            (dst / sub / f.name).symlink_to(f)
    if sums:
        (dst / I.CHECKSUM_FILE).symlink_to(data_dir / I.CHECKSUM_FILE)
    return dst


def _replace(path: Path, content: bytes) -> Path:
    path.unlink()
    path.write_bytes(content)
    return _old(path)


def _one_line(err: pytest.ExceptionInfo, name: str) -> str:
    msg = str(err.value)
    assert "\n" not in msg and name in msg, msg
    return msg


@pytest.mark.parametrize("sums", [True, False], ids=["with-SHA256SUMS", "without"])
def test_ptb_train_of_nul_bytes_stops_the_load(data_dir, tmp_path, sums):
    root = _mirror(data_dir, tmp_path / "data", ("ptb",), sums)
    _replace(root / "ptb" / "ptb.train.txt", b"\0" * 300_000)
    with pytest.raises(DataIntegrityError) as err:
        T.ptb_vocab("word", root)  # before: a 3-token vocabulary
    msg = _one_line(err, "ptb.train.txt")
    assert ("SHA-256" in msg) == sums
    if not sums:
        assert "read 1 lines, 2 tokens, 2 vocabulary where this corpus has 42,068, 929,589, 10,000" in msg


@pytest.mark.parametrize("sums", [True, False], ids=["with-SHA256SUMS", "without"])
def test_ptb_train_truncated_to_200kb_stops_the_load(data_dir, tmp_path, sums):
    root = _mirror(data_dir, tmp_path / "data", ("ptb",), sums)
    _replace(root / "ptb" / "ptb.train.txt", (data_dir / "ptb" / "ptb.train.txt").read_bytes()[:200_000])
    with pytest.raises(DataIntegrityError) as err:
        T.ptb_stream("train", "word", root)  # before: 4% of the corpus, no warning
    msg = _one_line(err, "ptb.train.txt")
    assert ("SHA-256" in msg) == sums and (sums or "42,068" in msg)


def test_unlisted_gz_twin_beside_a_checksum_list_is_checked_by_counts(data_dir, tmp_path):
    root = _mirror(data_dir, tmp_path / "data", ("ptb",))
    (root / "ptb" / "ptb.train.txt").unlink()
    gz = root / "ptb" / "ptb.train.txt.gz"  # the loaders accept the gzipped twin; SHA256SUMS does not list it
    gz.write_bytes(gzip.compress((data_dir / "ptb" / "ptb.train.txt").read_bytes()[:200_000]))
    with pytest.raises(DataIntegrityError) as err:
        T.ptb_stream("train", "word", root)
    assert "where this corpus has 42,068, 929,589, 10,000" in _one_line(err, "ptb.train.txt.gz")


def test_opt_out_reads_a_changed_corpus(data_dir, tmp_path, monkeypatch):
    root = _mirror(data_dir, tmp_path / "data", ("ptb",))
    _replace(root / "ptb" / "ptb.valid.txt", b" a b c \n d e \n")
    monkeypatch.setenv(I.SKIP_ENV, "1")
    assert T.ptb_stream("valid", "word", root).size == 7


@pytest.mark.parametrize("skip", [False, True], ids=["checked", "OE_SKIP_DATA_CHECKS"])
def test_non_utf8_ptb_test_file_names_the_file(data_dir, tmp_path, monkeypatch, skip):
    root = _mirror(data_dir, tmp_path / "data", ("ptb",))
    good = (data_dir / "ptb" / "ptb.test.txt").read_bytes()
    _replace(root / "ptb" / "ptb.test.txt", good[:1000] + "é".encode("latin-1") + good[1001:])
    if skip:  # checksum and counts off: the decoding error itself must still name the file
        monkeypatch.setenv(I.SKIP_ENV, "1")
    with pytest.raises(DataIntegrityError) as err:
        T.ptb_stream("test", "word", root)
    msg = _one_line(err, "ptb.test.txt")
    assert ("not UTF-8" in msg) == skip and ("byte 0xe9" in msg) == skip


@pytest.mark.parametrize("skip", [False, True], ids=["checked", "OE_SKIP_DATA_CHECKS"])
def test_truncated_wikitext_gz_names_the_file(data_dir, tmp_path, monkeypatch, skip):
    root = _mirror(data_dir, tmp_path / "data", ("ptb", "wikitext-2"))
    gz = (data_dir / "wikitext-2" / "wiki.train.tokens.gz").read_bytes()
    _replace(root / "wikitext-2" / "wiki.train.tokens.gz", gz[: len(gz) // 2])
    if skip:
        monkeypatch.setenv(I.SKIP_ENV, "1")
    with pytest.raises(DataIntegrityError) as err:
        T.wikitext_stream("train", "word", root)
    msg = _one_line(err, "wiki.train.tokens.gz")
    assert ("truncated or corrupt" in msg) == skip


def test_truncated_ewt_and_gz_twin_checked_by_counts(data_dir, tmp_path):
    """An EWT file cut at a sentence boundary and re-gzipped (not listed in SHA256SUMS): the sentence count stops it."""
    root = _mirror(data_dir, tmp_path / "data", ("ewt",), sums=False)
    text = (data_dir / "ewt" / "en_ewt-ud-dev.conllu").read_text(encoding="utf-8")
    (root / "ewt" / "en_ewt-ud-dev.conllu").unlink()
    with gzip.open(root / "ewt" / "en_ewt-ud-dev.conllu.gz", "wt", encoding="utf-8") as f:
        f.write(text[: text.index("\n\n", len(text) // 2) + 2])
    with pytest.raises(DataIntegrityError) as err:
        T.ewt_sentences("clean", root, map_oov=False)
    assert "where this corpus has 2,001" in _one_line(err, "en_ewt-ud-dev.conllu.gz")


def test_real_text_corpora_pass_and_are_hashed_once(data_dir, monkeypatch):
    """The shared folder passes every check; a second load (a new process: caches emptied) hashes nothing."""
    calls = _hash_calls(monkeypatch)
    T.clear_cache()
    T.ptb_vocab("word", data_dir)
    T.wikitext_stream("valid", "word", data_dir)
    assert {p.name for p in calls} == {"ptb.train.txt", "ptb.valid.txt", "ptb.test.txt", "wiki.train.tokens.gz",
                                       "wiki.valid.tokens", "wiki.test.tokens"}
    n = len(calls)
    T.clear_cache()
    T.ptb_vocab("word", data_dir)
    T.wikitext_stream("valid", "word", data_dir)
    assert len(calls) == n
    T.clear_cache()


# ================================================================================================ vision
def test_truncated_mnist_gz_and_short_idx_name_the_file(data_dir, tmp_path, monkeypatch):
    from oe_vision import data as V

    root = _mirror(data_dir, tmp_path / "data", ("mnist",), sums=False)
    gz = (data_dir / "mnist" / "t10k-labels-idx1-ubyte.gz").read_bytes()
    _replace(root / "mnist" / "t10k-labels-idx1-ubyte.gz", gz[: len(gz) // 2])
    with pytest.raises(DataIntegrityError) as err:
        V.load_idx_corpus("mnist", "test", root)
    assert "truncated or corrupt" in _one_line(err, "t10k-labels-idx1-ubyte.gz")
    # a well-formed IDX pair of 100 images under the name of the 10,000-image test set: the count stops it
    raw_i = gzip.open(data_dir / "mnist" / "t10k-images-idx3-ubyte.gz").read()
    raw_l = gzip.open(data_dir / "mnist" / "t10k-labels-idx1-ubyte.gz").read()
    n = (100).to_bytes(4, "big")
    _replace(root / "mnist" / "t10k-images-idx3-ubyte.gz", gzip.compress(raw_i[:4] + n + raw_i[8:16] + raw_i[16 : 16 + 78_400]))
    _replace(root / "mnist" / "t10k-labels-idx1-ubyte.gz", gzip.compress(raw_l[:4] + n + raw_l[8:108]))
    with pytest.raises(DataIntegrityError) as err:
        V.load_idx_corpus("mnist", "test", root)
    assert "read 100 images where this corpus has 10,000" in _one_line(err, "t10k-images-idx3-ubyte.gz")
    monkeypatch.setenv(I.SKIP_ENV, "1")
    assert len(V.load_idx_corpus("mnist", "test", root)) == 100


def test_vision_checksum_mismatch(data_dir, tmp_path):
    from oe_vision import data as V

    root = _mirror(data_dir, tmp_path / "data", ("notmnist",))
    gz = (data_dir / "notmnist" / "t10k-labels-idx1-ubyte.gz").read_bytes()
    raw = bytearray(gzip.decompress(gz))
    raw[8] = (raw[8] + 1) % 10  # one label changed: a valid file of the right size
    _replace(root / "notmnist" / "t10k-labels-idx1-ubyte.gz", gzip.compress(bytes(raw)))
    with pytest.raises(DataIntegrityError) as err:
        V.load_idx_corpus("notmnist", "test", root)
    assert "SHA-256" in _one_line(err, "t10k-labels-idx1-ubyte.gz")


# ================================================================================================ recipes
def test_text_recipe_prints_a_data_error_as_one_line_and_exits_1(data_dir, tmp_path, capsys):
    from oe_text.lm.recipe_cli import main

    root = _mirror(data_dir, tmp_path / "data", TEXT_DIRS)
    good = (data_dir / "ptb" / "ptb.test.txt").read_bytes()
    _replace(root / "ptb" / "ptb.test.txt", good[:1000] + b"\xff" + good[1001:])
    with pytest.raises(SystemExit) as exit_info:
        main("word", ["--preset", "test", "--data-dir", str(root), "--output-dir", str(tmp_path / "run")])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and ": error: " in err and "ptb.test.txt" in err


def test_vision_recipe_prints_a_missing_corpus_as_one_line_and_exits_1(tmp_path, capsys):
    from oe_vision.recipe_cli import main

    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        main("mnist", ["--preset", "test", "--data-dir", str(tmp_path / "empty"), "--output-dir", str(tmp_path / "run")])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "train-images-idx3-ubyte.gz" in err
    assert issubclass(MissingDataError, DataError)
