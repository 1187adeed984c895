"""`pitstop agent …`: the node agent's commands."""

from pitstop.cli import not_built

agent = not_built("agent", 3, "the node agent")
