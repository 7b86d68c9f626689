import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Ground truth and other caches go to a per-test temporary directory, never the user's cache."""
    monkeypatch.setenv("DATATRACE_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="session")
def digits_copies():
    from testable_tasks import digits_with_copies

    return digits_with_copies()
