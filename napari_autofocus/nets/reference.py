"""Reading the authors' reference checkpoints: architecture detection and key mapping.

The reference saves a DataParallel state dict (``module.`` prefix) with its own module names
(``layers.i``, ``convatt11``, ``bn_list2.k``, ``aspp.i``, ``conv_list.i`` ...). We detect the
architecture from those names and rename every key explicitly; any key we cannot place is an
error, so an unknown layout can never be half-loaded.
"""

from __future__ import annotations

import re

from napari_autofocus.errors import CheckpointError

# Card defaults for models trained with the reference code on BRATS 2015.
REFERENCE_MODALITIES = ["Flair", "T1", "T1c", "T2"]
REFERENCE_CLASS_NAMES = {
    "0": "background",
    "1": "necrosis",
    "2": "edema",
    "3": "non-enhancing",
    "4": "enhancing",
}
REFERENCE_REGION_CONVENTION = "brats2015"  # a key of napari_autofocus.analysis.metrics.REGION_CONVENTIONS

# Inside a reference AFN block: (their name prefix) -> (our name prefix).
_AFN_BLOCK = [
    (r"convatt11\.", "conv1.att1."),
    (r"convatt12\.", "conv1.att2."),
    (r"bn_list1\.", "conv1.norms."),
    (r"convatt21\.", "conv2.att1."),
    (r"convatt22\.", "conv2.att2."),
    (r"bn_list2\.", "conv2.norms."),
    (r"convatt1\.", "conv2.att1."),  # single blocks: only conv2 is autofocus
    (r"convatt2\.", "conv2.att2."),
]
_HEADS = [
    (r"aspp\.", "head.branches."),
    (r"bn9\.", "head.bn."),
    (r"fc9\.", "head.classifier."),
    (r"conv_list\.", "head.branches."),
    (r"bn_list\.", "head.norms."),
    (r"last_list\.", "head.classifiers."),
]


def strip_prefix(state: dict) -> dict:
    """Drop DataParallel's ``module.`` prefix (only when every key has it)."""
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module.") :]: v for k, v in state.items()}
    return dict(state)


def detect_arch(state: dict) -> str:
    """BASIC / ASPP_C / ASPP_S / AFNn from reference key names (prefix already stripped)."""
    keys = list(state)
    if any(k.startswith("aspp.") for k in keys):
        return "ASPP_C"
    if any(k.startswith("conv_list.") for k in keys):
        return "ASPP_S"
    if any(k.startswith("layers.") for k in keys):
        groups = {m.group(1, 2) for k in keys if (m := re.match(r"layers\.(\d+)\.bn_list(\d)\.", k))}
        if not 1 <= len(groups) <= 6:
            raise CheckpointError(
                f"found 'layers.*' keys but {len(groups)} autofocus convs; expected 1..6 (AFN1..AFN6)"
            )
        return f"AFN{len(groups)}"
    if any(k.startswith("layer3.") for k in keys):
        return "BASIC"
    sample = ", ".join(keys[:5]) or "no keys"
    raise CheckpointError(
        f"cannot recognise a reference architecture from the keys ({sample}, ...); expected keys of "
        "Basic (layer3.*), ASPP_c (aspp.*), ASPP_s (conv_list.*) or AFN1..6 (layers.*.convatt*)"
    )


def detect_sizes(state: dict) -> tuple[int, int]:
    """(in_channels, num_classes) from the first conv's and the classifier's weight shapes."""
    try:
        in_channels = int(state["conv1.weight"].shape[1])
    except KeyError:
        raise CheckpointError(
            "reference checkpoint has no 'conv1.weight'; cannot tell the input channels"
        ) from None
    for key in ("fc.weight", "fc9.weight", "last_list.0.weight"):
        if key in state:
            return in_channels, int(state[key].shape[0])
    raise CheckpointError("reference checkpoint has no classifier weight (fc / fc9 / last_list.0)")


def map_key(key: str) -> str:
    """One reference key (prefix stripped) -> our key."""
    m = re.match(r"layers\.(\d+)\.(.*)", key)
    if m:
        rest = m.group(2)
        for pattern, ours in _AFN_BLOCK:
            if re.match(pattern, rest):
                rest = ours + rest[len(pattern.replace("\\", "")) :]
                break
        return f"layer{3 + int(m.group(1))}.{rest}"
    for pattern, ours in _HEADS:
        if re.match(pattern, key):
            return ours + key[len(pattern.replace("\\", "")) :]
    return key


def reference_to_ours(state: dict) -> dict:
    """Rename all keys of a reference state dict (prefix already stripped)."""
    mapped = {}
    for key, value in state.items():
        new = map_key(key)
        if new in mapped:
            raise CheckpointError(
                f"two reference keys map to {new!r}; the checkpoint layout is not understood"
            )
        mapped[new] = value
    return mapped
