"""Check a Training's inputs against the model's training schema, as Cog's runtime would.

Cog 0.23 never coerces JSON types ("768" is not an integer, 1 is not a boolean), takes an
integral float as an integer, compares choices exactly, counts string lengths in characters,
and follows the schema's `required` list. Two deliberate differences, documented in
docs/validation.md: an unknown input name is an error (Cog silently drops it), and an explicit
null for an input that is not required is accepted and left out (Cog rejects it).
Every problem is found at once; a message never contains a Secret input's value.

The schema comes from a model image and the input from a Training, both possibly hostile, and
the webhook and the operator run this for every namespace: the work is linear in the input,
patterns run on a linear-time engine, and what is reported is bounded (docs/validation.md,
"Limits"): at most MAX_PROBLEMS problems, each of bounded length, joined by `summarize` into at
most MESSAGE_BYTES.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import pydantic

from .contract import INPUT_ENV_PREFIX, env_value, is_storage_ref, parse_storage_ref, storage_refs
from .schema import TrainingSchema, ValueType, compile_pattern, json_key

MAX_DEPTH = 100
"""Deepest nesting accepted in a value (Cog's JSON parser stops at 128)."""
MAX_PROBLEMS = 20
"""Problems (and warnings) listed in a result; the rest are counted in one closing `Omitted` note."""
MESSAGE_BYTES = 8192
"""What `summarize` joins problems into, at most (UTF-8 bytes): it fits a condition's message
(the CRD allows 32768 characters) with room for a prefix."""
ENV_STRING_BYTES = 131072
"""Linux's MAX_ARG_STRLEN: the most one "NAME=value" environment string may hold, with its NUL.
The training Pod passes each input in one (COGTRAIN_INPUT_<name>, see jobs.py); a longer one
makes the container's exec fail with E2BIG."""
INPUTS_TOTAL_BYTES = 1 << 20
"""The most all input environment strings together may hold: well under ARG_MAX (2 MiB with the
usual 8 MiB stack, shared with the other variables and the arguments)."""
PATTERN_WORK = 300_000_000
"""RE2 steps (program size times bytes of text) one validation may spend on patterns: under a
second at worst. A value whose check would go over is left to the model server, with a warning."""
LARGEST_NUMBER = 2**1024 - 2**970
"""Cog's JSON parser reads numbers as 64-bit floats: an integer this large (or larger) does not
round to a finite one, and Cog answers "number out of range"."""

_SHOWN_CHARS = 48
_SHOWN_NAME_CHARS = 64
_SHOWN_PATTERN_CHARS = 120
_SHOWN_CHOICES = 20
_LISTED_NAMES_CHARS = 1000
_SUGGEST_CHARS = 100  # no "did you mean" for longer names or values
_SUGGEST_CANDIDATES = 1000  # nor fuzzy matching against more candidates
_DEPRECATED = "is deprecated by the model and may be ignored or removed in a later version"
_LARGE_DATA = "pass large data as a file instead: a URL (https://...) in an input that takes a file"


@dataclass(frozen=True)
class Problem:
    """One thing wrong (or worth a warning) with one field."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


@dataclass(frozen=True)
class Omitted(Problem):
    """The closing note of a list that was cut: `count` more problems were found but not listed."""

    count: int = 0


def model_problems(error: pydantic.ValidationError, prefix: str = "") -> list[Problem]:
    """Each error of a pydantic model (a Training, its spec) as a Problem on its field path."""
    problems = []
    for item in error.errors():
        location = ".".join(str(part) for part in item["loc"])
        problems.append(Problem(f"{prefix}{location}" or "training", item["msg"]))
    return problems


def summarize(problems: Iterable[Problem | str], limit_bytes: int = MESSAGE_BYTES) -> str:
    """Problems joined with "; " in at most `limit_bytes` UTF-8 bytes, saying how many are left out.

    Whole problems are kept while they fit (the first is cut if it alone does not); `Omitted`
    notes count as the problems they stand for.
    """
    items = list(problems)
    tail_room = 48  # "; and 1234567890 more problems not shown"
    parts: list[str] = []
    used = 0
    stop = len(items)
    for index, item in enumerate(items):
        text = str(item)
        size = len(text.encode()) + (2 if parts else 0)
        last = index == len(items) - 1
        room = limit_bytes - used - (0 if last else tail_room)
        if size <= room:
            parts.append(text)
            used += size
            continue
        if not parts:
            parts.append(_cut_bytes(text, max(0, limit_bytes - tail_room)))
            used = len(parts[0].encode())
            stop = index + 1
        else:
            stop = index
        break
    left = sum(item.count if isinstance(item, Omitted) else 1 for item in items[stop:])
    message = "; ".join(parts)
    if left:
        message += f"; and {left} more problem{'s' if left != 1 else ''} not shown"
    return _cut_bytes(message, limit_bytes)


def _cut_bytes(text: str, limit: int) -> str:
    """`text` in at most `limit` UTF-8 bytes, ending in "…" when it was cut."""
    encoded = text.encode()
    if len(encoded) <= limit:
        return text
    if limit < 3:
        return ""
    return encoded[: limit - 3].decode("utf-8", "ignore") + "…"


class _Sink:
    """Collects at most `limit` problems and counts the rest, building their messages only when kept."""

    def __init__(self, limit: int = MAX_PROBLEMS, what: str = "problems", warnings: _Sink | None = None) -> None:
        self.limit = limit
        self.what = what
        self.kept: list[Problem] = []
        self.more = 0
        self.pattern_work = PATTERN_WORK  # what is left of it
        self.warnings = warnings  # where a check left to the model server is noted

    @property
    def full(self) -> bool:
        return len(self.kept) >= self.limit

    @property
    def found(self) -> int:
        return len(self.kept) + self.more

    def add(self, where: str, message: str | Callable[[], str]) -> None:
        if self.full:
            self.more += 1
        else:
            self.kept.append(Problem(where, message if isinstance(message, str) else message()))

    def listed(self) -> list[Problem]:
        if not self.more:
            return list(self.kept)
        what = self.what[:-1] if self.more == 1 else self.what
        note = Omitted("input", f"{self.more} more {what} not listed (only the first {self.limit} are)", self.more)
        return [*self.kept, note]


@dataclass(frozen=True)
class ValidationResult:
    """The input object to send to the model (Secret inputs excluded), or the problems.

    `problems` and `warnings` list at most MAX_PROBLEMS each, then an `Omitted` note with the
    count of the rest; `summary()` joins them within a byte limit.
    """

    input: dict[str, Any]
    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    secret_names: list[str] = field(default_factory=list)
    secret_list_names: list[str] = field(default_factory=list)
    """The `list[Secret]` inputs among `secret_names`: their Secret holds a JSON array of strings."""
    storage_input_names: list[str] = field(default_factory=list)
    """The file inputs whose value (or a list item) is an s3:// or pvc:// reference, which the training
    Pod's driver reads and serves to the model (docs/training.md); other inputs' values go as they are."""

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def problem_count(self) -> int:
        """Every problem found, listed or not."""
        return sum(p.count if isinstance(p, Omitted) else 1 for p in self.problems)

    def summary(self, limit_bytes: int = MESSAGE_BYTES) -> str:
        """The problems in one line of at most `limit_bytes` UTF-8 bytes (see `summarize`)."""
        return summarize(self.problems, limit_bytes)


def show(value: Any) -> str:
    """A short, safe rendering of a value for a message (never huge, never recursive)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        if value.bit_length() > 200:
            return f"an integer of about {int(value.bit_length() * math.log10(2)) + 1} digits"
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return repr(value)
    if isinstance(value, str):
        if len(value) <= _SHOWN_CHARS:
            return _quote(value)
        return f"{_quote(value[:_SHOWN_CHARS])[:-1]}…\" ({len(value)} characters)"
    if isinstance(value, list):
        return f"a list of {len(value)} item{'s' if len(value) != 1 else ''}"
    if isinstance(value, Mapping):
        return f"an object with {len(value)} key{'s' if len(value) != 1 else ''}"
    return f"a {type(value).__name__}"


def _quote(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    escaped = "".join(
        ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in escaped
    )
    return f'"{escaped}"'


def _name(name: Any) -> str:
    """An input name as a field path shows it: printable, at most _SHOWN_NAME_CHARS characters."""
    if not isinstance(name, str):
        return show(name)
    short = name[:_SHOWN_NAME_CHARS]
    if not short.isprintable():
        short = "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in short)
    return short + "…" if len(name) > _SHOWN_NAME_CHARS else short


def _pattern(pattern: str) -> str:
    if len(pattern) <= _SHOWN_PATTERN_CHARS:
        return pattern
    return f"{pattern[:_SHOWN_PATTERN_CHARS]}… ({len(pattern)} characters)"


def _kind(value: Any) -> str:
    """'a string', 'an integer', ... : what the user actually wrote."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, Mapping):
        return "an object"
    return f"a {type(value).__name__}"


def _same_json(a: Any, b: Any) -> bool:
    """JSON equality: true is not 1, 4.0 is 4, "4" is not 4."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    return type(a) is type(b) and a == b


def _is_choice(value: Any, expected: ValueType) -> bool:
    keys, others = expected.choice_lookup
    key = json_key(value)
    if key is not None and key in keys:
        return True
    return any(_same_json(value, choice) for choice in others)


def allowed_range(low: Any, high: Any, low_open: bool = False, high_open: bool = False, unit: str = "") -> str:
    """'1..10000', '>= 0', '> 0 and < 1': the range a bound allows, as messages and tables show it."""
    if low is not None and high is not None and not (low_open or high_open):
        return f"{show(low)}..{show(high)}{unit}"
    parts = []
    if low is not None:
        parts.append(f"{'>' if low_open else '>='} {show(low)}")
    if high is not None:
        parts.append(f"{'<' if high_open else '<='} {show(high)}")
    return " and ".join(parts) + unit


def _out_of_range(value: int) -> bool:
    return abs(value) >= LARGEST_NUMBER


_OUT_OF_RANGE = "is too large: Cog reads numbers as 64-bit floating point, which ends at about 1.8e308"


def _unpaired_surrogate(text: str) -> bool:
    """Whether `text` holds a lone UTF-16 surrogate, which JSON parsers (Cog's too) refuse."""
    if text.isascii():
        return False
    try:
        text.encode()
    except UnicodeEncodeError:
        return True
    return False


_SURROGATE = "contains an unpaired surrogate (\\ud800-\\udfff), which is not valid Unicode text"


def _untyped_problem(value: Any) -> str | None:
    """What Cog could not read in a value the schema does not type (nesting, numbers, text), if anything."""
    stack = [(value, 0)]
    while stack:
        current, depth = stack.pop()
        if depth > MAX_DEPTH:
            return f"the value is nested more than {MAX_DEPTH} levels deep"
        if isinstance(current, str):
            if _unpaired_surrogate(current):
                return f"a text in the value {_SURROGATE}"
        elif isinstance(current, bool) or current is None:
            continue
        elif isinstance(current, int):
            if _out_of_range(current):
                return f"a number in the value ({show(current)}) {_OUT_OF_RANGE}"
        elif isinstance(current, float):
            if not math.isfinite(current):
                return f"the value holds {show(current)}, which JSON cannot express"
        elif isinstance(current, list):
            stack.extend((item, depth + 1) for item in current)
        elif isinstance(current, Mapping):
            for key, item in current.items():
                if not isinstance(key, str):
                    return f"the value has a key that is {_kind(key)}; JSON object keys are strings"
                stack.append((key, depth + 1))
                stack.append((item, depth + 1))
        else:
            return f"the value holds {_kind(current)}, which is not JSON"
    return None


def _untyped_inside(expected: ValueType) -> bool:
    """Whether the schema lets values of any depth through (so depth must be bounded here)."""
    while expected.type == "array" and expected.items is not None:
        expected = expected.items
    return expected.type in ("any", "object", "array")


def _type_hint(value: Any, expected: ValueType) -> str:
    """What to write instead, when the intent is plain."""
    if isinstance(value, str) and len(value) <= _SUGGEST_CHARS:
        text = value.strip()
        if expected.type == "boolean" and text.lower() in ("true", "false"):
            return f"; write {text.lower()} without quotes"
        if expected.type in ("integer", "number"):
            try:
                number = int(text) if expected.type == "integer" else float(text)
            except ValueError:
                return ""
            if isinstance(number, float) and not math.isfinite(number):
                return ""
            return f"; write {show(number)} without quotes"
    if expected.type == "boolean" and isinstance(value, int) and value in (0, 1):
        return f"; write {'true' if value else 'false'}"
    if expected.type == "string" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return f'; quote it: "{show(value)}"'
    if expected.type == "array" and isinstance(value, (str, int, float)):
        return f"; write it as a list: [{show(value)}]"
    return ""


def check_value(value: Any, expected: ValueType, where: str) -> tuple[Any, list[Problem]]:
    """Check one value; return it normalized (integral floats as ints) and its problems (see MAX_PROBLEMS)."""
    sink = _Sink()
    normalized = _check(value, expected, where, sink)
    return normalized, sink.listed()


def _check(value: Any, expected: ValueType, where: str, sink: _Sink, walked: bool = False) -> Any:
    """Check one value into `sink`; return it normalized. Work is linear in the value's size.

    `walked`: an enclosing list was already walked whole by _untyped_problem.
    """
    kind = expected.type
    wrong_type = (
        (kind == "string" and not isinstance(value, str))
        or (kind == "boolean" and not isinstance(value, bool))
        or (kind in ("integer", "number") and (isinstance(value, bool) or not isinstance(value, (int, float))))
        or (kind == "array" and not isinstance(value, list))
        or (kind == "object" and not isinstance(value, Mapping))
    )
    if wrong_type:
        def wrong() -> str:
            if value is None:
                return f"null is not allowed here; this takes {expected.describe()}" + _type_hint(value, expected)
            return f"{show(value)} is {_kind(value)}, but this input takes {expected.describe()}" + _type_hint(
                value, expected)
        sink.add(where, wrong)
        return value
    if isinstance(value, float) and not math.isfinite(value):
        sink.add(where, lambda: f"{show(value)} is not a finite number; this takes {expected.describe()}")
        return value
    if kind == "integer" and isinstance(value, float):
        if not value.is_integer():
            sink.add(where, lambda: f"{show(value)} is not a whole number; this takes an integer")
            return value
        value = int(value)
    if not walked and _untyped_inside(expected):
        untyped = _untyped_problem(value)
        if untyped is not None:
            sink.add(where, untyped)
            return value
        walked = True

    before = sink.found
    if kind in ("integer", "number"):
        _check_bounds(value, expected, where, sink)
        if sink.found == before and isinstance(value, int) and _out_of_range(value):
            sink.add(where, lambda: f"{show(value)} {_OUT_OF_RANGE}")
    elif kind == "string":
        _check_string(value, expected, where, sink)
    elif kind == "array":
        value = _check_items(value, expected, where, sink, walked)
    if expected.choices is not None and not _is_choice(value, expected):
        sink.add(where, lambda: _not_a_choice(value, expected.choices or ()))
    return value


def _check_bounds(value: int | float, expected: ValueType, where: str, sink: _Sink) -> None:
    low, high = expected.minimum, expected.maximum

    def allowed() -> str:
        return allowed_range(low, high, expected.exclusive_minimum, expected.exclusive_maximum)

    if low is not None and (value < low or (expected.exclusive_minimum and value == low)):
        word = "not greater than" if expected.exclusive_minimum else "less than"
        sink.add(where, lambda: f"{show(value)} is {word} the minimum of {show(low)} (allowed: {allowed()})")
    elif high is not None and (value > high or (expected.exclusive_maximum and value == high)):
        word = "not less than" if expected.exclusive_maximum else "greater than"
        sink.add(where, lambda: f"{show(value)} is {word} the maximum of {show(high)} (allowed: {allowed()})")


def _check_string(value: str, expected: ValueType, where: str, sink: _Sink) -> None:
    if _unpaired_surrogate(value):
        sink.add(where, f"the text {_SURROGATE}")
        return
    if expected.is_file and is_storage_ref(value):  # a file from cluster storage; any other input keeps the text
        try:
            parse_storage_ref(value)
        except ValueError as error:
            sink.add(where, f"{show(value)} {error}")
    length = len(value)

    def allowed() -> str:
        return allowed_range(expected.min_length, expected.max_length, unit=" characters")

    if expected.min_length is not None and length < expected.min_length:
        sink.add(where, lambda: f"{show(value)} is {length} characters long, shorter than the minimum of "
                 f"{expected.min_length} (allowed: {allowed()})")
    if expected.max_length is not None and length > expected.max_length:
        sink.add(where, lambda: f"{show(value)} is {length} characters long, longer than the maximum of "
                 f"{expected.max_length} (allowed: {allowed()})")
    pattern = expected.pattern
    compiled = compile_pattern(pattern) if pattern is not None else None
    if pattern is None or compiled is None:
        return
    work = compiled.programsize * (length if value.isascii() else len(value.encode()))
    if work > sink.pattern_work:
        if sink.warnings is not None:
            sink.warnings.add(where, lambda: (
                f"the model's pattern {_pattern(pattern)} was not checked here for this value (it would take "
                "too long); the model server will check it when the training starts"
            ))
        return
    sink.pattern_work -= work
    if compiled.search(value) is None:
        sink.add(where, lambda: f"{show(value)} does not match the pattern {_pattern(pattern)} "
                 "(allowed: strings in which that regular expression finds a match)")


def _check_items(value: list[Any], expected: ValueType, where: str, sink: _Sink, walked: bool) -> list[Any]:
    count = len(value)

    def allowed() -> str:
        return allowed_range(expected.min_items, expected.max_items, unit=" items")

    if expected.min_items is not None and count < expected.min_items:
        sink.add(where, lambda: f"the list has {count} items, fewer than the minimum of "
                 f"{expected.min_items} (allowed: {allowed()})")
    if expected.max_items is not None and count > expected.max_items:
        sink.add(where, lambda: f"the list has {count} items, more than the maximum of "
                 f"{expected.max_items} (allowed: {allowed()})")
    if expected.items is None:
        return value
    items = expected.items
    return [_check(item, items, f"{where}[{index}]", sink, walked) for index, item in enumerate(value)]


def _listing(names: list[str]) -> str:
    """Names joined with ", ", at most about _LISTED_NAMES_CHARS characters, then how many more."""
    shown: list[str] = []
    used = 0
    for name in names:
        text = _name(name)
        if used + len(text) > _LISTED_NAMES_CHARS and shown:
            return ", ".join(shown) + f", … and {len(names) - len(shown)} more"
        shown.append(text)
        used += len(text) + 2
    return ", ".join(shown) if shown else "none"


def _not_a_choice(value: Any, choices: tuple[Any, ...]) -> str:
    listed = ", ".join(show(c) for c in choices[:_SHOWN_CHOICES])
    if len(choices) > _SHOWN_CHOICES:
        listed += f", … and {len(choices) - _SHOWN_CHOICES} more"
    message = f"{show(value)} is not one of the allowed choices (allowed: {listed})"
    if isinstance(value, str) and len(value) <= _SUGGEST_CHARS:
        folded = value.lower()
        exact_case = next((c for c in choices if isinstance(c, str) and c.lower() == folded), None)
        close = [exact_case] if exact_case is not None else []
        words = [c for c in choices if isinstance(c, str) and len(c) <= _SUGGEST_CHARS]
        if not close and len(words) <= _SUGGEST_CANDIDATES:
            close = difflib.get_close_matches(value, words, n=1)
        if close:
            message += f"; did you mean {show(close[0])}?"
        if exact_case is not None:
            message += " Choices are case-sensitive."
    return message


def _suggest(name: str, candidates: list[str]) -> str | None:
    if len(name) > _SUGGEST_CHARS:
        return None
    key = name.replace("_", "").replace("-", "").lower()
    for candidate in candidates:
        if candidate.replace("_", "").replace("-", "").lower() == key:
            return candidate
    words = [c for c in candidates if len(c) <= _SUGGEST_CHARS]
    if len(words) > _SUGGEST_CANDIDATES:
        return None
    close = difflib.get_close_matches(name, words, n=1, cutoff=0.6)
    return close[0] if close else None


def _secret_source(name: str, is_list: bool) -> str:
    source = f"{{{_name(name)}: {{name: SECRET, key: KEY}}}}"
    return source + (", the key holding a JSON array of strings" if is_list else "")


def _env_bytes(name: str, value: Any) -> int:
    """The bytes of `COGTRAIN_INPUT_<name>=<json>` and its NUL: what exec counts against MAX_ARG_STRLEN."""
    return len(f"{INPUT_ENV_PREFIX}{name}=".encode()) + len(env_value(value).encode()) + 1


def _check_env(sent: dict[str, Any], sink: _Sink) -> None:
    """Refuse what the training Pod could not be started with: each input is one environment variable."""
    total = 0
    for name, value in sent.items():
        size = _env_bytes(name, value)
        total += size
        if size > ENV_STRING_BYTES:
            sink.add(f"input.{_name(name)}", (
                f"is {size} bytes as the training Pod passes it (the environment variable "
                f"{INPUT_ENV_PREFIX}{_name(name)} with its JSON value), more than the {ENV_STRING_BYTES} "
                f"bytes one environment variable can hold; {_LARGE_DATA}"
            ))
    if total > INPUTS_TOTAL_BYTES:
        sink.add("input", (
            f"the inputs are {total} bytes together as the training Pod passes them (one environment "
            f"variable each), more than the {INPUTS_TOTAL_BYTES} bytes allowed for all of them; {_LARGE_DATA}"
        ))


def _not_secret(takes: ValueType, secrets: _Names) -> str:
    listing = secrets.listing("; this model's {what} are: {names}") if secrets.names else ""
    return (f"is not a Secret input of this model (it takes {takes.describe()}): give it in spec.input instead"
            + (listing or ("" if secrets.names else "; this model has no Secret inputs")))


class _Names:
    """The model's input names for "unknown input" messages: listed once per result, fuzzy-matched."""

    def __init__(self, names: list[str], what: str) -> None:
        self.names = names
        self.what = what
        self.listed = False

    def unknown(self, name: str) -> str:
        suggestion = _suggest(name, self.names)
        message = "unknown input (Cog would silently ignore it)."
        if suggestion:
            message += f' Did you mean "{_name(suggestion)}"?'
        return message + self.listing(" This model's {what} are: {names}")

    def listing(self, template: str) -> str:
        """`template` filled with the names the first time, the empty string after that."""
        if self.listed:
            return ""
        self.listed = True
        return template.format(what=self.what, names=_listing(self.names))


def validate_input(
    schema: TrainingSchema,
    values: Any,
    secret_names: Iterable[str] = (),
) -> ValidationResult:
    """Judge `spec.input` (and the names in `spec.secretInputs`) against the training schema."""
    secret_names = list(secret_names)
    warnings = _Sink(what="warnings")
    problems = _Sink(warnings=warnings)
    sent: dict[str, Any] = {}
    storage: list[str] = []
    plain = _Names([n for n, s in schema.inputs.items() if not s.secret], "inputs")
    secrets = _Names(schema.secret_names, "Secret inputs")

    if values is None:
        values = {}
    if not isinstance(values, Mapping):
        problems.add("input", f"expected an object mapping input names to values, got {_kind(values)}")
        values = {}

    for raw_name, value in values.items():
        spec = schema.inputs.get(raw_name) if isinstance(raw_name, str) else None
        name = raw_name if isinstance(raw_name, str) else show(raw_name)
        where = f"input.{_name(name)}"
        if spec is None:
            problems.add(where, partial(plain.unknown, name))
            continue
        if spec.secret:
            if value is not None:
                problems.add(where, (
                    "is a Secret input: its value must not be written in spec.input; reference a "
                    f"Kubernetes Secret instead (secretInputs: {_secret_source(name, spec.secret_list)})"
                ))
            continue
        if spec.deprecated:
            warnings.add(where, _DEPRECATED)
        if value is None:
            if spec.required:
                takes = spec.value.describe()
                problems.add(where, f"null is not allowed: this input is required and takes {takes}")
            continue  # null means "not given": Cog applies its default (documented difference)
        before = problems.found
        normalized = _check(value, spec.value, where, problems)
        pattern = spec.value.pattern
        if pattern is not None and compile_pattern(pattern) is None:
            warnings.add(where, (
                f"the model's pattern {_pattern(pattern)} cannot be checked here; "
                "the model server will check it when the training starts"
            ))
        if problems.found == before:
            sent[name] = normalized
            if _takes_files(spec.value) and storage_refs(normalized):
                storage.append(name)

    given_secrets = []
    for name in secret_names:
        spec = schema.inputs.get(name)
        where = f"secretInputs.{_name(name)}"
        if spec is None:
            if secrets.names:
                problems.add(where, partial(secrets.unknown, name))
            else:
                problems.add(where, "unknown input: this model has no Secret inputs")
        elif not spec.secret:
            problems.add(where, partial(_not_secret, spec.value, secrets))
        else:
            given_secrets.append(name)
            if spec.deprecated:
                warnings.add(where, _DEPRECATED)

    given = set(given_secrets)
    for name, spec in schema.inputs.items():
        if not spec.required or name in values or name in given:
            continue
        if spec.secret:
            problems.add(f"secretInputs.{_name(name)}", (
                f"required Secret input is missing: add it to secretInputs as {_secret_source(name, spec.secret_list)}"
            ))
        else:
            problems.add(f"input.{_name(name)}", f"required input is missing; it takes {spec.value.describe()}")

    _check_env(sent, problems)
    if problems.found:
        sent = {}
    return ValidationResult(
        input=sent,
        problems=problems.listed(),
        warnings=warnings.listed(),
        secret_names=given_secrets,
        secret_list_names=[name for name in given_secrets if schema.inputs[name].secret_list],
        storage_input_names=storage if not problems.found else [],
    )


def _takes_files(expected: ValueType) -> bool:
    """A file input, or a list of them: where s3:// and pvc:// values name files in cluster storage."""
    return expected.is_file or (expected.type == "array" and expected.items is not None and expected.items.is_file)
