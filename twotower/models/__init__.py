"""Models: the layers, the batched towers, and the single- and two-tower language
models.

A model takes a batch and returns its loss (``model.loss(batch)``); hook points let the
analysis read any activation. It imports the foundations and ``data`` only.
"""
