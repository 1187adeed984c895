"""pitstop.tui: the Textual app and its data providers (local or over SSH)."""
