"""``python -m twotower ...``: see :mod:`twotower.cli`."""

from .cli import main

raise SystemExit(main())
