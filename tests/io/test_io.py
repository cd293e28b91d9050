"""Atomic writes with one permission policy, for every file the project writes."""

import os
import stat

import numpy as np
import pytest

from napari_autofocus.io.atomic import FILE_MODE, atomic_path, write_text


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_a_failed_write_leaves_the_old_file_and_no_temporary_file(tmp_path):
    target = tmp_path / "a.txt"
    write_text(target, "old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_model_files_nifti_checkpoints_and_logs_get_the_same_permissions(tmp_path):
    from napari_autofocus.io.nifti import geometry_from_layer, save_nifti
    from napari_autofocus.nets import build_network, save_model
    from src_training.checkpointing import save_checkpoint

    write_text(tmp_path / "log.txt", "x")
    save_model(build_network("BASIC", 1, 2, channels=(2,) * 8), tmp_path / "m.safetensors")
    geometry = geometry_from_layer((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (4, 4, 4))
    save_nifti(tmp_path / "v.nii.gz", np.zeros((4, 4, 4), np.float32), geometry)
    save_checkpoint(tmp_path / "c.pt", {"x": 1})
    modes = {p.name: _mode(p) for p in tmp_path.iterdir()}
    assert modes == dict.fromkeys(["log.txt", "m.safetensors", "v.nii.gz", "c.pt"], FILE_MODE)
    assert FILE_MODE & 0o600 == 0o600  # mkstemp's owner-only mode is not what is published
