"""The npe2 manifest: every python_name imports, npe2 finds and validates the installed plugin."""

import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from repo_paths import REPO


def test_every_python_name_in_the_manifest_imports():
    manifest = yaml.safe_load((REPO / "napari.yaml").read_text())
    for command in manifest["contributions"]["commands"]:
        module_name, attribute = command["python_name"].split(":")
        module = importlib.import_module(module_name)
        assert callable(getattr(module, attribute)), command["python_name"]


def test_package_manifest_is_the_root_manifest():
    packaged = REPO / "napari_autofocus" / "napari.yaml"
    assert packaged.read_text() == (REPO / "napari.yaml").read_text()


def test_npe2_validates_the_installed_plugin_with_imports():
    npe2 = Path(sys.executable).parent / "npe2"
    result = subprocess.run(
        [str(npe2), "validate", "--imports", "napari-autofocus"], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "valid" in result.stdout


@pytest.mark.slow
def test_wheel_ships_manifest_sample_data_and_both_packages(tmp_path):
    import zipfile

    result = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path), str(REPO)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    [wheel] = tmp_path.glob("napari_autofocus-*.whl")
    assert wheel.stat().st_size < 30 * 2**20  # samples and bundled models included
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "napari_autofocus/napari.yaml" in names
    assert "napari_autofocus/sample_data/phantom/imagesTr/phantom_09000.nii.gz" in names
    assert "napari_autofocus/sample_data/brain/imagesTr/brain_09000.nii.gz" in names
    assert "napari_autofocus/sample_data/brain/NOTICE-MNI152.txt" in names  # the template's notice ships
    assert "src_training/cli.py" in names
    manifest = zipfile.ZipFile(wheel).read("napari_autofocus/napari.yaml").decode()
    assert manifest == (REPO / "napari.yaml").read_text()
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert (
        "napari-autofocus = napari_autofocus:napari.yaml"
        in zipfile.ZipFile(wheel).read(entry_points).decode()
    )


MENU_PATH = re.compile(r"`((?:File|Plugins|Layers|View|Window|Help) > [^`]+)`")


def _menu_text(text: str) -> str:
    return text.replace("&", "").rstrip(".…").strip()


def test_every_menu_path_in_the_readmes_exists_in_napari(make_napari_viewer):
    """`File > Open Sample > Autofocus > Brain`: each step names an item of napari's menus (an
    item may say more, as 'Brain (MNI152 anatomy, ...)' does)."""
    viewer = make_napari_viewer()
    bar = viewer.window._qt_window.menuBar()
    texts = [(REPO / "README.md").read_text(), (REPO / "sample_data" / "README.md").read_text()]
    paths = {path for text in texts for path in MENU_PATH.findall(text)}
    assert len(paths) >= 5
    for path in paths:
        actions = bar.actions()
        for step in path.split(" > "):
            name = _menu_text(step)
            found = [
                a
                for a in actions
                if _menu_text(a.text()) == name or _menu_text(a.text()).startswith(f"{name} (")
            ]
            assert found, f"'{step}' of '{path}' is not in napari's menus: {[a.text() for a in actions]}"
            menu = found[0].menu()
            actions = menu.actions() if menu is not None else []
