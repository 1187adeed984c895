"""RecipeError: the one exception a bad recipe, group file or override raises.

Composition reports every problem it finds at once, each naming the file and line, the
override or the key, and what was expected, so a user fixes a recipe in one pass. The CLI
turns it into exit status 2 with nothing written and nothing submitted.
"""

from __future__ import annotations


class RecipeError(Exception):
    """One or more problems with a recipe; `problems` holds one message per problem."""

    def __init__(self, problems: str | list[str], recipe: str | None = None) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.recipe = recipe
        super().__init__(self._text())

    def _text(self) -> str:
        head = f"recipe {self.recipe}: " if self.recipe else ""
        if len(self.problems) == 1:
            return head + self.problems[0]
        lines = [f"{head}{len(self.problems)} problems:"]
        lines += [f"  - {problem}" for problem in self.problems]
        return "\n".join(lines)

    def for_recipe(self, recipe: str) -> "RecipeError":
        """The same problems, headed by the recipe they belong to."""
        return RecipeError(self.problems, recipe=self.recipe or recipe)
