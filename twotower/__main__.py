"""``python -m twotower ...``: see :mod:`twotower.cli`."""

from twotower.cli import main

raise SystemExit(main())
