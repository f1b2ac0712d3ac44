"""Finds convolutions inside while loops of a lowered JAX program (StableHLO text).

XLA:CPU runs convolutions inside while loops many times slower (jax-ml/jax#12868;
measured in ``benchmarks/RESULTS.md``, section 1, the rolled-scan row), and a
``lax.scan`` that is not fully unrolled (even of length 1) is such a loop. Used by
tests/test_train.py and the benchmarks (`benchmarks.jax_workers`).
"""

from __future__ import annotations

import re
from collections.abc import Callable


def _blocks(
    lines: list[str], opens: Callable[[str], bool], closes_after: str | None = None
) -> list[list[str]]:
    """Line blocks from an opening line to the ``}`` at its indentation (after ``closes_after``)."""
    blocks = []
    for i, line in enumerate(lines):
        if not opens(line):
            continue
        indent = " " * (len(line) - len(line.lstrip()))
        armed = closes_after is None
        for j in range(i + 1, len(lines)):
            if lines[j] == indent + (closes_after or ""):
                armed = True
            elif armed and lines[j] == indent + "}":
                blocks.append(lines[i : j + 1])
                break
    return blocks


def convolutions_in_while_loops(stablehlo: str) -> int:
    """How many while loops of a StableHLO module reach a convolution (through calls too).

    While loops without convolutions (e.g. the random-bit generator's rounds) don't count.
    """
    lines = stablehlo.splitlines()
    functions = {
        re.search(r"@([\w.$-]+)\(", block[0]).group(1): "\n".join(block)
        for block in _blocks(lines, lambda line: line.lstrip().startswith("func.func"))
    }

    def reaches_conv(text: str, seen: set[str]) -> bool:
        if "stablehlo.convolution" in text:
            return True
        callees = set(re.findall(r"func\.call @([\w.$-]+)", text)) - seen
        seen |= callees
        return any(reaches_conv(functions[c], seen) for c in callees)

    loops = _blocks(lines, lambda line: "stablehlo.while(" in line, closes_after="} do {")
    return sum(reaches_conv("\n".join(loop), set()) for loop in loops)
