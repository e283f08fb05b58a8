"""One real small build per test session (integration), shared by the suite tests."""

from __future__ import annotations

import time
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def small_suite(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, float]:
    """(folder, manifest, seconds) of ``build_suite(size="small", seed=0)`` on the installed packages."""
    from llm_embedder.data.suite import build_suite

    out = tmp_path_factory.mktemp("suite")
    start = time.perf_counter()
    manifest = build_suite(out, size="small", seed=0)
    return out, manifest, time.perf_counter() - start
