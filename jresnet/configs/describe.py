"""Every config key with its default and its comment, for ``jresnet train --help``.

The comments live where a reader of the config expects them, in ``default.py``, and are
read from its source: in ``get_config``,

- a comment block that follows a blank line starts a section; its first line is the
  section's title (``# Model.``);
- a key's comment is the comment at the end of its assignment line, else the comment
  lines directly above it that are not a section title, joined into one line.

``tests/test_config_describe.py`` checks that every key of ``default.get_config()`` has
one, so a key added without a comment fails the tests.
"""

from __future__ import annotations

import ast
import dataclasses
import io
import textwrap
import tokenize
from pathlib import Path

import ml_collections

DEFAULT_CONFIG_FILE = Path(__file__).with_name("default.py")


@dataclasses.dataclass(frozen=True)
class KeyDoc:
    """One config key as ``default.py`` documents it."""

    key: str
    section: str  # the title of its section, e.g. "Model"; "" before the first title
    comment: str  # one line, without "#"


def key_docs(source: str) -> list[KeyDoc]:
    """The ``config.KEY = ...`` assignments of ``source``'s ``get_config``, in file order."""
    comments = {
        token.start[0]: token.string.lstrip("#").strip()
        for token in tokenize.generate_tokens(io.StringIO(source).readline)
        if token.type == tokenize.COMMENT
    }
    lines = source.splitlines()
    function = next(
        node
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.FunctionDef) and node.name == "get_config"
    )
    docs, section = [], ""
    for statement in function.body:
        above, line = [], statement.lineno - 1  # 1-based number of the line above
        while line in comments and lines[line - 1].lstrip().startswith("#"):
            above.insert(0, comments[line])
            line -= 1
        if above and (line == function.lineno or not lines[line - 1].strip()):
            section, above = above[0].rstrip("."), above[1:]  # a block after a blank line
        target = statement.targets[0] if isinstance(statement, ast.Assign) else None
        if (
            isinstance(target, ast.Attribute)
            and isinstance(target.value, ast.Name)
            and target.value.id == "config"
        ):
            trailing = comments.get(statement.end_lineno, "")
            docs.append(KeyDoc(target.attr, section, trailing or " ".join(above)))
    return docs


def describe(config: ml_collections.ConfigDict, docs: list[KeyDoc], width: int = 100) -> str:
    """``config``'s keys by section: ``KEY = VALUE`` and, indented below, the comment."""
    out, section = [], None
    for doc in docs:
        if doc.key not in config:
            continue
        if doc.section != section:
            section = doc.section
            out.append(f"\n{section}:" if section else "")
        out.append(f"  --config.{doc.key}={_as_typed(config[doc.key])}")
        if doc.comment:
            out.append(
                textwrap.fill(doc.comment, width, initial_indent=" " * 6, subsequent_indent=" " * 6)
            )
    return "\n".join(out).strip("\n")


def describe_default(config: ml_collections.ConfigDict, width: int = 100) -> str:
    """`describe` with the comments of ``default.py``."""
    return describe(config, key_docs(DEFAULT_CONFIG_FILE.read_text()), width)


def _as_typed(value: object) -> str:
    """``value`` as one types it after ``--config.KEY=`` (an empty string as ``''``)."""
    if isinstance(value, str):
        return value or "''"
    return str(value)
