"""A training's progress, metrics and last log line: read from its log, carried in progress records.

The driver feeds the model's (redacted) log and metrics to a `Tracker`, which parses progress from
tqdm bars and `step N/M`-style lines, keeps the latest metrics and the last log line, all bounded;
the driver prints its state as one record line (`cogtrain.progress {json}`) on its stdout. The
operator reads the tail of the driver container's log, takes the last record line (`last_record`)
and validates it (`Record`) before it goes into the Training's status (docs/operator.md, "Progress
and logs"). Pure: the standard library and pydantic only, so the driver can import it.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    ValidationError,
    WithJsonSchema,
    field_validator,
)
from pydantic.alias_generators import to_camel

MARKER = "cogtrain.progress "  # a record line: MARKER + compact JSON
ESCAPE = "\\"  # put before a model's line that starts with MARKER, so a model cannot forge a record
MAX_METRICS = 32
MAX_KEY = 64  # characters of a metric's name
MAX_TEXT = 256  # characters of a metric's string value and of the last log line
MAX_SEGMENT = 4096  # characters of one log line (or \r-separated piece) kept for parsing
MAX_RECORD = 16 * 1024  # characters of a record line the operator accepts
MAX_METRICS_BYTES = 12 * 1024  # of the metrics in JSON (quotes double, an emoji is 4 bytes): a record stays under
# MAX_RECORD and under the 16 KiB past which the container runtime splits a line of the log in pieces
MAX_COUNT = 2**53  # current/total beyond this are not believed
TAIL_LINES, TAIL_BYTES = 20, 2048  # the log tail a failed Training's status shows

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_TQDM = re.compile(r"(?<![\d.])(\d{1,3}(?:\.\d+)?)%\|.*?\|\s*(\d+)\s*/\s*(\d+)(?=[\s\[,]|$)")
_TQDM_PERCENT = re.compile(r"(?<![\d.])(\d{1,3}(?:\.\d+)?)%\|")
_STEP = re.compile(r"\b(?:step|epoch|iter(?:ation)?|batch|it)\s*[:#]?\s*(\d+)\s*(?:/|of)\s*(\d+)(?=\W|$)", re.I)
_LEADING_COUNT = re.compile(r"^\s*\[?\s*(\d+)\s*/\s*(\d+)\s*\]?(?=[\s:,]|$)")


def _timestamp(when: datetime) -> datetime:
    return when.astimezone(UTC).replace(microsecond=0)


class _Value(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True)

    observed_time: datetime = Field(description="When the driver observed it (its clock).")


class Progress(_Value):
    """How far the training is, as its log shows (a tqdm bar, `step N/M`)."""

    percent: float | None = Field(default=None, ge=0, le=100, allow_inf_nan=False, description="0 to 100.")
    current: int | None = Field(default=None, ge=0, le=MAX_COUNT, description="Steps done, when shown.")
    total: int | None = Field(default=None, ge=1, le=MAX_COUNT, description="Steps in all, when shown.")


MetricValue = Annotated[
    StrictBool | StrictInt | Annotated[float, Field(allow_inf_nan=False)] | Annotated[str, Field(max_length=MAX_TEXT)],
    WithJsonSchema({"x-kubernetes-preserve-unknown-fields": True}),
]


class Metrics(_Value):
    """The latest values of the metrics the model records through Cog (`current_scope().record_metric`)."""

    values: dict[str, MetricValue] = Field(
        max_length=MAX_METRICS, description="By name: a number, a string or a boolean (at most 32)."
    )

    @field_validator("values")
    @classmethod
    def _names(cls, values: dict[str, Any]) -> dict[str, Any]:
        if any(not 0 < len(name) <= MAX_KEY for name in values):
            raise ValueError(f"a metric's name must have 1 to {MAX_KEY} characters")
        return values


class LastLog(_Value):
    """The model's last non-empty log line (secret values redacted)."""

    line: str = Field(max_length=MAX_TEXT, description="At most 256 characters.")


class Record(BaseModel):
    """One progress record: the driver's whole current state. Invalid or oversized parts fail it whole."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True)

    progress: Progress | None = None
    metrics: Metrics | None = None
    last_log: LastLog | None = None

    def status(self) -> dict[str, Any]:
        """The Training status fields of this record (progress, metrics, lastLog), as JSON."""
        return {key: value for key, value in self.model_dump(mode="json", by_alias=True).items() if value is not None}

    def line(self) -> str:
        """The record as the driver prints it."""
        return MARKER + json.dumps(self.status(), ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def parse_progress(segment: str, complete: bool = True) -> tuple[float | None, int | None, int | None] | None:
    """(percent, current, total) a log line shows, or None. `complete`: False for a line still being written,
    whose last number may be cut short (then a count must be followed by more text)."""
    if "%|" in segment:
        match = _TQDM.search(segment)
        if match and not complete and match.end() == len(segment):
            return None  # its count may still grow
        if match:
            current, total = int(match.group(2)), int(match.group(3))
            if 0 <= current <= total and 0 < total <= MAX_COUNT:
                return round(100 * current / total, 1), current, total
        found = _TQDM_PERCENT.findall(segment)
        if found and float(found[-1]) <= 100:  # tqdm with unit_scale (1.2k/10k): the percent only
            return float(found[-1]), None, None
    if "/" in segment or " of " in segment:
        match = _STEP.search(segment) or _LEADING_COUNT.search(segment)
        if match and (complete or match.end() < len(segment)):
            current, total = int(match.group(1)), int(match.group(2))
            if 0 <= current <= total and 0 < total <= MAX_COUNT:
                return round(100 * current / total, 1), current, total
    return None


def clean_text(text: str, limit: int = MAX_TEXT) -> str:
    """One line of text for the status: control characters out, whitespace trimmed, cut to `limit` (marked …)."""
    text = _CONTROL.sub(" ", text).strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def bounded_metrics(metrics: Mapping[str, Any], redact: Callable[[str], str] = lambda text: text) -> dict[str, Any]:
    """The metrics the status may hold: at most 32, names of at most 64 characters, finite numbers, strings and
    booleans (strings cut to 256 characters, redacted), 12 KiB in JSON in all (those that fit); anything else is
    left out."""
    kept: dict[str, Any] = {}
    size = 2
    for key, value in metrics.items():
        name = clean_text(redact(str(key)), MAX_KEY)
        if not name or len(kept) >= MAX_METRICS:
            continue
        if isinstance(value, bool) or (isinstance(value, int) and abs(value) <= MAX_COUNT):
            pass
        elif isinstance(value, float) and math.isfinite(value):
            pass
        elif isinstance(value, str):
            value = clean_text(redact(value))
        else:
            continue
        cost = len(json.dumps({name: value}, ensure_ascii=False).encode())  # with its braces: a separator's room
        if size + cost <= MAX_METRICS_BYTES:
            kept[name] = value
            size += cost
    return kept


class Tracker:
    """The progress, metrics and last log line of one training, from its log (fed in pieces) and metrics.

    Lines end at \\n or \\r (tqdm redraws its bar after a \\r); a piece of a line is kept to 4096 characters.
    `version` grows with every change, so a writer knows when to print a record.
    """

    def __init__(self, now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.now = now
        self.version = 0
        self._segment: list[str] = []
        self._segment_size = 0
        self._progress: tuple[tuple[float | None, int | None, int | None], datetime] | None = None
        self._metrics: Metrics | None = None
        self._last_log: tuple[str, datetime] | None = None

    def feed(self, text: str) -> None:
        for piece in re.split(r"([\r\n])", text):
            if piece in ("\r", "\n"):
                self._end_segment()
            elif piece:
                room = MAX_SEGMENT - self._segment_size
                if room > 0:
                    self._segment.append(piece[:room])
                    self._segment_size += min(room, len(piece))
        if self._segment:  # a tqdm bar being redrawn: its latest state is the unfinished piece
            self._look_at("".join(self._segment), complete=False)

    def _end_segment(self) -> None:
        segment = "".join(self._segment)
        self._segment, self._segment_size = [], 0
        self._look_at(segment, complete=True)

    def _look_at(self, segment: str, complete: bool) -> None:
        line = clean_text(segment)
        if not line:
            return
        if self._last_log is None or self._last_log[0] != line:
            self._last_log = (line, self.now())
            self.version += 1
        found = parse_progress(segment, complete)
        if found is not None and (self._progress is None or self._progress[0] != found):
            self._progress = (found, self._last_log[1])
            self.version += 1

    def metrics(self, metrics: Mapping[str, Any], redact: Callable[[str], str] = lambda text: text) -> None:
        """The model server's metrics, as its latest webhook reports them (Cog 0.23 sends them all each time)."""
        values = bounded_metrics(metrics, redact)
        if values and (self._metrics is None or self._metrics.values != values):
            self._metrics = Metrics(values=values, observed_time=_timestamp(self.now()))
            self.version += 1

    def record(self) -> Record | None:
        """The current state, or None before anything was seen."""
        if self._progress is None and self._metrics is None and self._last_log is None:
            return None
        progress = last_log = None
        if self._progress is not None:
            (percent, current, total), when = self._progress
            progress = Progress(percent=percent, current=current, total=total, observed_time=_timestamp(when))
        if self._last_log is not None:
            last_log = LastLog(line=self._last_log[0], observed_time=_timestamp(self._last_log[1]))
        return Record(progress=progress, metrics=self._metrics, last_log=last_log)


def merge_patch(current: Any, wanted: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON merge patch (RFC 7386, what a status PATCH is) that turns the object `current` into `wanted`, where
    a None in `wanted` means absent: a key `wanted` lacks is removed (null), objects are patched key by key,
    anything else is replaced. Empty when `current` already is `wanted`. (`wanted` itself as the patch would keep
    the keys `current` has besides: a status would pile up the metric names of every record.)"""
    old = current if isinstance(current, Mapping) else {}
    patch: dict[str, Any] = {key: None for key, value in old.items() if value is not None and wanted.get(key) is None}
    for key, value in wanted.items():
        if isinstance(value, Mapping):
            inner = merge_patch(old.get(key), value)
            if inner or not isinstance(old.get(key), Mapping):
                patch[key] = inner
        elif value is not None and old.get(key) != value:
            patch[key] = value
    return patch


def escape(line_start: str) -> str:
    """What the driver prints for a model's log text at the start of a line: a record's marker is escaped."""
    return ESCAPE + line_start if line_start.startswith(MARKER) else line_start


def last_record(log: str) -> Record | None:
    """The last valid record line in a log's tail (lines end at \\n only, as the kubelet splits them)."""
    for line in reversed(log.split("\n")):
        if not line.startswith(MARKER) or len(line) > MAX_RECORD:
            continue
        try:
            return Record.model_validate(json.loads(line[len(MARKER) :]))
        except (ValueError, ValidationError, RecursionError):
            continue  # a record cut short (the tail's byte limit) or not one: an earlier one may do
    return None


def log_tail(text: str, lines: int = TAIL_LINES, limit: int = TAIL_BYTES) -> str:
    """The last lines of a log (a redrawn tqdm bar as its last state), at most `lines` lines and `limit` bytes."""
    kept: list[str] = []
    size = 0
    for raw in reversed(text.split("\n")):
        pieces = [piece for piece in raw.split("\r") if piece.strip()]
        line = _CONTROL.sub(" ", pieces[-1] if pieces else "").rstrip()
        if not line and not kept:
            continue  # trailing empty lines
        cost = len(line.encode()) + (1 if kept else 0)
        if len(kept) >= lines or size + cost > limit:
            if not kept:  # one line longer than the limit: its end
                kept.append(line.encode()[-limit:].decode(errors="ignore"))
            break
        kept.append(line)
        size += cost
    return "\n".join(reversed(kept))
