"""Book: what a chapter needs beside the package, and the build that runs the chapters.

``setup`` prepares a chapter, ``live`` and ``widgets`` draw and take input,
``exercises`` holds one module of checks per chapter, and ``build`` (with ``notebooks``,
``execution``, ``manifest`` and ``vendor``) executes the chapters that changed and
renders the HTML (``python -m twotower.book``).
"""
