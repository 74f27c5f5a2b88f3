"""Running the command line in-process, for the tests of the CLI and of run folders."""

from __future__ import annotations

from twotower.cli import main


def cli(argv: list, capsys) -> tuple[int, str, str]:
    """Run the CLI in-process: ``(exit status, stdout, stderr)``."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exit_:  # argparse exits instead of returning
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def lines(text: str) -> list[str]:
    """The non-blank lines of ``text``."""
    return [line for line in text.splitlines() if line.strip()]
