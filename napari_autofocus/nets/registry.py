"""The architectures and their options: names, spellings, defaults (torch-free, one place).

Everything that lists, validates or describes a network without building it (the plugin's model
menus, the training CLI, model cards) reads it here; :func:`napari_autofocus.nets.build_network`
builds from the options resolved here.
"""

from __future__ import annotations

from napari_autofocus.errors import AutofocusError

DEFAULT_CHANNELS = (30, 30, 40, 40, 40, 40, 50, 50)
DEFAULT_DILATIONS = (2, 6, 10, 14)
ARCHITECTURES = ("BASIC", "AFN1", "AFN2", "AFN3", "AFN4", "AFN5", "AFN6", "ASPP_C", "ASPP_S", "DM")


class NetworkConfigError(AutofocusError, ValueError):
    """An unknown architecture, option or input size."""


_ALIASES = {"BASIC": "BASIC", "ASPP_C": "ASPP_C", "ASPP-C": "ASPP_C", "ASPP_S": "ASPP_S", "ASPP-S": "ASPP_S"}
_ALIASES.update({f"AFN{i}": f"AFN{i}" for i in range(1, 7)})
_ALIASES.update({f"AFN-{i}": f"AFN{i}" for i in range(1, 7)})
_ALIASES.update({"DM": "DM", "DEEPMEDIC": "DM"})

# Options each family understands, with defaults. Options of another family are accepted (a training
# CLI may pass one set for all) but not recorded; unknown names are refused to catch typos.
OPTIONS = {
    "BASIC": {"channels": DEFAULT_CHANNELS, "padding": "valid"},
    "AFN": {
        "channels": DEFAULT_CHANNELS,
        "padding": "valid",
        "dilations": DEFAULT_DILATIONS,
        "detach_attention": True,
        "attention_hidden": None,
    },
    "ASPP_C": {
        "channels": DEFAULT_CHANNELS,
        "padding": "valid",
        "dilations": DEFAULT_DILATIONS,
        "head_channels": 30,
    },
    "ASPP_S": {
        "channels": DEFAULT_CHANNELS,
        "padding": "valid",
        "dilations": DEFAULT_DILATIONS,
        "head_channels": 120,
    },
    "DM": {"channels": DEFAULT_CHANNELS, "fc_channels": (150, 150)},
}
_KNOWN = {name for opts in OPTIONS.values() for name in opts}
# Sane ranges for every sized option, checked before a network is built (a model file may be forged).
MAX_WIDTH = 1024
MAX_DILATION = 64
MAX_RATES = 8
_BOUNDS = (
    ("channels", 1, MAX_WIDTH),
    ("dilations", 1, MAX_DILATION),
    ("head_channels", 1, MAX_WIDTH),
    ("fc_channels", 1, MAX_WIDTH),
    ("attention_hidden", 1, MAX_WIDTH),
)


def family(arch: str) -> str:
    """The options family of a canonical architecture name: "AFN" for AFN1..AFN6, else the name."""
    return "AFN" if arch.startswith("AFN") else arch


def canonical_arch(arch: str) -> str:
    """'Basic' -> 'BASIC', 'ASPP_c' -> 'ASPP_C', 'afn-3' -> 'AFN3'; unknown names raise."""
    key = str(arch).strip().upper()
    if key not in _ALIASES:
        raise NetworkConfigError(f"unknown architecture {arch!r}; expected one of {', '.join(ARCHITECTURES)}")
    return _ALIASES[key]


def resolve_options(arch: str, options: dict) -> dict:
    """Defaults filled in, irrelevant options dropped, values JSON-friendly (lists, not tuples)."""
    arch = canonical_arch(arch)
    unknown = sorted(set(options) - _KNOWN)
    if unknown:
        raise NetworkConfigError(f"unknown network option(s) {unknown}; known: {sorted(_KNOWN)}")
    resolved = {}
    for name, default in OPTIONS[family(arch)].items():
        value = options.get(name, default)
        resolved[name] = list(value) if isinstance(value, tuple | list) else value
    if len(resolved["channels"]) != 8:
        raise NetworkConfigError(f"channels needs 8 values, got {resolved['channels']}")
    for name, low, high in _BOUNDS:
        value = resolved.get(name)
        values = value if isinstance(value, list) else [value]
        if name not in resolved or (value is None and name == "attention_hidden"):
            continue
        if name == "dilations" and not 1 <= len(values) <= MAX_RATES:
            raise NetworkConfigError(f"dilations needs 1 to {MAX_RATES} rates, got {len(values)}")
        bad = [v for v in values if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high]
        if bad:
            raise NetworkConfigError(f"{name} must be integers from {low} to {high}, got {str(bad[0])[:20]}")
    if resolved.get("padding", "valid") not in ("valid", "same"):
        raise NetworkConfigError(f"padding must be 'valid' or 'same', got {resolved['padding']!r}")
    return resolved
