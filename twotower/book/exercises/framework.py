"""The frame every exercise check shares: its name, pass line and failure format.

Introduced in chapter 1 (*Is language divisible?*).

A check is written once as a body that states its cases and what it compares, and
:func:`exercise` turns it into the ``check_*`` function a chapter calls::

    @exercise(reference_centred_preference, hint="Hint: subtract the mean ...")
    def check_centred_preference(attempt: Attempt) -> str:
        \"\"\"Check ``centred_preference(pref)``: ...\"\"\"
        return attempt.compare(cases, lambda c: "...", "cases, NaN kept")

The reader writes ``centred_preference = check_centred_preference(centred_preference)``.
The body receives an :class:`Attempt` (the reader's function, the reference and the
hint) and returns what the pass line says after ``passed:``; the frame prints
``✔ check_... passed: ...`` and hands the reader's function back. A mismatch (or a stub
that still raises ``NotImplementedError``) prints the one-line ``✘ check_...: what
differed. Hint: ...`` and hands back the package's reference instead, saying so: a
student who skips an exercise can still run the rest of the chapter, which goes on with
whatever the check returned. With ``strict=True`` (tests, grading) a mismatch raises
:class:`ExerciseFailed`, an :class:`AssertionError` with that message; no traceback
from inside NumPy, torch or the check itself reaches the reader either way.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, NoReturn

import numpy as np


class ExerciseFailed(AssertionError):
    """An exercise check failed (raised without the chain of library frames)."""


def _describe(kwargs: dict[str, Any]) -> str:
    parts = []
    for key, value in kwargs.items():
        if isinstance(value, np.ndarray):
            parts.append(f"{key}=<array shape {value.shape}>")
        else:
            parts.append(f"{key}={value!r}")
    return ", ".join(parts)


@dataclass(frozen=True)
class Attempt:
    """One call of a check: the reader's function and what it is compared with.

    Attributes:
        name: The check's name, ``check_...``, which starts every message.
        function: What the reader passed in.
        reference: The reference implementation.
        hint: ``Hint: ...``, added to every message about a wrong result.
    """

    name: str
    function: Any
    reference: Callable
    hint: str

    def fail(self, text: str, *, hint: bool = True) -> NoReturn:
        """Raise ``✘ <name>: <text> <hint>``, without the hint if ``hint=False``."""
        message = f"✘ {self.name}: {text} {self.hint if hint else ''}".strip()
        raise ExerciseFailed(message) from None

    def call(self, **kwargs: Any) -> Any:
        """Call the reader's function on copies of the inputs; report a crash."""
        if not callable(self.function):
            self.fail(f"expected a function, got {type(self.function).__name__}; pass "
                      "the function itself, without calling it", hint=False)
        copies = {key: value.copy() if isinstance(value, np.ndarray) else value
                  for key, value in kwargs.items()}
        try:
            return self.function(**copies)
        except NotImplementedError:
            self.fail("the function still raises NotImplementedError; replace that "
                      "line with your code", hint=False)
        except Exception as error:  # the reader's bug, shown in one line
            self.fail(f"your function raised {type(error).__name__}: {error} (inputs: "
                      f"{_describe(kwargs)})", hint=False)

    def one_number(self, got: Any) -> None:
        """Fail unless ``got`` is a single number."""
        if np.ndim(got) != 0:
            self.fail(f"returned shape {np.shape(got)}, expected one number.")

    def close(self, got: Any, expected: Any, case: str, atol: float = 1e-6,
              rtol: float = 1e-5) -> None:
        """Compare arrays or numbers, NaN in the same places; ``case`` says which."""
        expected = np.asarray(expected, dtype=float)
        try:
            got_array = np.asarray(got, dtype=float)
        except (TypeError, ValueError):
            self.fail(f"returned {type(got).__name__}, expected numbers ({case}).")
        if got_array.shape != expected.shape:
            self.fail(f"returned shape {got_array.shape}, expected {expected.shape} "
                      f"({case}).")
        nan_got, nan_expected = np.isnan(got_array), np.isnan(expected)
        if (nan_got != nan_expected).any():
            where = np.flatnonzero((nan_got != nan_expected).ravel())[:5].tolist()
            self.fail(f"NaN where a number was expected or the other way round, at "
                      f"flat index {where} ({case}).")
        finite = ~nan_expected
        if not np.allclose(got_array[finite], expected[finite], atol=atol, rtol=rtol):
            error = np.abs(got_array[finite] - expected[finite])
            worst = int(np.argmax(error))
            self.fail(f"values differ from the reference (largest error "
                      f"{error[worst]:.3g}: got {got_array[finite][worst]:.6g}, "
                      f"expected {expected[finite][worst]:.6g}; {case}).")

    def compare(self, cases: list[dict[str, Any]], describe: Callable[[dict], str],
                summary: str, *, scalar: bool = False, atol: float = 1e-6,
                rtol: float = 1e-5) -> str:
        """The body of most checks: call the reader's function on every case and
        compare with the reference (``describe(case)`` says which case differed).

        Args:
            scalar: One number expected from each call.

        Returns:
            The pass line's detail: ``<number of cases> <summary>``.
        """
        for case in cases:
            got = self.call(**case)
            if scalar:
                self.one_number(got)
            self.close(got, self.reference(**case), describe(case), atol=atol,
                       rtol=rtol)
        return f"{len(cases)} {summary}"


def exercise(reference: Callable, hint: str) -> Callable:
    """Turn a check's body into the ``check_*`` function a chapter calls.

    Args:
        reference: The reference implementation, kept as the check's ``reference``.
        hint: ``Hint: ...``, added to every message about a wrong result.

    Returns:
        A decorator. The body ``check_name(attempt) -> str`` becomes
        ``check_name(name, strict=False)``, whose first argument is the reader's
        function. It prints ``✔ check_name passed: <what the body returned>`` and
        returns that function; on a mismatch it prints the ``✘`` line and returns
        ``reference``, saying so, or with ``strict=True`` raises
        :class:`ExerciseFailed`.
    """

    def decorate(body: Callable[[Attempt], str]) -> Callable[..., Callable]:
        name = body.__name__

        def check(*args: Any, **kwargs: Any) -> Callable:
            __tracebackhide__ = True  # pytest and IPython leave this frame out
            # the function by position or by its name: check_x(x) or check_x(x=x)
            bound = check.__signature__.bind(*args, **kwargs)
            function, strict = bound.arguments[argument], \
                bound.arguments.get("strict", False)
            try:
                detail = body(Attempt(name, function, reference, hint))
            except ExerciseFailed as failure:  # drop the frames inside the check
                if strict:
                    raise failure.with_traceback(None) from None
                print(f"{failure}\n→ the rest of this chapter uses the package's "
                      f"reference instead: {reference.__module__}."
                      f"{reference.__qualname__}")
                return reference
            print(f"✔ {name} passed: {detail}")
            return function

        # what the reader sees: check_name(name, strict=False), the body's docstring
        check.__module__, check.__doc__ = body.__module__, body.__doc__
        check.__name__, check.__qualname__ = name, body.__qualname__
        argument = name.removeprefix("check_")
        check.__annotations__ = {argument: "Callable", "strict": "bool",
                                 "return": "Callable"}
        check.__signature__ = inspect.Signature(
            [inspect.Parameter(argument, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                               annotation="Callable"),
             inspect.Parameter("strict", inspect.Parameter.KEYWORD_ONLY,
                               default=False, annotation="bool")],
            return_annotation="Callable")
        check.reference = reference
        return check

    return decorate
