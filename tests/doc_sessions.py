"""The shell sessions of the docs, read so that a test can run them: code blocks whose
first line starts with ``$ ``, each command followed by the output it is documented to
print. Pure text handling; tests/e2e/test_docs_sessions.py runs them on a real cluster.

The output is compared line by line after `normalise`: times, relative times ("in 23h")
and durations become placeholders and runs of blanks one blank (a column widened by a
longer time still matches); a line ``...`` (or ``…``) stands for any number of lines; a
``--watch`` line of the running state may be printed or not where the doc shows none (it
is printed only when a poll falls into the run). An id the doc shows in output is bound
to the one printed in its place, and later commands are typed with the printed one, as a
user copies it (`Bindings`). A command that exits other than 0 fails unless the doc shows
its exit code (``; echo "exit $?"``).

A session that cannot run as written is marked in the doc by an HTML comment on the last
non-blank line before its fence, ``<!-- not-run: why -->``: it is invisible where the
Markdown is rendered, and the test lists it as skipped with that reason.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

PROMPT = "$ "
#: A line of expected output standing for any number of lines, as in the docs.
ELLIPSES = ("...", "…")

_FENCE = re.compile(r"^(```+|~~~+)\s*(\S*)\s*$")
_MARKER = re.compile(r"^<!--\s*not-run:(.*?)-->\s*$")
_UUID = re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b")
#: What legitimately differs from one run to the next, and what it is shown as instead.
_VARYING = (
    (re.compile(r"\b\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z| ?[+-]\d{2}:\d{2})?"),
     "<time>"),
    (re.compile(r"\b\d{2}:\d{2}:\d{2}\b"), "<time>"),
    (re.compile(r"\b(?:in \d+[dhms]|\d+[dhms] ago)\b"), "<when>"),
    (re.compile(r"(?<=[(, ])now(?=\))"), "<when>"),
    (re.compile(r"\b\d+(?:ms|\.\d+s)\b"), "<duration>"),
)
#: A `--watch` line of a state that lasts a moment: printed only when a poll falls into it.
_PASSING = re.compile(r"^<time> running attempt ")


@dataclass(frozen=True)
class Step:
    """One ``$ `` command (continued over lines ending in ``\\``) and its output."""

    command: str
    line: int
    expected: tuple[str, ...]


@dataclass(frozen=True)
class Session:
    doc: str
    line: int
    steps: tuple[Step, ...]
    not_run: str | None = None

    @property
    def name(self) -> str:
        return f"{self.doc}:{self.line}"


class MarkerError(ValueError):
    """A ``not-run`` marker without a reason, or not in front of a session."""


def parse_sessions(text: str, doc: str) -> list[Session]:
    """Every session of one Markdown text; ``doc`` names it in messages."""
    lines = text.splitlines()
    sessions: list[Session] = []
    marker: tuple[int, str] | None = None
    index = 0
    while index < len(lines):
        line = lines[index]
        found = _MARKER.match(line.strip())
        if found:
            if marker is not None:
                raise MarkerError(f"{doc}:{marker[0]}: not-run marker before no session")
            reason = found.group(1).strip()
            if not reason:
                raise MarkerError(f"{doc}:{index + 1}: not-run marker without a reason")
            marker = (index + 1, reason)
            index += 1
            continue
        fence = _FENCE.match(line)
        if fence is None:
            if line.strip() and marker is not None:
                raise MarkerError(f"{doc}:{marker[0]}: not-run marker before no session")
            index += 1
            continue
        end = next((i for i in range(index + 1, len(lines))
                    if lines[i].strip() == fence.group(1)), len(lines))
        body = lines[index + 1:end]
        if body and body[0].startswith(PROMPT):
            steps = tuple(_steps(body, index + 2))
            sessions.append(Session(doc, index + 1, steps, marker[1] if marker else None))
        elif marker is not None:
            raise MarkerError(f"{doc}:{marker[0]}: not-run marker before no session")
        marker = None
        index = end + 1
    if marker is not None:
        raise MarkerError(f"{doc}:{marker[0]}: not-run marker before no session")
    return sessions


def _steps(body: list[str], first_line: int) -> Iterator[Step]:
    index = 0
    while index < len(body):
        start = index
        command = body[index][len(PROMPT):]
        while command.endswith("\\") and index + 1 < len(body):
            index += 1
            command = command[:-1] + body[index]
        index += 1
        output_start = index
        while index < len(body) and not body[index].startswith(PROMPT):
            index += 1
        yield Step(command, first_line + start, tuple(body[output_start:index]))


def normalise(line: str) -> str:
    """A line with what varies between runs replaced and runs of blanks made one, so that
    table columns widened by another time or name still compare equal."""
    for pattern, placeholder in _VARYING:
        line = pattern.sub(placeholder, line)
    return re.sub(r"\s+", " ", line).rstrip()


@dataclass
class Bindings:
    """What the docs show against what this run printed: the ids of earlier output, which
    a user copies into later commands, and fixed substitutions such as the api's URL."""

    fixed: dict[str, str] = field(default_factory=dict)
    ids: dict[str, str] = field(default_factory=dict)

    def command(self, text: str) -> str:
        """The command as a user would type it here. An id that no earlier output showed
        is typed as written (e.g. one that exists nowhere) and stands for itself."""
        for doc, actual in self.fixed.items():
            text = text.replace(doc, actual)

        def substitute(found: re.Match[str]) -> str:
            return self.ids.setdefault(found.group(), found.group())

        return _UUID.sub(substitute, text)

    def actual(self, text: str) -> str:
        """Printed text in the doc's terms: known ids and substitutions put back."""
        for doc, actual in self.fixed.items():
            text = text.replace(actual, doc)
        back = {actual: doc for doc, actual in self.ids.items()}
        return _UUID.sub(lambda found: back.get(found.group(), found.group()), text)


def compare(expected: tuple[str, ...], output: str, bindings: Bindings) -> str | None:
    """None when ``output`` is what the doc shows, binding the doc's new ids to the
    printed ones; otherwise a diff (doc first), in normalised form."""
    wanted = [line if line.strip() in ELLIPSES else normalise(line) for line in expected]
    got = [normalise(line) for line in bindings.actual(output).splitlines()]
    while wanted and not wanted[-1]:
        wanted.pop()
    while got and not got[-1]:
        got.pop()
    groups: dict[str, str] = {}
    pattern = ""
    for line in wanted:
        if line.strip() in ELLIPSES:
            pattern += r"(?:[^\n]*\n)*?"
            continue
        position = 0
        for found in _UUID.finditer(line):
            pattern += re.escape(line[position:found.start()])
            doc_id = found.group()
            if doc_id in bindings.ids:
                pattern += re.escape(doc_id)
            elif doc_id in groups:
                pattern += f"(?P={groups[doc_id]})"
            else:
                groups[doc_id] = f"id{len(groups)}"
                pattern += f"(?P<{groups[doc_id]}>{_UUID.pattern})"
            position = found.end()
        pattern += re.escape(line[position:]) + r"\n"
    matched = re.fullmatch(pattern, "".join(line + "\n" for line in got))
    if matched is None:
        matched = re.fullmatch(pattern, "".join(line + "\n" for line in got
                                                if not _PASSING.match(line)))
    if matched is None:
        # Ids that no earlier output bound differ by nature: not worth a line of the diff.
        def shown(lines: list[str]) -> list[str]:
            return [_UUID.sub(lambda found: found.group() if found.group() in bindings.ids
                              else "<new id>", line) for line in lines]

        return "\n".join(difflib.unified_diff(shown(wanted), shown(got), "doc", "printed",
                                               lineterm=""))
    for doc_id, group in groups.items():
        bindings.ids[doc_id] = matched.group(group)
    return None
