"""Shared fixtures. Tests that read real corpora need ``$OE_DATA_DIR`` (CI sets it to ../shared/data)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

# Subprocesses started by tests (multi-process runs, recipes) may use another working directory.
if os.environ.get("OE_DATA_DIR"):
    os.environ["OE_DATA_DIR"] = str(Path(os.environ["OE_DATA_DIR"]).resolve())


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
