"""Teaching counterfactuals: what changes when one autofocus layer is forced to a fixed choice.

Forcing uniform attention or a single rate (``AutofocusConv.attention_override``) and re-segmenting
shows how much a layer's choice of scale matters. The comparison is against ground truth when one
is open, otherwise against the unmodified prediction (whose Dice with itself is 1). No Qt, no torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from napari_autofocus.analysis.metrics import dice


def override_choices(rates: Sequence[int]) -> list[tuple[str, object]]:
    """(label, attention_override value) pairs for a layer with these rates."""
    return [("uniform attention", "uniform")] + [(f"only r={r}", k) for k, r in enumerate(rates)]


@dataclass
class CounterfactualReport:
    """Changed voxels and per-class Dice before and after forcing the attention."""

    changed: np.ndarray  # uint8 (D, H, W): 1 where the label changed
    reference: str  # "ground truth" or "original prediction"
    rows: list[tuple[str, float, float]]  # (class name, Dice before, Dice after)

    @property
    def changed_voxels(self) -> int:
        return int(np.count_nonzero(self.changed))

    @property
    def mean_delta(self) -> float:
        deltas = [after - before for _, before, after in self.rows]
        return float(np.mean(deltas)) if deltas else 0.0


def compare_to_reference(
    original: np.ndarray,
    modified: np.ndarray,
    class_names: Mapping[int, str],
    truth: np.ndarray | None = None,
) -> CounterfactualReport:
    """Per foreground class: Dice of the original and the modified labels against the reference."""
    reference = truth if truth is not None else original
    rows = [
        (name, dice(original == value, reference == value), dice(modified == value, reference == value))
        for value, name in sorted(class_names.items())
        if value != 0
    ]
    return CounterfactualReport(
        changed=(original != modified).astype(np.uint8),
        reference="ground truth" if truth is not None else "original prediction",
        rows=rows,
    )
