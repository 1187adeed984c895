"""`pitstop recipes …`: the recipe collection and the launcher."""

from pitstop.cli import not_built

recipes = not_built("recipes", 4, "training recipes and the launcher")
