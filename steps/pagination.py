"""Keyset (cursor) pagination: pages stay exact while rows are being inserted.

A cursor is opaque to clients: base64url of a small JSON object holding the last row's key, the
order and what it pages over. The next page starts strictly after that key, so a row is never
repeated or skipped because another row arrived meanwhile.
"""

import base64
import binascii
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db.models import Q, QuerySet
from django.utils.dateparse import parse_datetime

from config.errors import ApplicationError

MAX_LIMIT = 1000
DEFAULT_LIMIT = 50
ORDERS = ("asc", "desc")


@dataclass(frozen=True, slots=True)
class Page:
    """One page of rows and the cursor for the next one (None when this is the last page)."""

    items: list[Any]
    next_cursor: str | None

    @property
    def has_more(self) -> bool:
        return self.next_cursor is not None


def _bad_cursor(reason: str) -> ApplicationError:
    return ApplicationError("Invalid cursor.", extra={"cursor": [reason]})


def encode_cursor(*, kind: str, order: str, key: list[Any]) -> str:
    payload = {"k": kind, "o": order, "v": [v.isoformat() if isinstance(v, datetime) else v for v in key]}
    raw = json.dumps(payload, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, *, kind: str, order: str, types: tuple[type, ...]) -> list[Any]:
    """The key a cursor points after; a cursor from another list or order, or a forged one, is a 400."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        payload = json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (binascii.Error, ValueError, UnicodeDecodeError) as exc:
        raise _bad_cursor("Not a cursor returned by this API.") from exc
    if not isinstance(payload, dict) or payload.get("k") != kind:
        raise _bad_cursor("This cursor belongs to another list.")
    if payload.get("o") != order:
        raise _bad_cursor(f"This cursor was made for order={payload.get('o')}; pass the same order.")
    values = payload.get("v")
    if not isinstance(values, list) or len(values) != len(types):
        raise _bad_cursor("Not a cursor returned by this API.")
    key: list[Any] = []
    for value, expected in zip(values, types, strict=True):
        if expected is datetime:
            parsed = parse_datetime(value) if isinstance(value, str) else None
            if parsed is None or parsed.tzinfo is None:
                raise _bad_cursor("Not a cursor returned by this API.")
            key.append(parsed)
        elif (expected is int and type(value) is int) or (expected is str and isinstance(value, str)):
            key.append(value)
        else:
            raise _bad_cursor("Not a cursor returned by this API.")
    return key


def keyset_page(
    *,
    queryset: QuerySet,
    kind: str,
    fields: tuple[str, str],
    types: tuple[type, type],
    order: str = "desc",
    limit: int = DEFAULT_LIMIT,
    cursor: str | None = None,
) -> Page:
    """One page of `queryset` ordered by the two `fields` (a unique key), after `cursor`."""
    _check(order=order, limit=limit)
    first, second = fields
    if cursor:
        a, b = decode_cursor(cursor, kind=kind, order=order, types=types)
        queryset = _from_key(queryset, fields=fields, key=(a, b), order=order, inclusive=False)
    prefix = "-" if order == "desc" else ""
    rows = list(queryset.order_by(f"{prefix}{first}", f"{prefix}{second}")[: limit + 1])
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        last = rows[-1]
        key = [_value(last, first), _value(last, second)]
        next_cursor = encode_cursor(kind=kind, order=order, key=key)
    return Page(items=rows, next_cursor=next_cursor)


def _value(row: Any, field: str) -> Any:
    return row[field] if isinstance(row, dict) else getattr(row, field)


def _check(*, order: str, limit: int) -> None:
    if order not in ORDERS:
        raise ApplicationError("Invalid order.", extra={"order": ["Must be asc or desc."]})
    if not 1 <= limit <= MAX_LIMIT:
        raise ApplicationError("Invalid limit.", extra={"limit": [f"Must be between 1 and {MAX_LIMIT}."]})


def _from_key(
    queryset: QuerySet, *, fields: tuple[str, str], key: tuple[Any, Any], order: str, inclusive: bool
) -> QuerySet:
    """Rows after `key` in `order` (and the row at `key` itself when `inclusive`)."""
    first, second = fields
    a, b = key
    op = "lt" if order == "desc" else "gt"
    second_op = f"{op}e" if inclusive else op
    # The redundant bound on the first field lets the index range scan start at the cursor.
    return queryset.filter(
        Q(**{f"{first}__{op}e": a}) & (Q(**{f"{first}__{op}": a}) | Q(**{first: a, f"{second}__{second_op}": b}))
    )


def expanded_keyset_page(
    *,
    queryset: QuerySet,
    kind: str,
    fields: tuple[str, str],
    types: tuple[type, type],
    expand: Callable[[Any], list[Any]],
    order: str = "asc",
    limit: int = DEFAULT_LIMIT,
    cursor: str | None = None,
) -> Page:
    """A page of at most `limit` ITEMS, where each row of `queryset` expands into its items (`expand(row)`: several,
    one or none, e.g. one stored message into reasoning, text and tool-call messages).

    Ordered as keyset_page orders rows, items in their row's order (reversed for desc). The cursor holds the key of
    the row the page stopped in and how many of its items were already returned, so a row cut by the limit goes on
    where it stopped.
    """
    _check(order=order, limit=limit)
    first, second = fields
    skip_key: tuple[Any, Any] | None = None
    skip = 0
    if cursor:
        a, b, skip = decode_cursor(cursor, kind=kind, order=order, types=(*types, int))
        skip_key = (a, b)
        queryset = _from_key(queryset, fields=fields, key=skip_key, order=order, inclusive=True)
    prefix = "-" if order == "desc" else ""
    queryset = queryset.order_by(f"{prefix}{first}", f"{prefix}{second}")
    items: list[Any] = []
    positions: list[tuple[Any, Any, int]] = []  # (first, second, items of that row returned up to this one)
    offset = 0
    while len(items) <= limit:  # one item more than the page says whether there is a next page
        rows = list(queryset[offset : offset + limit + 1])
        for row in rows:
            key = (_value(row, first), _value(row, second))
            expanded = expand(row)
            if order == "desc":
                expanded = expanded[::-1]
            start = skip if key == skip_key else 0
            for index in range(start, len(expanded)):
                items.append(expanded[index])
                positions.append((*key, index + 1))
            if len(items) > limit:
                break
        if len(rows) <= limit:
            break
        offset += len(rows)
    next_cursor = None
    if len(items) > limit:
        items = items[:limit]
        next_cursor = encode_cursor(kind=kind, order=order, key=list(positions[limit - 1]))
    return Page(items=items, next_cursor=next_cursor)
