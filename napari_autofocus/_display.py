"""A virtual X display for headless screenshots, started only when there is no display."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess

from napari_autofocus.errors import AutofocusError


@contextlib.contextmanager
def display_available(size: tuple[int, int] = (1600, 1000)):
    """Yield with a usable ``DISPLAY``: the current one, or an Xvfb started (and stopped) here."""
    if os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
        yield os.environ.get("DISPLAY")
        return
    xvfb = shutil.which("Xvfb")
    if xvfb is None:
        raise AutofocusError(
            "there is no display and Xvfb is not installed; install it (Debian/Ubuntu: apt-get install xvfb) "
            "or run on a machine with a display"
        )
    read_fd, write_fd = os.pipe()
    process = subprocess.Popen(
        [xvfb, "-displayfd", str(write_fd), "-screen", "0", f"{size[0]}x{size[1]}x24", "-nolisten", "tcp"],
        pass_fds=(write_fd,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(write_fd)
    try:
        with os.fdopen(read_fd) as pipe:
            number = pipe.readline().strip()
        if not number:
            raise AutofocusError("Xvfb did not start (no display number reported)")
        os.environ["DISPLAY"] = f":{number}"
        os.environ.pop("QT_QPA_PLATFORM", None)  # offscreen cannot render napari's canvas
        yield os.environ["DISPLAY"]
    finally:
        os.environ.pop("DISPLAY", None)
        process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=5)
