"""Test setup: napari settings go to a temporary file so a user's own settings are never touched."""

import os
import tempfile
from pathlib import Path

_SETTINGS_DIR = Path(tempfile.mkdtemp(prefix="napari-autofocus-tests-"))
os.environ["NAPARI_CONFIG"] = str(_SETTINGS_DIR / "settings.yaml")
os.environ.pop("QT_QPA_PLATFORM", None)  # Xvfb + xcb renders; offscreen cannot draw image layers

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO.parent / "shared" / "reference"

# Shared widget-test fixtures (tiny model files, captured notifications, a private config dir).
from widget_helpers import model_file, notes, private_config  # noqa: E402, F401
