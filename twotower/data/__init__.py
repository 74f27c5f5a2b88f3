"""Data: text in, token windows and training targets out.

Where each corpus comes from, its tokenizer, the windows and batches a model reads, the
objectives that turn a window into targets, synthetic languages and UD treebanks. It
imports only the foundations (``config``, ``errors``, ``atomic``).
"""
