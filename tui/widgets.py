"""The two widgets of the main screen: a view's table, diffed by key, and the prompt.

`DataView.show(rows)` is the whole refresh on screen: rows that went are removed, rows
that changed get only their changed cells updated, new rows are added; nothing is
rebuilt, so the cursor and the scroll position survive every refresh.
"""

from __future__ import annotations

from textual import on
from textual.binding import Binding
from textual.widgets import DataTable, Input

from pitstop.tui import views as v


class DataView(DataTable):
    """One view's table: rows kept by key, a filter, and a sort column."""

    def __init__(self, spec: v.ViewSpec) -> None:
        super().__init__(id=f"view-{spec.name}", cursor_type="row", zebra_stripes=True)
        self.spec = spec
        self.signatures: dict[str, tuple] = {}
        self.all_rows: v.Rows = {}
        self.row_filter = v.RowFilter("", None, False)
        self.sort_column, self.sort_reverse = spec.default_sort or (None, False)
        self.border_title = spec.title

    def on_mount(self) -> None:
        for key, header in self.spec.columns:
            self.add_column(header, key=key)
        self._retitle()

    def show(self, rows: v.Rows) -> None:
        """Make the table hold `rows` (those the filter passes): remove, update, add by key."""
        self.all_rows = rows
        visible = {key: cells for key, cells in rows.items() if self.row_filter.matches(cells)}
        for key in [k for k in self.signatures if k not in visible]:
            self.remove_row(key)
            del self.signatures[key]
        changed = False
        for key, cells in visible.items():
            signature = tuple(c.signature for c in cells)
            old = self.signatures.get(key)
            if old is None:
                self.add_row(*(c.text() for c in cells), key=key)
                changed = True
            elif old != signature:
                for (column, _), cell, before in zip(self.spec.columns, cells, old):
                    if cell.signature != before:
                        self.update_cell(key, column, cell.text())
                changed = True
            self.signatures[key] = signature
        if self.sort_column and changed:
            self._sort()
        self._retitle()

    def set_filter(self, row_filter: v.RowFilter) -> None:
        self.row_filter = row_filter
        self.show(self.all_rows)

    def cycle_sort(self, reverse_only: bool = False) -> None:
        columns = [key for key, _ in self.spec.columns]
        if reverse_only:
            self.sort_reverse = not self.sort_reverse
            self.sort_column = self.sort_column or columns[0]
        else:
            index = columns.index(self.sort_column) + 1 if self.sort_column in columns else 0
            self.sort_column, self.sort_reverse = columns[index % len(columns)], False
        self._sort()
        self._retitle()

    def sort_by(self, column: str) -> None:
        if column == self.sort_column:
            self.sort_reverse = not self.sort_reverse
        else:
            self.sort_column, self.sort_reverse = column, False
        self._sort()
        self._retitle()

    def _sort(self) -> None:
        if self.sort_column and self.row_count:
            self.sort(self.sort_column, key=lambda cell: cell.sort_value, reverse=self.sort_reverse)

    def _retitle(self) -> None:
        shown, total = len(self.signatures), len(self.all_rows)
        count = f"{shown}" if shown == total else f"{shown} of {total}"
        parts = [f"{self.spec.title} [{count}]"]
        if self.row_filter.text:
            parts.append(f"filter /{self.row_filter.text}/")
        if self.sort_column:
            header = dict(self.spec.columns)[self.sort_column]
            parts.append(f"sort {header} {'↓' if self.sort_reverse else '↑'}")
        self.border_title = " · ".join(parts)

    def selected_key(self) -> str | None:
        if not self.row_count:
            return None
        try:
            return self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value
        except Exception:  # no row under the cursor
            return None

    @on(DataTable.HeaderSelected)
    def _header(self, event: DataTable.HeaderSelected) -> None:
        event.stop()
        self.sort_by(event.column_key.value)


class PromptInput(Input):
    """The `:` command line and the `/` filter: tab takes the suggestion."""

    BINDINGS = [Binding("tab", "accept_suggestion", "Complete", id="pitstop.prompt.complete",
                        show=False)]

    def action_accept_suggestion(self) -> None:
        if self._suggestion:
            self.value = self._suggestion
            self.cursor_position = len(self.value)
