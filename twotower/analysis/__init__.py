"""Analysis: the instruments that read a trained model and the statistics behind them.

Preference, stability within and across seeds, probes, neurons, and the one home of the
statistics (``stats``: bootstrap, permutation p, Holm). Lower layers only; no run cache.
"""
