"""``python -m twotower.book ...``: see :mod:`twotower.book.build`."""

from twotower.book.build import main

raise SystemExit(main())
