"""One self-contained Python file with our networks, for the packages' ``pytorch_state_dict`` entry.

bioimage.io and MONAI load an architecture from a single source file, without this project
installed. The file is assembled from this project's own modules, in dependency order: their
top-level definitions verbatim, their imports of each other dropped (the names then live in one
namespace), other imports (torch, the standard library) kept once each. Nothing is rewritten by
hand, so a package always runs the network code of the version that exported it.
"""

from __future__ import annotations

import ast
import importlib
import inspect

# (module, top-level names to take; None = all), dependencies first
MODULES: tuple[tuple[str, tuple[str, ...] | None], ...] = (
    ("napari_autofocus.errors", ("AutofocusError",)),
    ("napari_autofocus.analysis.attention_maths", ("receptive_field",)),
    ("napari_autofocus.nets.slabs", None),
    ("napari_autofocus.nets.autofocus", None),
    ("napari_autofocus.nets.registry", None),
    ("napari_autofocus.nets.blocks", None),
    ("napari_autofocus.nets.base", None),
    ("napari_autofocus.nets.deepmedic", None),
    ("napari_autofocus.nets.networks", None),
    ("napari_autofocus.exchange.packaged_network", None),
)
ENTRY = "PackagedNetwork"  # the class the packages name as their architecture


def _is_own_import(node: ast.stmt) -> bool:
    if isinstance(node, ast.ImportFrom):
        return node.level > 0 or (node.module or "").split(".")[0] in ("napari_autofocus", "__future__")
    return isinstance(node, ast.Import) and any(
        a.name.split(".")[0] == "napari_autofocus" for a in node.names
    )


def _defined_names(node: ast.stmt) -> list[str]:
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return [node.name]
    if isinstance(node, ast.Assign):
        return [t.id for t in node.targets if isinstance(t, ast.Name)]
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return [node.target.id]
    return []


def _statement_text(lines: list[str], node: ast.stmt) -> str:
    first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
    return "\n".join(lines[first - 1 : node.end_lineno])


def architecture_source(version: str) -> str:
    """The file's text; ``version`` (ours) goes into its header."""
    imports: list[str] = []
    bodies: list[str] = []
    seen: dict[str, str] = {}
    for module_name, wanted in MODULES:
        source = inspect.getsource(importlib.import_module(module_name))
        lines = source.splitlines()
        taken = []
        for node in ast.parse(source).body:
            if isinstance(node, ast.Import | ast.ImportFrom):
                text = _statement_text(lines, node)
                if not _is_own_import(node) and text not in imports:
                    imports.append(text)
                continue
            if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
                continue  # the module docstring
            names = _defined_names(node)
            if wanted is not None and not set(names) & set(wanted):
                continue
            for name in names:
                if name in seen:
                    raise RuntimeError(f"{name} is defined in both {seen[name]} and {module_name}")
                seen[name] = module_name
            taken.append(_statement_text(lines, node))
        bodies.append(f"# ---- from {module_name} ----\n\n" + "\n\n\n".join(taken))
    if ENTRY not in seen:
        raise RuntimeError(f"the architecture source lacks {ENTRY}")
    header = (
        f'"""Autofocus segmentation networks (Qin et al., MICCAI 2018), from napari-autofocus {version}.\n\n'
        "Assembled from the project's modules when the package was exported; needs torch and numpy only.\n"
        f'Build with {ENTRY}(arch, in_channels, num_classes, options, pad_value)."""\n\n'
        "from __future__ import annotations\n\n"
    )
    return header + "\n".join(imports) + "\n\n\n" + "\n\n\n".join(bodies) + "\n"
