"""`pitstop tui`: the terminal UI."""

from pitstop.cli import not_built

tui = not_built("tui", 6, "the terminal UI")
