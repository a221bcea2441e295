"""Read JSON from a byte stream in bounded pieces: the model server's webhooks and answers.

Cog's server re-sends the whole accumulated log in every webhook and returns the setup's whole log
in every `/health-check` answer, so a body can be as large as the training's log. `Reader` parses
such a body as it arrives, one chunk at a time: a string's text goes to a sink in pieces (so a
caller can print the new part of a log and forget it), and values are built only within a
`Budget`, so no body costs more memory than its chunk and what the caller chose to keep.
Standard library only: the driver (docs/driver.md) imports this module.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Callable, Iterator
from json.decoder import scanstring  # type: ignore[attr-defined]
from typing import Any, Protocol

CHUNK = 64 * 1024
MAX_DEPTH = 64

# A run of a string's content: characters other than " and \, and complete escapes.
_PIECE = re.compile(r'(?:[^"\\]+|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))*')
_HIGH_SURROGATE_AT_END = re.compile(r"\\u[dD][89abAB][0-9a-fA-F]{2}\Z")
_SURROGATE = re.compile("[\ud800-\udfff]")  # a lone one (a pair is one character): it cannot be printed
_SPACE = re.compile(r"[ \t\r\n]*")
_NUMBER_CHARS = re.compile(r"[-+0-9.eE]*")
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?")
_LITERALS = {"t": ("true", True), "f": ("false", False), "n": ("null", None)}
_MAX_NUMBER = 400


class JSONStreamError(ValueError):
    """The body is not JSON, or not of the shape expected."""


class Sink(Protocol):
    def write(self, text: str, /) -> object: ...


class Budget:
    """How many characters of strings, keys and numbers a value may keep; past it, `exceeded`."""

    def __init__(self, limit: int) -> None:
        self.left = limit
        self.exceeded = False

    def take(self, size: int) -> bool:
        """Charge `size`; False (and from then on `exceeded`) when it does not fit."""
        if self.exceeded or size > self.left:
            self.exceeded = True
            return False
        self.left -= size
        return True


class Text:
    """A string sink that keeps what its budget allows, and at most `cap` characters of this one string."""

    def __init__(self, budget: Budget, cap: int | None = None) -> None:
        self.budget, self.cap = budget, cap
        self.pieces: list[str] = []
        self.kept = 0
        self.truncated = False

    def write(self, text: str) -> None:
        if self.cap is not None and self.kept + len(text) > self.cap:
            text, self.truncated = text[: max(0, self.cap - self.kept)], True
        if text and self.budget.take(len(text)):
            self.pieces.append(text)
            self.kept += len(text)

    def value(self) -> Any:
        return "".join(self.pieces)


class Tail:
    """A string sink that keeps only the last `size` characters (a log's tail)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.text = ""

    def write(self, text: str) -> None:
        self.text = (self.text + text[-self.size :])[-self.size :]


StringSink = Text  # what `Reader.value` builds strings with: any Text, or a subclass with its own value()


class Reader:
    """A pull parser over `read(n) -> bytes` (a socket file, an HTTP response), one chunk at a time."""

    def __init__(self, read: Callable[[int], bytes], chunk: int = CHUNK) -> None:
        self._read = read
        self._chunk = chunk
        self._decoder = codecs.getincrementaldecoder("utf-8")()
        self._buffer = ""
        self._pos = 0
        self._eof = False

    def _fill(self) -> bool:
        """Read one more chunk; False at the end of the stream."""
        if self._eof:
            return False
        data = self._read(self._chunk)
        try:
            text = self._decoder.decode(data, final=not data)
        except UnicodeDecodeError:
            raise JSONStreamError("the body is not UTF-8") from None
        self._eof = not data
        self._buffer = self._buffer[self._pos :] + text
        self._pos = 0
        return bool(data)

    def _ensure(self, size: int) -> bool:
        while len(self._buffer) - self._pos < size:
            if not self._fill():
                return False
        return True

    def peek(self) -> str:
        """The next character that is not white space ("" at the end)."""
        while True:
            space = _SPACE.match(self._buffer, self._pos)
            assert space is not None  # it matches the empty string
            self._pos = space.end()
            if self._pos < len(self._buffer):
                return self._buffer[self._pos]
            if not self._fill():
                return ""

    def _expect(self, char: str) -> None:
        found = self.peek()
        if found != char:
            raise JSONStreamError(f"expected {char!r}, found {repr(found) if found else 'the end'}")
        self._pos += 1

    def string(self, sink: Sink) -> None:
        """Read a string, writing its text to `sink` in pieces (never more than a chunk at once).

        Each piece of complete escapes is decoded by the standard library's C scanner; a piece never
        ends inside an escape or between the two halves of a surrogate pair.
        """
        self._expect('"')
        while True:
            buffer, start = self._buffer, self._pos
            piece = _PIECE.match(buffer, start)
            assert piece is not None  # it matches the empty string
            end = piece.end()
            closed = end < len(buffer) and buffer[end] == '"'
            if not closed:  # more is to come: a high surrogate's low half may be in it
                high = _HIGH_SURROGATE_AT_END.search(buffer, start, end)
                if high is not None and _escape_starts(buffer, high.start(), start):
                    end = high.start()
            if end > start:
                text = scanstring(buffer[start:end] + '"', 0, False)[0]
                sink.write(_SURROGATE.sub("\ufffd", text) if _SURROGATE.search(text) else text)
                self._pos = end
            if closed:
                self._pos = end + 1
                return
            if len(buffer) - end >= 12:  # not an escape cut short by the chunk's end
                raise JSONStreamError(f"an invalid escape in a string: {buffer[end : end + 6]!r}")
            if not self._fill():
                raise JSONStreamError("a string is not terminated")

    def members(self) -> Iterator[str]:
        """The keys of an object (the next value); read or `skip()` each key's value before the next."""
        self._expect("{")
        if self.peek() == "}":
            self._pos += 1
            return
        while True:
            key = Text(Budget(1024))
            self.string(key)
            self._expect(":")
            yield key.value()
            found = self.peek()
            self._pos += 1
            if found == "}":
                return
            if found != ",":
                raise JSONStreamError("expected ',' or '}' in an object")

    def items(self) -> Iterator[None]:
        """Each item of an array (the next value); read or `skip()` each before the next."""
        self._expect("[")
        if self.peek() == "]":
            self._pos += 1
            return
        while True:
            yield None
            found = self.peek()
            self._pos += 1
            if found == "]":
                return
            if found != ",":
                raise JSONStreamError("expected ',' or ']' in an array")

    def value(self, budget: Budget, strings: Callable[[Budget], StringSink] = Text, depth: int = 0) -> Any:
        """The next value, built within `budget` (check `budget.exceeded`: what did not fit is left out).

        `strings` makes each string's sink; its `value()` is what the string becomes.
        """
        if depth > MAX_DEPTH:
            raise JSONStreamError(f"nested deeper than {MAX_DEPTH}")
        found = self.peek()
        if found == '"':
            sink = strings(budget)
            self.string(sink)
            return sink.value()
        if found == "{":
            result: dict[str, Any] = {}
            for key in self.members():
                item = self.value(budget, strings, depth + 1)
                if budget.take(len(key) + 1):
                    result[key] = item
            return result
        if found == "[":
            items: list[Any] = []
            for _ in self.items():
                item = self.value(budget, strings, depth + 1)
                if budget.take(1):
                    items.append(item)
            return items
        if found in _LITERALS:
            word, literal = _LITERALS[found]
            if not self._ensure(len(word)) or not self._buffer.startswith(word, self._pos):
                raise JSONStreamError("not JSON")
            self._pos += len(word)
            return literal
        if found == "":
            raise JSONStreamError("the body ended before a value")
        return self._number(budget)

    def _number(self, budget: Budget) -> int | float | None:
        pieces: list[str] = []
        size = 0
        while True:
            match = _NUMBER_CHARS.match(self._buffer, self._pos)
            assert match is not None
            pieces.append(match.group())
            size += len(match.group())
            self._pos = match.end()
            if size > _MAX_NUMBER:
                raise JSONStreamError("a number is too long")
            if self._pos < len(self._buffer) or not self._fill():
                break
        text = "".join(pieces)
        shape = _NUMBER.fullmatch(text)
        if shape is None:
            raise JSONStreamError(f"not JSON: {text[:20] or self._buffer[self._pos : self._pos + 1]!r}")
        if not budget.take(len(text)):
            return None
        return float(text) if shape.group(1) or shape.group(2) else int(text)

    def skip(self) -> None:
        """Read past the next value, keeping nothing of it."""
        self.value(Budget(-1), lambda budget: _Skipped(budget))

    def end(self) -> None:
        """Read to the end of the stream; only white space may remain."""
        if self.peek():
            raise JSONStreamError("more after the JSON value")


def _escape_starts(buffer: str, at: int, start: int) -> bool:
    """Whether the backslash at `at` begins an escape (an odd run of backslashes ends there)."""
    run = at
    while run > start and buffer[run - 1] == "\\":
        run -= 1
    return (at - run) % 2 == 0


class _Skipped(Text):
    def write(self, text: str) -> None:
        pass

