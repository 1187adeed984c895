"""A ClusterView as lines of JSON, one row a line: what a refresh over SSH carries.

A refresh of a big cluster is thousands of rows of which a few changed. Sent as one JSON
document, every refresh parses every row again; sent one row a line, the receiver keeps
the last refresh's lines and reuses the row object of every line it has seen before, so
it parses only what changed, and the rows it reuses are the same objects, which the
views' row memo then recognises without formatting them again.

    {"format": "pitstop.view/2", "taken_at": …, "source": …, "rows": {"N": 4096, "J": …, …}}
    T {"node1": 1764580000.0, …}          every node's agent_updated_at, in one line
    N {…NodeHealth, less agent_updated_at…}
    J {"job": {…}, "progress": {…} | null}
    C {…CheckpointRow…}
    E {…event…}

An agent saves its state every few seconds, so its time moves on most polls while the
rest of its node's row does not: the times travel together in the T line, and a node's
N line changes only when something the screen shows about it changed.

A receiver also takes the older single-document answer (`ClusterView.to_dict()`), so a
login node with an older pitstop still works.
"""

from __future__ import annotations

import copy
import json
from typing import Any, Callable

from pitstop.tui.data import ClusterView, checkpoint_from_dict, job_row_from_dict, node_from_dict

FORMAT = "pitstop.view/2"
END = ".\n"  # ends each answer on a `remote watch` stream

_DECODERS: dict[str, tuple[str, Callable[[dict[str, Any]], Any]]] = {  # kind: (list, row)
    "N": ("nodes", node_from_dict), "J": ("jobs", job_row_from_dict),
    "C": ("checkpoints", checkpoint_from_dict), "E": ("events", dict)}


def _sections(view: ClusterView) -> tuple[str, dict[str, list[str]]]:
    """The T line and each kind's lines; a row that did not change gives the same line."""
    # vars(), not asdict(): the rows hold only JSON values, and asdict's deep copy was
    # most of the far side's time on a big cluster.
    dumps = json.dumps
    stamps = "T " + dumps({n.node: n.agent_updated_at for n in view.nodes})
    return stamps, {
        "N": ["N " + dumps({k: v for k, v in vars(n).items() if k != "agent_updated_at"})
              for n in view.nodes],
        "J": ["J " + dumps({"job": vars(j.job), "progress": vars(j.progress) if j.progress else None})
              for j in view.jobs],
        "C": ["C " + dumps(vars(c)) for c in view.checkpoints],
        "E": ["E " + dumps(e) for e in view.events]}


def _header(view: ClusterView, sections: dict[str, list[str]], **more: Any) -> str:
    return json.dumps({"format": FORMAT, "taken_at": view.taken_at, "source": view.source,
                       "rows": {kind: len(lines) for kind, lines in sections.items()}, **more})


def encode(view: ClusterView) -> str:
    """The whole view as lines (`remote view`: one answer, no memory of the last)."""
    stamps, sections = _sections(view)
    lines = [_header(view, sections), stamps]
    for section in sections.values():
        lines += section
    return "\n".join(lines) + "\n"


class DeltaEncoder:
    """`remote watch`: each answer against the one before on the same stream. A line the
    last answer had is sent as `= KIND START COUNT`, a run of that answer's lines of that
    kind, so a refresh in which 200 of 6,000 rows changed sends about 200 rows."""

    def __init__(self) -> None:
        self._last: dict[str, dict[str, int]] = {}  # kind -> line -> its place last time

    def encode(self, view: ClusterView) -> str:
        stamps, sections = _sections(view)
        out = [_header(view, sections, delta=True), stamps]
        for kind, lines in sections.items():
            last = self._last.get(kind, {})
            start = count = 0
            for line in lines:
                place = last.get(line)
                if place is not None and count and place == start + count:
                    count += 1
                    continue
                if count:
                    out.append(f"= {kind} {start} {count}")
                    count = 0
                if place is None:
                    out.append(line)
                else:
                    start, count = place, 1
            if count:
                out.append(f"= {kind} {start} {count}")
            self._last[kind] = {line: place for place, line in enumerate(lines)}
        return "\n".join(out) + "\n"


def ask(stdin, stdout) -> str | None:
    """One answer from a `remote watch` stream (a request written, lines read up to the
    end mark); None when the stream ended first (the far side is gone)."""
    stdin.write("view\n")
    stdin.flush()
    answer = []
    for line in stdout:
        if line == END:
            return "".join(answer)
        answer.append(line)
    return None


def error_answer(message: str) -> str:
    """What `remote watch` answers when this refresh failed (the stream goes on)."""
    return json.dumps({"format": FORMAT, "error": message}) + "\n"


class Decoder:
    """Turns answers into ClusterViews, reusing the rows of lines seen in the last one.

    Takes whole answers (`encode`) and, on one stream, delta answers (`DeltaEncoder`).
    Rows handed out are shared between refreshes: readers must not change them."""

    def __init__(self) -> None:
        self._rows: dict[str, Any] = {}
        self._last: dict[str, list[str]] = {}  # kind -> the last answer's lines, for deltas
        self.parsed = 0  # rows parsed or re-stamped by the last decode (the rest were reused)

    def decode(self, text: str) -> ClusterView:
        """A view from `text`; ValueError when it is no view, RemoteError when it is the
        far side's error."""
        head, _, body = text.partition("\n")
        try:
            header = json.loads(head)
        except json.JSONDecodeError:
            raise ValueError(f"not a pitstop view: {head[:80]!r}") from None
        if isinstance(header, dict) and "error" in header:
            raise RemoteError(str(header["error"]))
        if not isinstance(header, dict) or "taken_at" not in header:
            raise ValueError(f"not a pitstop view: {head[:80]!r}")
        if header.get("format") != FORMAT:  # an older login node: one document
            view = ClusterView.from_dict(json.loads(text))
            self._rows, self.parsed = {}, len(view.nodes) + len(view.jobs)
            return view
        view = ClusterView(taken_at=float(header["taken_at"]), source=str(header.get("source", "")))
        lines = body.split("\n")
        stamps = json.loads(lines[0][2:]) if lines[0].startswith("T ") else {}
        rest = lines[1:] if lines[0].startswith("T ") else lines
        chunks = self._expand(rest, header["rows"]) if header.get("delta") else self._split(rest, header["rows"])
        seen, kept, self.parsed = self._rows, {}, 0
        for kind, chunk in chunks.items():
            if kind not in _DECODERS:
                continue  # a kind a newer sender added
            name, build = _DECODERS[kind]
            rows = [seen.get(line) for line in chunk]
            for index in [i for i, row in enumerate(rows) if row is None]:
                data = json.loads(chunk[index][2:])
                if kind == "N":
                    data["agent_updated_at"] = stamps.get(data.get("node"))
                rows[index] = build(data)
                self.parsed += 1
            if kind == "N":
                self._restamp(rows, stamps)
            setattr(view, name, rows)
            kept.update(zip(chunk, rows))
        self._rows, self._last = kept, chunks
        return view

    @staticmethod
    def _split(lines: list[str], counts: dict[str, int]) -> dict[str, list[str]]:
        chunks, offset = {}, 0
        for kind, count in counts.items():  # in the sender's order
            chunks[kind] = lines[offset:offset + count]
            offset += count
            if len(chunks[kind]) != count:
                raise ValueError(f"a cut-off view: {kind} has {len(chunks[kind])} of {count} rows")
        return chunks

    def _expand(self, lines: list[str], counts: dict[str, int]) -> dict[str, list[str]]:
        """A delta answer's lines, with each `= KIND START COUNT` replaced by the last answer's."""
        chunks: dict[str, list[str]] = {kind: [] for kind in counts}
        for line in lines:
            if line.startswith("= "):
                _, kind, start, count = line.split()
                last = self._last.get(kind, [])
                run = last[int(start):int(start) + int(count)]
                if len(run) != int(count):
                    raise ValueError("a delta against an answer this side does not have")
                chunks[kind] += run
            elif line:
                chunks.setdefault(line[0], []).append(line)
        for kind, count in counts.items():
            if len(chunks[kind]) != count:
                raise ValueError(f"a cut-off view: {kind} has {len(chunks[kind])} of {count} rows")
        return chunks

    def _restamp(self, nodes: list, stamps: dict[str, Any]) -> None:
        """Nodes whose agent saved since: a copy with the new time (the last view keeps its own)."""
        for index in [i for i, n in enumerate(nodes) if n.agent_updated_at != stamps.get(n.node)]:
            node = copy.copy(nodes[index])
            node.agent_updated_at = stamps.get(node.node)
            nodes[index] = node
            self.parsed += 1


class RemoteError(Exception):
    """The far side could not build the view this time (Slurm said no); its words."""
