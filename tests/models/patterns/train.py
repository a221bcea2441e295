"""A test-only model whose `regex` inputs probe what each pattern construct means to Cog's server.

Cog 0.23 checks `pattern` with the `jsonschema` crate on Rust's linear-time `regex`; the operator
checks it with RE2 after translating (cogtrain.schema.re2_pattern), or leaves it to the server.
Every pattern here must also compile with Python's `re`, and match its default with `re.match`:
Cog's Python SDK checks both when it loads the model.
"""

from cog import Input


def train(
    space: str = Input(description="One whitespace character", default=" ", regex=r"^\s$"),
    not_space: str = Input(description="One character that is not whitespace", default="x", regex=r"^\S$"),
    code_point: str = Input(description="The letter A, by code point", default="A", regex=r"^\u0041$"),
    lines: str = Input(description="Lowercase lines", default="abc", regex=r"(?m)^[a-z]+$"),
    nested: str = Input(description="A catastrophic pattern for a backtracking engine", default="aa", regex=r"^(a+)+$"),
    word_end: str = Input(description="x, then a word boundary", default="x", regex=r"^x\b"),
    after_a: str = Input(description="Any character, then b if that was an a", default="ab", regex=r"^.(?<=a)b"),
    twice: str = Input(description="The same character twice", default="aa", regex=r"^(.)\1$"),
) -> str:
    return "ok"
