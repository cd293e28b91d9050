"""User-facing errors: each carries a message that says what is wrong and what was expected.

The CLI prints these without a traceback and the plugin shows them as notifications, so the
message must stand on its own.
"""


class AutofocusError(Exception):
    """Base class for errors caused by the user's input rather than by a bug."""


class NiftiError(AutofocusError):
    """A file that should be a NIfTI image could not be read or written."""


class CheckpointError(AutofocusError):
    """A model file is corrupt, of an unknown layout, or does not match the requested network."""


class DatasetError(AutofocusError):
    """A training/evaluation dataset folder is malformed."""


def describe_os_error(exc: OSError) -> str:
    """'run/model.safetensors: No space left on device (the disk is full: ...)' from any OSError."""
    import errno

    where = exc.filename if exc.filename is not None else None
    reason = exc.strerror or str(exc)
    hint = {
        errno.ENOSPC: " (the disk is full: free space or choose another folder)",
        errno.EACCES: " (permission denied: choose a folder you can write to)",
        errno.EROFS: " (read-only file system: choose another folder)",
    }.get(exc.errno or 0, "")
    return f"{where}: {reason}{hint}" if where else f"{reason}{hint}"
