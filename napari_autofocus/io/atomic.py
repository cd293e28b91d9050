"""Write files so that readers see either the old file or the complete new one, never half of it.

Every file this project writes (model files, checkpoints, NIfTI outputs, logs, caches) goes through
:func:`atomic_path`: the content is written to a hidden temporary file in the target's folder, then
renamed over the target. Temporary files are created owner-only (``mkstemp``); when published
they get the permissions any new file of the user would get (``0o666`` minus the umask), so a
model file or a prediction can be shared like any other file.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _read_umask() -> int:
    """The process umask, read without changing it where the system allows (threads may be writing)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    umask = os.umask(0o022)  # no /proc: the classic read-by-setting, done once at import
    os.umask(umask)
    return umask


_UMASK = _read_umask()
FILE_MODE = 0o666 & ~_UMASK


def publish(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """Give a finished temporary file the normal permissions and rename it onto ``path``."""
    os.chmod(tmp, FILE_MODE)
    os.replace(tmp, path)


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp", fsync: bool = False) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; published onto ``path`` when the block ends.

    ``suffix`` lets writers that choose a format by extension (``.nii.gz``, ``.png``) see the
    right one. If the block raises, the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        if fsync:
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes(path: str | os.PathLike, data: bytes, fsync: bool = False) -> None:
    with atomic_path(path, fsync=fsync) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
