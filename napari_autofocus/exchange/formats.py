"""The exchange formats a model can be exported to, and what each needs installed.

One place for the CLI's ``export`` command and the plugin's Export model dialog: names, what gets
written, and a clear message naming ``pip install napari-autofocus[export]`` when a format's own
tools are missing (they are optional and never imported when the plugin starts).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from napari_autofocus.errors import AutofocusError

FORMATS = {
    "bioimageio": ("bioimage.io model package (.bioimageio.zip)", ("bioimageio.spec", "bioimageio.core")),
    "monai-bundle": ("MONAI bundle folder (_monai_bundle)", ("monai", "fire", "ignite")),
}


def missing_modules(fmt: str) -> list[str]:
    """Modules the format's tools need that are not installed (found without importing them)."""
    return [m for m in FORMATS[fmt][1] if not _found(m)]


def _found(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # the parent package is missing
        return False


def check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise AutofocusError(f"unknown export format {fmt!r}; expected one of {', '.join(FORMATS)}")
    missing = missing_modules(fmt)
    if missing:
        raise AutofocusError(
            f"the {fmt} export needs {', '.join(missing)}, which are not installed: "
            "pip install 'napari-autofocus[export]'"
        )


def output_path(fmt: str, out_dir: str | Path, name: str) -> Path:
    """Where an export of ``name`` in this format goes."""
    if fmt == "bioimageio":
        from napari_autofocus.exchange.bioimageio_package import package_path

        return package_path(out_dir, name)
    from napari_autofocus.exchange.monai_bundle import bundle_path

    return bundle_path(out_dir, name)


def export_model(
    fmt: str,
    model_path: str | Path,
    out_dir: str | Path,
    *,
    name: str | None = None,
    force: bool = False,
    **options,
) -> Path:
    """Export in ``fmt``; returns the package file or bundle folder written."""
    check_format(fmt)
    if fmt == "bioimageio":
        from napari_autofocus.exchange.bioimageio_package import export_bioimageio

        return export_bioimageio(model_path, out_dir, name=name, force=force, **options)
    from napari_autofocus.exchange.monai_bundle import export_monai_bundle

    options.pop("scan", None), options.pop("labels", None)  # a bundle carries no test tensors
    return export_monai_bundle(model_path, out_dir, name=name, force=force, **options)
