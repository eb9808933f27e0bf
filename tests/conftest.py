"""Test-session settings: hal's measurement cache (the CPU's rates) goes to pytest's temporary folder, never to the
user's ~/.cache/hal, so a run neither reads a stale cache nor leaves one behind."""

import os

import pytest


@pytest.fixture(autouse=True, scope="session")
def hal_cache_dir(tmp_path_factory: pytest.TempPathFactory):
    before = os.environ.get("HAL_CACHE_DIR")
    os.environ["HAL_CACHE_DIR"] = str(tmp_path_factory.mktemp("hal-cache"))
    yield
    if before is None:
        os.environ.pop("HAL_CACHE_DIR", None)
    else:
        os.environ["HAL_CACHE_DIR"] = before
