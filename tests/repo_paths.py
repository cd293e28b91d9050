"""Where the tests find the repository and the reference files beside it (any test folder depth)."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO.parent / "shared" / "reference"
GOLDEN = REFERENCE / "golden"
