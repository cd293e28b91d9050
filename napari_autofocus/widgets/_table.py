"""Fill a read-only QTableWidget from rows of text and numbers."""

from __future__ import annotations

import math

from qtpy.QtWidgets import QAbstractItemView, QHeaderView, QTableWidget, QTableWidgetItem


def make_table() -> QTableWidget:
    table = QTableWidget()
    table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
    table.verticalHeader().setVisible(False)
    table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
    table.setMinimumHeight(90)
    return table


def fill(table: QTableWidget, header: list[str], rows: list[list]) -> None:
    table.clear()
    table.setColumnCount(len(header))
    table.setRowCount(len(rows))
    table.setHorizontalHeaderLabels(header)
    for r, row in enumerate(rows):
        for c, value in enumerate(row):
            if isinstance(value, float):
                text = (
                    "–"
                    if math.isnan(value)
                    else f"{value:+.3f}"
                    if header[c].startswith("Δ")
                    else f"{value:.3f}"
                )
            else:
                text = str(value)
            table.setItem(r, c, QTableWidgetItem(text))
