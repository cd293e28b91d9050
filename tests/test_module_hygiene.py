"""The codebase's shape: no two modules share a name across folders, no module borrows another's
private names, and the streaming engine asks networks for their parts instead of checking classes."""

import ast
from collections import Counter

from repo_paths import REPO

PACKAGES = ("napari_autofocus", "src_training")


def modules():
    return [p for package in PACKAGES for p in (REPO / package).rglob("*.py") if "__pycache__" not in p.parts]


def test_no_two_modules_share_a_name_across_folders():
    """A private module counts by its public name: ``_outputs`` and ``outputs`` read as one."""
    names = Counter(p.name.lstrip("_") for p in modules() if p.name not in ("__init__.py", "__main__.py"))
    assert not [name for name, count in names.items() if count > 1]


def test_no_module_imports_another_modules_private_names():
    borrowed = []
    for path in modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(PACKAGES)):
                continue
            folder = REPO.joinpath(*node.module.split("."))
            for alias in node.names:
                private = alias.name.startswith("_") and not alias.name.startswith("__")
                submodule = (folder / f"{alias.name}.py").is_file()  # a package's own private module
                if private and not submodule:
                    borrowed.append(f"{path.relative_to(REPO)}: {node.module}.{alias.name}")
    assert not borrowed, borrowed


def test_streaming_asks_networks_for_their_parts_not_their_class():
    source = (REPO / "napari_autofocus" / "inference" / "streaming.py").read_text()
    assert "TrunkNet" not in source and "BasicNet" not in source and "stream_layout" in source


def test_every_trunk_network_describes_its_parts_for_streaming():
    from napari_autofocus.inference.streaming import network_steps
    from napari_autofocus.nets import build_network

    for arch in ("BASIC", "AFN1", "AFN6", "ASPP_C", "ASPP_S"):
        model = build_network(arch, 2, 3, channels=(4,) * 8).eval()
        steps = network_steps(model)
        assert steps is not None and steps[-1].channels == 3, arch
        assert network_steps(model.train()) is None  # batch statistics: never streamed
    assert network_steps(build_network("DM", 2, 3).eval()) is None  # no layout: the tiled strategy
