"""Training: the loop, its optimiser and schedule, checkpoints, devices and precision.

Phase 1 trains a model, phases 2 and 3 its readouts on frozen towers; a stacked trainer
runs many seeds as one computation. It imports foundations, ``data`` and ``models``.
"""
