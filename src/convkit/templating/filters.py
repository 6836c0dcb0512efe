"""Locale-aware Jinja filters from Babel: the job's ``locale`` decides how dates, numbers and
money look, in every template engine.

JSON has no dates: a date filter takes a ``datetime``/``date``/``time`` or an ISO 8601 string
(``"2026-01-15"``, ``"2026-01-15T09:30:00Z"``). The locale comes from
:func:`convkit.templating.scope.render_scope`, so the same compiled template serves every locale.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import babel.dates
import babel.numbers
import jinja2

from convkit.errors import TemplateError
from convkit.templating.scope import current_locale

__all__ = ["FILTERS", "current_locale"]


def _parse_iso(value: str) -> dt.datetime | dt.date | dt.time:
    text = value.strip()
    for parse in (dt.date.fromisoformat, dt.datetime.fromisoformat, dt.time.fromisoformat):
        try:
            return parse(text.replace("Z", "+00:00"))
        except ValueError:
            continue
    raise TemplateError(f"{value!r} is not an ISO 8601 date, time or datetime")


def _temporal(value: Any) -> Any:
    if isinstance(value, str):
        return _parse_iso(value)
    if isinstance(value, dt.date | dt.time):
        return value
    raise TemplateError(f"expected a date/time or an ISO 8601 string, got {type(value).__name__}")


def _number(value: Any) -> int | float | Decimal:
    if isinstance(value, bool):
        raise TemplateError("expected a number, got a boolean")
    if isinstance(value, int | float | Decimal):
        return value
    if isinstance(value, str):
        try:
            return Decimal(value.strip())
        except ArithmeticError:
            pass
    raise TemplateError(f"expected a number, got {value!r}")


def format_date(value: Any, format: str = "medium") -> str:  # Babel's name
    """``{{ "2026-01-15"|format_date }}`` -> ``Jan 15, 2026`` (en_US), ``15.01.2026`` (de_DE)."""
    v = _temporal(value)
    if isinstance(v, dt.time):
        raise TemplateError("format_date needs a date, got a time")
    return babel.dates.format_date(v, format=format, locale=current_locale())


def format_datetime(value: Any, format: str = "medium", tzinfo: str | None = None) -> str:
    """A datetime in the locale's format; ``tzinfo`` (e.g. ``"Europe/Berlin"``) converts it."""
    v = _temporal(value)
    if not isinstance(v, dt.datetime):
        if isinstance(v, dt.date):
            v = dt.datetime.combine(v, dt.time())
        else:
            raise TemplateError("format_datetime needs a date or datetime")
    zone = babel.dates.get_timezone(tzinfo) if tzinfo else None
    return babel.dates.format_datetime(v, format=format, tzinfo=zone, locale=current_locale())


def format_time(value: Any, format: str = "medium") -> str:
    """A time (or the time of a datetime) in the locale's format."""
    v = _temporal(value)
    if isinstance(v, dt.date) and not isinstance(v, dt.datetime):
        raise TemplateError("format_time needs a time or datetime, got a date")
    return babel.dates.format_time(v, format=format, locale=current_locale())


def format_decimal(value: Any, format: str | None = None) -> str:
    """``{{ 1234.5|format_decimal }}`` -> ``1,234.5`` (en_US), ``1.234,5`` (de_DE)."""
    return babel.numbers.format_decimal(_number(value), format=format, locale=current_locale())


def format_number(value: Any) -> str:
    """A number with the locale's grouping and decimal separators."""
    return babel.numbers.format_decimal(_number(value), locale=current_locale())


def format_currency(value: Any, currency: str, format: str | None = None) -> str:
    """``{{ 9.5|format_currency("EUR") }}`` -> ``€9.50`` (en_US), ``9,50 €`` (de_DE).

    :raises ValueError: ``currency`` is not an ISO 4217 code Babel knows (Babel itself would
        print any string as the symbol).
    """
    if not babel.numbers.is_currency(currency):
        raise ValueError(f"unknown currency code {currency!r} (use ISO 4217, such as 'EUR')")
    return babel.numbers.format_currency(
        _number(value), currency, format=format, locale=current_locale()
    )


def format_percent(value: Any, format: str | None = None) -> str:
    """``{{ 0.25|format_percent }}`` -> ``25%``."""
    return babel.numbers.format_percent(_number(value), format=format, locale=current_locale())


def format_timedelta(
    value: Any,
    granularity: str = "second",
    threshold: float = 0.85,
    format: str = "long",
) -> str:
    """Seconds (a number) or a timedelta -> ``3 hours`` / ``3 Stunden``."""
    delta = (
        value if isinstance(value, dt.timedelta) else dt.timedelta(seconds=float(_number(value)))
    )
    fmt: Any = format  # Babel types these as Literals; a wrong one is a ValueError -> TemplateError
    unit: Any = granularity
    return babel.dates.format_timedelta(
        delta,
        granularity=unit,
        threshold=threshold,
        format=fmt,
        locale=current_locale(),
    )


def _wrap(fn: Callable[..., str]) -> Callable[..., str]:
    # pass_context, though the context is unused: Jinja folds filters on constants at compile
    # time (`{{ 0.25|format_percent }}`), which would freeze the compiling job's locale into a
    # template that the cache shares with every locale. A context filter is never folded.
    @jinja2.pass_context
    def filter_(_context: Any, *args: Any, **kwargs: Any) -> str:
        try:
            return fn(*args, **kwargs)
        except TemplateError:
            raise
        except (ValueError, TypeError, LookupError, ArithmeticError) as exc:
            # Babel's errors for a bad pattern, currency or time zone: the template's fault.
            raise TemplateError(f"{fn.__name__}: {exc}") from exc

    filter_.__name__ = fn.__name__
    filter_.__doc__ = fn.__doc__
    return filter_


#: Filter name -> function, installed in every environment by ``make_environment``.
FILTERS: dict[str, Callable[..., str]] = {
    fn.__name__: _wrap(fn)
    for fn in (
        format_date,
        format_datetime,
        format_time,
        format_number,
        format_decimal,
        format_currency,
        format_percent,
        format_timedelta,
    )
}
