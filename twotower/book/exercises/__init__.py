"""Checks for the book's exercises (ARENA style): one module per chapter.

Introduced in chapter 1 (*Is language divisible?*).

An exercise in a chapter is a stub cell, a hidden solution, and a check cell::

    from twotower.book.exercises import ch01 as ex

    token_preference = ex.check_token_preference(token_preference)

Every ``check_*`` calls the reader's function on several inputs, compares the result
with a reference implementation, prints one line ``✔ check_... passed: ...`` and
returns the reader's function. On a mismatch, or a stub not yet written, it prints one
line ``✘ check_...: what differed. Hint: ...`` and returns the package's reference,
saying so, so that the rest of the chapter still runs; ``strict=True`` raises an
:class:`AssertionError` with that message instead. It never lets a traceback from
inside NumPy or torch through.

``framework`` supplies what every check shares: its decorator
:func:`twotower.book.exercises.framework.exercise` gives the name, the pass line and the
failure format. ``ch01`` ... ``ch14`` hold each chapter's checks with their cases, hints
and references (``reference_*``). Every check is also importable from here under its
own name.

Adding a check (for the authors of later chapters): in your chapter's module, write the
reference (a function of the package where there is one), decorate the check's body
with ``@exercise(reference, hint=...)``, state the cases and compare with
``attempt.compare`` (or ``attempt.call``, ``attempt.close`` and ``attempt.fail``), and
add broken variants to your chapter's ``tests/test_checks*.py`` (a test fails for any
check without one).
"""

from twotower.book.exercises.ch01 import (check_centred_preference,
                                          check_split_half_correlation,
                                          check_token_preference)
from twotower.book.exercises.ch02 import (check_conditional_entropy,
                                          check_permutation_p_value,
                                          check_split_correlation)
from twotower.book.exercises.ch03 import (check_fertility, check_rank_frequency,
                                          check_windows_crossing_articles)
from twotower.book.exercises.ch04 import (check_causal_mask, check_mask_tokens,
                                          check_predicted_influence)
from twotower.book.exercises.ch05 import (check_fused_head_parameters,
                                          check_zero_tower_hook)
from twotower.book.exercises.ch06 import (check_learning_rate,
                                          check_train_flops_per_token)
from twotower.book.exercises.ch07 import (check_paired_difference,
                                          check_readout_optimizer)
from twotower.book.exercises.ch08 import (check_preference_table,
                                          check_split_half_ceiling)
from twotower.book.exercises.ch09 import (check_aligned_correlation,
                                          check_disattenuated_correlation)
from twotower.book.exercises.ch10 import check_cohens_d, check_stratified_difference
from twotower.book.exercises.ch11 import check_holm, check_verdict
from twotower.book.exercises.ch12 import (check_effective_dimensionality,
                                          check_rare_half)
from twotower.book.exercises.ch13 import (check_activation_probability,
                                          check_lape_entropy)
from twotower.book.exercises.ch14 import check_loss_per_char, check_steps_to_reach
