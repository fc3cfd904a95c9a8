"""The README's "What we tried" table, generated from the bad-input tests' own parameters, so it cannot drift.

    python tools/catalogue.py          # print the table
    python tools/catalogue.py --write  # rewrite it in README.md, between the catalogue markers

Each row is one `pytest.param` of a table in tests/io/test_bad_inputs.py or test_bad_inputs_more.py: the command it
runs, the input (the case's id), the exit code and the words the one-line error must hold. tests/test_catalogue.py
checks that the README holds exactly this text.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
START, END = "<!-- catalogue:start -->", "<!-- catalogue:end -->"


def tables() -> list[tuple[str, list]]:
    """(command, cases) of every catalogue table the tests hold (tests/io/test_bad_inputs.py,
    test_bad_inputs_more.py and test_bad_inputs_runs.py, whose cases each name their command: command None)."""
    sys.path.insert(0, str(REPO))
    from tests.io.test_bad_inputs import DEDUP_CASES, INSPECT_CASES
    from tests.io.test_bad_inputs_more import (
        CONFIG_CASES,
        LABEL_CASES,
        LEXICON_CASES,
        SPEC_CASES,
        ZERO_SHOT_CASES,
    )
    from tests.io.test_bad_inputs_runs import RUN_CASES

    audit = "sanitize audit MANIFEST --filter COND --attribute"
    return [("sanitize dedup SOURCE --out OUT", DEDUP_CASES), ("sanitize inspect MANIFEST", INSPECT_CASES),
            ("sanitize label add CATEGORY FILE --project P --run R", LABEL_CASES),
            ("sanitize run MANIFEST --config FILE --out OUT --dry-run", CONFIG_CASES),
            ("sanitize label init P --spec FILE", SPEC_CASES),
            (f"{audit} lexicon:FILE --out OUT", LEXICON_CASES),
            (f"{audit} zero-shot:FILE --out OUT", ZERO_SHOT_CASES), (None, RUN_CASES)]


def render() -> str:
    """The markdown table: command, input, extra options, exit code, what the one error line says."""
    lines = ["| command | input | options | exit | the one error line holds |", "|---|---|---|---:|---|"]
    found = tables()  # (puts the repository on the path)
    from tests.io.test_bad_inputs_runs import COMMANDS

    for command, cases in found:
        for case in cases:
            _, args, code, message = case.values
            shown = command
            if command is None:  # the case's first option names the command that reads the bad input
                shown, args = f"sanitize {COMMANDS[args[0]]}", args[1:]
            root = " (skipped as root)" if any(m.name == "skipif" for m in case.marks) else ""
            options = " ".join(f"`{a}`" for a in args) or ""
            words = message.replace("|", "\\|")
            lines.append(f"| `{shown}` | {case.id.replace('-', ' ')}{root} | {options} | {code} | {words} |")
    return "\n".join(lines) + "\n"


def replaced(text: str, table: str) -> str:
    """`text` with the part between the catalogue markers replaced by `table`; ValueError without the markers."""
    start, end = text.index(START) + len(START), text.index(END)
    return text[:start] + "\n" + table + text[end:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="rewrite the table in README.md")
    args = parser.parse_args()
    table = render()
    if args.write:
        README.write_text(replaced(README.read_text(), table))
    else:
        print(table, end="")


if __name__ == "__main__":
    main()
