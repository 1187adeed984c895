"""A table that keeps rows by key and draws only the lines on screen.

Textual's DataTable re-renders every visible cell through Rich after any change and
walks all its rows to place them, which on a 4,096-node cluster costs more than the
whole refresh budget. Here a row is plain cells (`views.Cell`) and a frame is the few
dozen rows in view, each cut to its column widths as one strip; a refresh that changes
200 rows off screen costs nothing to draw, and a key press redraws one screenful.

The cursor follows a row's key, not its position, so sorting, filtering and refreshes
never move it to another node.
"""

from __future__ import annotations

import functools
from typing import Iterable

from rich.cells import cell_len, set_cell_size
from rich.segment import Segment
from rich.style import Style
from textual import events
from textual.binding import Binding
from textual.geometry import Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip

from pitstop.tui.views import Cell

CELL_PADDING = 1  # blanks either side of a cell, as DataTable draws them
MAX_COLUMN_WIDTH = 80  # a longer cell ends in an ellipsis (the detail screen has it whole)


@functools.lru_cache(maxsize=256)
def _style(text: str) -> Style:
    return Style.parse(text) if text else Style()


def _fit(text: str, width: int) -> str:
    """`text` padded or cut (with an ellipsis) to `width` cells."""
    if cell_len(text) <= width:
        return set_cell_size(text, width)
    return set_cell_size(text, width - 1) + "…"


class KeyedTable(ScrollView, can_focus=True):
    """Rows by key, in the order `set_order` gives, drawn a screenful at a time."""

    COMPONENT_CLASSES = {"keyed-table--header", "keyed-table--cursor", "keyed-table--even-row"}
    DEFAULT_CSS = """
    KeyedTable {
        background: $surface;
        color: $foreground;
        &:focus {
            background-tint: $foreground 5%;
            & > .keyed-table--header { background-tint: $foreground 5%; }
            & > .keyed-table--cursor {
                background: $block-cursor-background;
                color: $block-cursor-foreground;
                text-style: $block-cursor-text-style;
            }
        }
        & > .keyed-table--header { text-style: bold; background: $panel; color: $foreground; }
        & > .keyed-table--even-row { background: $surface-lighten-1 50%; }
        &:dark > .keyed-table--even-row { background: $surface-darken-1 40%; }
        & > .keyed-table--cursor {
            background: $block-cursor-blurred-background;
            color: $block-cursor-blurred-foreground;
            text-style: $block-cursor-blurred-text-style;
        }
    }
    """
    BINDINGS = [
        Binding("up", "cursor(-1)", "Up", show=False),
        Binding("down", "cursor(1)", "Down", show=False),
        Binding("pageup", "page(-1)", "Page up", show=False),
        Binding("pagedown", "page(1)", "Page down", show=False),
        Binding("home,ctrl+home", "first", "First", show=False),
        Binding("end,ctrl+end", "last", "Last", show=False),
        Binding("left", "scroll_left", "Left", show=False),
        Binding("right", "scroll_right", "Right", show=False),
        Binding("enter", "select", "Select", show=False),
    ]

    class Picked(Message):
        """A row or a header picked in a table; `key` names which."""

        def __init__(self, table: "KeyedTable", key: str) -> None:
            super().__init__()
            self.picked_in, self.key = table, key

        @property
        def control(self) -> "KeyedTable":
            return self.picked_in

    class RowSelected(Picked):
        """Enter, or a click on the row under the cursor: `key` is the row's."""

    class HeaderSelected(Picked):
        """A click on a column's header: `key` is the column's."""

    def __init__(self, columns: Iterable[tuple[str, str]], *, id: str | None = None,
                 zebra_stripes: bool = True) -> None:
        super().__init__(id=id)
        self.columns = list(columns)  # (key, header)
        self.widths = [min(MAX_COLUMN_WIDTH, cell_len(header)) for _, header in self.columns]
        self.zebra_stripes = zebra_stripes
        self.rows: dict[str, list[Cell]] = {}
        self.order: list[str] = []
        self._position: dict[str, int] = {}
        self.cursor_row = 0
        self._cursor_key: str | None = None

    # --- content ----------------------------------------------------------------------

    @property
    def row_count(self) -> int:
        return len(self.order)

    def set_rows(self, rows: dict[str, list[Cell]], changed: Iterable[str] = ()) -> None:
        """Hold `rows` (by key); `changed` names the ones whose cells may be wider now."""
        self.rows = rows
        widths, before = self.widths, list(self.widths)
        for key in changed:
            for index, cell in enumerate(rows[key]):
                if index < len(widths) and widths[index] < MAX_COLUMN_WIDTH:
                    width = cell_len(cell.plain)
                    if width > widths[index]:
                        widths[index] = min(MAX_COLUMN_WIDTH, width)
        if widths != before:
            self.virtual_size = Size(self._total_width(), len(self.order) + 1)
            self.refresh()

    def set_order(self, order: list[str], changed: Iterable[str] = ()) -> None:
        """Show the rows `order` names, in that order; the cursor stays on its row's key.
        When the order is as it was, only the rows `changed` names are drawn again."""
        if order == self.order:
            for key in changed:
                index = self._position.get(key)
                if index is not None:
                    self.refresh_row(index)
            return
        self.order = order
        self._position = {key: index for index, key in enumerate(order)}
        index = self._position.get(self._cursor_key) if self._cursor_key is not None else None
        if index is None:
            index = min(self.cursor_row, max(0, len(order) - 1))
        self.virtual_size = Size(self._total_width(), len(order) + 1)
        self._move_to(index)  # and into view, should its row have moved out of it
        self.refresh()

    def get_row(self, key: str) -> list[Cell]:
        return self.rows[key]

    def selected_key(self) -> str | None:
        return self.order[self.cursor_row] if 0 <= self.cursor_row < len(self.order) else None

    def _total_width(self) -> int:
        return sum(w + 2 * CELL_PADDING for w in self.widths)

    # --- cursor -----------------------------------------------------------------------

    def _visible_rows(self) -> int:
        return max(1, self.scrollable_content_region.height - 1)

    def _move_to(self, index: int, scroll: bool = True) -> None:
        if not self.order:
            self.cursor_row, self._cursor_key = 0, None
            return
        index = max(0, min(index, len(self.order) - 1))
        if index != self.cursor_row:
            self.refresh_row(self.cursor_row)
            self.refresh_row(index)
        self.cursor_row, self._cursor_key = index, self.order[index]
        if scroll:
            self._scroll_to_cursor()

    def _scroll_to_cursor(self) -> None:
        top, visible = int(self.scroll_y), self._visible_rows()
        if self.cursor_row < top:
            self.scroll_to(y=self.cursor_row, animate=False, force=True)
        elif self.cursor_row >= top + visible:
            self.scroll_to(y=self.cursor_row - visible + 1, animate=False, force=True)

    def refresh_row(self, index: int) -> None:
        y = index - int(self.scroll_y) + 1
        if 1 <= y < self.size.height:
            self.refresh_lines(y)

    def action_cursor(self, step: int) -> None:
        self._move_to(self.cursor_row + step)

    def action_page(self, direction: int) -> None:
        self._move_to(self.cursor_row + direction * self._visible_rows())

    def action_first(self) -> None:
        self._move_to(0)

    def action_last(self) -> None:
        self._move_to(len(self.order) - 1)

    def action_select(self) -> None:
        key = self.selected_key()
        if key is not None:
            self.post_message(self.RowSelected(self, key))

    def on_mount(self) -> None:
        self.virtual_size = Size(self._total_width(), len(self.order) + 1)  # the header, rows or not

    def on_resize(self) -> None:
        self._scroll_to_cursor()

    def _on_click(self, event: events.Click) -> None:
        offset = event.get_content_offset(self)
        if offset is None:
            return
        event.stop()
        if offset.y == 0:
            x = offset.x + int(self.scroll_x)
            for (key, _), width in zip(self.columns, self.widths):
                x -= width + 2 * CELL_PADDING
                if x < 0:
                    self.post_message(self.HeaderSelected(self, key))
                    return
            return
        index = int(self.scroll_y) + offset.y - 1
        if 0 <= index < len(self.order):
            if index == self.cursor_row:
                self.action_select()
            else:
                self._move_to(index)

    # --- drawing ----------------------------------------------------------------------

    def _line(self, cells: list[str], styles: list[Style], base: Style) -> Strip:
        pad = " " * CELL_PADDING
        segments = [Segment(f"{pad}{_fit(text, width)}{pad}", base + style)
                    for text, style, width in zip(cells, styles, self.widths)]
        return Strip(segments, self._total_width())

    def render_line(self, y: int) -> Strip:
        width = self.scrollable_content_region.width
        scroll_x = int(self.scroll_x)
        base = self.rich_style
        if y == 0:
            header = self.get_component_rich_style("keyed-table--header")
            strip = self._line([h for _, h in self.columns], [Style()] * len(self.columns), base + header)
            return strip.crop_extend(scroll_x, scroll_x + width, base + header)
        index = int(self.scroll_y) + y - 1
        if index >= len(self.order):
            return Strip.blank(width, base)
        row_style = base
        if self.zebra_stripes and index % 2 == 0:
            row_style = base + self.get_component_rich_style("keyed-table--even-row")
        cells = self.rows[self.order[index]]
        strip = self._line([c.plain for c in cells], [_style(c.style) for c in cells], row_style)
        if index == self.cursor_row:
            cursor = self.get_component_rich_style("keyed-table--cursor")
            strip = Strip(Segment.apply_style(list(strip), post_style=cursor), strip.cell_length)
            row_style = row_style + cursor
        return strip.crop_extend(scroll_x, scroll_x + width, row_style)
