"""The demo on screen: the TUI watching the testbed while the story runs beside it.

`pitstop demo` on a terminal opens the same app `pitstop tui` is, pointed at the demo's
testbed (its Slurm and its agents' state directory), so a newcomer sees the fence, the
requeue and the resume where an operator would. The story runs in a thread worker; what
it says goes to the app's message line and is kept, to be printed as the timeline when
the app closes. Closing the app early stops the story.
"""

from __future__ import annotations

from textual import work

from pitstop.demo.runner import Demo
from pitstop.demo.timeline import Summary
from pitstop.tui.app import PitstopApp
from pitstop.tui.providers import LocalProvider


class DemoApp(PitstopApp):
    """PitstopApp on the demo's testbed, with the demo's story as a worker."""

    def __init__(self, demo: Demo, lines: list[str], interval: float = 1.0) -> None:
        layout = demo.testbed.layout
        provider = LocalProvider(slurm=demo.testbed.slurm(), state_dir=layout.agent_root,
                                 launch_dir=layout.jobs_dir)
        super().__init__(provider, interval=interval)
        self.demo = demo
        self.lines = lines
        self.summary: Summary | None = None
        self.failure: BaseException | None = None
        demo.say_raw = self._told

    def on_mount(self) -> None:
        # Textual runs PitstopApp's own on_mount after this one (handlers follow the MRO):
        # the story starts once that has put the main screen up.
        self.sub_title = "demo: a training run survives its faults"
        self.call_after_refresh(self.tell_story)

    def on_unmount(self) -> None:
        self.demo.cancelled.set()

    def _told(self, line: str) -> None:
        self.lines.append(line)
        last = line.strip().splitlines()[-1] if line.strip() else ""
        if last:
            self._show(last)

    def _show(self, text: str, error: bool = False, standing: bool = False) -> None:
        """A line on the message bar, from the story's thread; a standing one stays there
        when a change of view clears the bar (the story's end: q quits and prints the summary)."""
        def show() -> None:
            if standing:
                self.main.standing = (text, error)
            self.main.say(text, error)
        try:
            self.call_from_thread(show)
        except Exception:  # the app is closing
            pass

    @work(thread=True, exclusive=True, group="demo", exit_on_error=False)
    def tell_story(self) -> None:
        try:
            self.summary = self.demo.story()
        except BaseException as exc:  # shown on screen, re-raised by the CLI after the app closes
            self.failure = exc
            self._show(f"the demo stopped: {exc} (q quits)", True, standing=True)
            return
        summary = self.summary
        self._show(f"demo done: {summary.detected}/{summary.faults} faults detected, "
                   f"{summary.restarts} restart(s), ETTR {summary.ettr:.3f} — q quits and prints the summary",
                   standing=True)


def run_on_screen(demo: Demo) -> tuple[list[str], Summary | None, BaseException | None]:
    """Open the app on a started demo; returns the timeline lines, the summary (None when
    the story did not finish) and what stopped it, once the app is closed."""
    lines: list[str] = []
    app = DemoApp(demo, lines)
    app.run()
    return lines, app.summary, app.failure
