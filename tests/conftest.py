import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared data folder: $DROPBENCH_DATA (CI sets ../shared/data), else ../shared/data."""
    path = Path(os.environ.get("DROPBENCH_DATA", REPO.parent / "shared" / "data")).resolve()
    if not (path / "ptb").is_dir():
        pytest.fail(f"data folder {path} not found; set DROPBENCH_DATA=../shared/data")
    return path


@pytest.fixture(scope="session")
def registry():
    from dropbench.variants import load_registry
    return load_registry()
