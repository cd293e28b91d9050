"""Comparing several models on one volume: disagreement map and a Dice table with CSV export.

Structures are each model's foreground classes plus the regions its card defines (e.g. BraTS
whole/core/enhancing), scored with :func:`napari_autofocus.analysis.metrics.dice` so the numbers match the
training package's evaluation. No Qt.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_autofocus.analysis.metrics import dice, region_mask
from napari_autofocus.nets.card import ModelCard


def disagreement(label_maps: Sequence[np.ndarray]) -> np.ndarray:
    """uint8 map: number of distinct labels at each voxel minus one (0 = all models agree)."""
    stack = np.stack([np.asarray(m) for m in label_maps])
    distinct = np.ones(stack.shape[1:], dtype=np.uint8)
    for i in range(1, len(stack)):
        new = np.all(stack[:i] != stack[i], axis=0)
        distinct += new.astype(np.uint8)
    return distinct - 1


def structures(card: ModelCard) -> dict[str, list[int]]:
    """Foreground classes by name, then the card's regions."""
    out = {card.class_names.get(str(v), f"class {v}"): [v] for v in range(1, card.num_classes)}
    for name, values in card.regions.items():
        out.setdefault(name, [int(v) for v in values])
    return out


@dataclass
class DiceTable:
    """Rows = models, columns = structures; NaN where a model has no such structure."""

    columns: list[str]
    rows: list[tuple[str, list[float]]]

    def value(self, model: str, column: str) -> float:
        return dict(self.rows)[model][self.columns.index(column)]

    def to_csv(self, path: str | Path) -> Path:
        path = Path(path)
        with path.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["model", *self.columns])
            for model, values in self.rows:
                writer.writerow([model, *(f"{v:.4f}" if np.isfinite(v) else "" for v in values)])
        return path


def dice_table(
    predictions: Mapping[str, np.ndarray], cards: Mapping[str, ModelCard], truth: np.ndarray
) -> DiceTable:
    """Dice of every model's labels against ``truth`` for every structure any model defines."""
    per_model = {name: structures(cards[name]) for name in predictions}
    columns = list(dict.fromkeys(col for s in per_model.values() for col in s))
    rows = []
    for name, labels in predictions.items():
        values = []
        for column in columns:
            label_values = per_model[name].get(column)
            if label_values is None:
                values.append(float("nan"))
            else:
                values.append(dice(region_mask(labels, label_values), region_mask(truth, label_values)))
        rows.append((name, values))
    return DiceTable(columns, rows)
