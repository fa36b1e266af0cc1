"""Shared fixtures. Tests that read real corpora need ``$OE_DATA_DIR`` (CI sets it to ../shared/data)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]

# Subprocesses started by tests (multi-process runs, recipes) may use another working directory.
if os.environ.get("OE_DATA_DIR"):
    os.environ["OE_DATA_DIR"] = str(Path(os.environ["OE_DATA_DIR"]).resolve())


@pytest.fixture
def sleeping_recipe(tmp_path) -> tuple[Path, dict[str, str]]:
    """``(script, env)``: a recipe that opens its run folder (``argv[1]``) under ``recipe_guard``, starts stage ``oe``,
    prints ``ready`` and sleeps, for the interruption tests; ``env`` puts this checkout first on ``PYTHONPATH``."""
    import textwrap

    script = tmp_path / "fake_recipe.py"
    script.write_text(textwrap.dedent("""
        import sys, time
        from oe_common.experiments.recipe_guard import recipe_guard
        from oe_common.experiments.run_folder import RunFolder
        with recipe_guard("fake_recipe.py", sys.argv[1]):
            RunFolder.open(sys.argv[1], {}).start_stage("oe")
            print("ready", flush=True)
            time.sleep(120)
    """))
    return script, {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}


@pytest.fixture(scope="session")
def repo_script():
    """``repo_script("tools/rescore_textcls_run.py")``: a repository script that is not in a package (``tools/``,
    ``bench/``) loaded as a module, by its path from the repository root."""
    import importlib.util

    def load(relative_path: str):
        path = REPO_ROOT / relative_path
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real data directory. Fails (never skips silently) when it is not configured."""
    value = os.environ.get("OE_DATA_DIR")
    if not value or not Path(value).is_dir():
        pytest.fail("OE_DATA_DIR must point at the shared corpora (e.g. export OE_DATA_DIR=../shared/data)")
    return Path(value)


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """No test may reach the network: the Hub is switched off for every test."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    # the libraries read these variables once, at import: an already imported one gets its flag set here (else an
    # unknown `load_dataset` id waits through the Hub client's retries, ~20 s, before failing)
    for module in ("datasets.config", "huggingface_hub.constants"):
        if module in sys.modules:
            monkeypatch.setattr(sys.modules[module], "HF_HUB_OFFLINE", True)


@pytest.fixture(autouse=True, scope="module")
def _torch_threads(request):
    """Sets torch's intra-op threads to the module's ``TORCH_THREADS`` (if it defines one) for its tests, then restores.

    Modules of tiny models set 1: on the shared 2-core CI machine, OpenMP threads only add waiting (measured: the
    LSTM tests' 70 small sequential steps ran 15x slower with 2 threads than with 1). Autouse and module-scoped, so
    it is in place before any module-scoped fixture that trains a model.
    """
    threads = getattr(request.module, "TORCH_THREADS", None)
    if threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    yield
    torch.set_num_threads(before)


#: ``OE_TEST_BATCH_SIZE=N``: every OODDetector built without ``batch_size`` scores N inputs per forward pass (default:
#: the task's :data:`oe_common.deployment.detector.DEFAULT_BATCH_SIZE`). ``.ci/run`` runs the detector tests once more with a small
#: N (and one thread), so that a test that asserts bit equality across batch shapes fails in CI, not on a user's CPU.
BATCH_SIZE_ENV = "OE_TEST_BATCH_SIZE"


@pytest.fixture(autouse=True, scope="session")
def _detector_batch_size():
    value = os.environ.get(BATCH_SIZE_ENV)
    if not value:
        yield
        return
    from oe_common.deployment import detector

    saved = dict(detector.DEFAULT_BATCH_SIZE)
    detector.DEFAULT_BATCH_SIZE.update({task: int(value) for task in saved})
    yield
    detector.DEFAULT_BATCH_SIZE.update(saved)
