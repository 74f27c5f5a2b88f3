"""Book: what the chapters need beside the package, and the build that runs them.

``display`` sets a notebook up and draws live, ``exercises`` holds one module of checks
per chapter, and ``build`` executes the chapters (``python -m twotower.book``).
"""
