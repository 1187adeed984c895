"""The two widgets of the main screen: a view's table, diffed by key, and the prompt.

`DataView.show(rows)` is the whole refresh on screen: a row whose cells are the same
list as last time (the views' RowMemo hands those back) costs one identity check; only
changed, new and removed rows are looked at, the filter runs on those alone, and the
order is worked out again only when a row came, went or changed. The table draws just
the rows in view, so the cursor and the scroll position survive every refresh.
"""

from __future__ import annotations

from textual import on
from textual.binding import Binding
from textual.widgets import Input

from pitstop.tui import views as v
from pitstop.tui.table import KeyedTable


class DataView(KeyedTable):
    """One view's table: rows kept by key, a filter, and a sort column."""

    def __init__(self, spec: v.ViewSpec) -> None:
        super().__init__(spec.columns, id=f"view-{spec.name}", zebra_stripes=True)
        self.spec = spec
        self.all_rows: v.Rows = {}
        self._passes: dict[str, bool] = {}
        self.last_changed: list[str] = []  # keys whose cells changed in the last show()
        self.row_filter = v.RowFilter("", None, False)
        self.sort_column, self.sort_reverse = spec.default_sort or (None, False)
        self.border_title = self._title = spec.title

    def on_mount(self) -> None:
        self._retitle()

    def show(self, rows: v.Rows) -> None:
        """Make the table hold `rows` (those the filter passes), looking only at what changed."""
        before, passes = self.all_rows, self._passes
        changed = [key for key, cells in rows.items() if before.get(key) is not cells]
        gone = len(before) + sum(1 for key in changed if key not in before) - len(rows)
        if gone:
            for key in [k for k in passes if k not in rows]:
                del passes[key]
        for key in changed:
            passes[key] = self.row_filter.matches(rows[key])
        self.all_rows, self.last_changed = rows, changed
        self.set_rows(rows, changed)
        if changed or gone:
            self._reorder(changed)
        self._retitle()

    def shows(self, key: str) -> bool:
        """Whether row `key` is in the table now (present and passing the filter)."""
        return key in self._position

    def set_filter(self, row_filter: v.RowFilter) -> None:
        self.row_filter = row_filter
        self._passes = {key: row_filter.matches(cells) for key, cells in self.all_rows.items()}
        self._reorder()
        self._retitle()

    def cycle_sort(self, reverse_only: bool = False) -> None:
        columns = [key for key, _ in self.spec.columns]
        if reverse_only:
            self.sort_reverse = not self.sort_reverse
            self.sort_column = self.sort_column or columns[0]
        else:
            index = columns.index(self.sort_column) + 1 if self.sort_column in columns else 0
            self.sort_column, self.sort_reverse = columns[index % len(columns)], False
        self._reorder()
        self._retitle()

    def sort_by(self, column: str) -> None:
        if column == self.sort_column:
            self.sort_reverse = not self.sort_reverse
        else:
            self.sort_column, self.sort_reverse = column, False
        self._reorder()
        self._retitle()

    def _reorder(self, changed: list[str] = ()) -> None:
        rows, passes = self.all_rows, self._passes
        order = [key for key in rows if passes.get(key, True)]
        if self.sort_column:
            index = [key for key, _ in self.spec.columns].index(self.sort_column)
            order.sort(key=lambda key: rows[key][index].sort_value, reverse=self.sort_reverse)
        self.set_order(order, changed)

    def _retitle(self) -> None:
        shown, total = self.row_count, len(self.all_rows)
        count = f"{shown}" if shown == total else f"{shown} of {total}"
        parts = [f"{self.spec.title} [{count}]"]
        if self.row_filter.text:
            parts.append(f"filter /{self.row_filter.text}/")
        if self.sort_column:
            header = dict(self.spec.columns)[self.sort_column]
            parts.append(f"sort {header} {'↓' if self.sort_reverse else '↑'}")
        title = " · ".join(parts)
        if title != self._title:  # setting it repaints the whole table
            self.border_title = self._title = title

    @on(KeyedTable.HeaderSelected)
    def _header(self, event: KeyedTable.HeaderSelected) -> None:
        event.stop()
        self.sort_by(event.key)


class PromptInput(Input):
    """The `:` command line and the `/` filter: tab takes the suggestion."""

    BINDINGS = [Binding("tab", "accept_suggestion", "Complete", id="pitstop.prompt.complete",
                        show=False)]

    def action_accept_suggestion(self) -> None:
        if self._suggestion:
            self.value = self._suggestion
            self.cursor_position = len(self.value)
