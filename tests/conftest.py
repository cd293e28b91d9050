"""Test setup: napari settings go to a temporary file so a user's own settings are never touched."""

import os
import shutil
import tempfile
from pathlib import Path

import pytest

# before napari is imported (here, at collection), so it is a folder made now and removed at the end
_SETTINGS_DIR = Path(tempfile.mkdtemp(prefix="napari-autofocus-tests-"))
os.environ["NAPARI_CONFIG"] = str(_SETTINGS_DIR / "settings.yaml")
os.environ.pop("QT_QPA_PLATFORM", None)  # Xvfb + xcb renders; offscreen cannot draw image layers

from repo_paths import GOLDEN  # noqa: E402


def pytest_unconfigure(config):
    shutil.rmtree(_SETTINGS_DIR, ignore_errors=True)


@pytest.fixture
def golden() -> Path:
    """The authors' checkpoints and test vectors (``shared/reference/golden`` beside the repo).

    Missing on a developer's clone: the equivalence tests are skipped and ``-ra`` says why. Missing
    in CI (``CI`` set): they fail, so a broken checkout never passes as green."""
    if GOLDEN.is_dir():
        return GOLDEN
    message = f"reference golden files not found at {GOLDEN} (shared/ sits beside the repo)"
    if os.environ.get("CI"):
        pytest.fail(f"CI is set but {message}")
    pytest.skip(message)


# Shared widget-test fixtures (tiny model files, captured notifications, a private config dir).
from widget_helpers import model_file, notes, private_config  # noqa: E402, F401
