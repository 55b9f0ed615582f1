"""Named SQL blocks with named parameters, loaded from the ``.sql`` files beside this module.

A file holds blocks, each opened by a line ``-- name --`` (as Procrastinate's queries.sql);
the comment lines under it say why the statement is shaped the way it is. Parameters are
written ``:name`` and become asyncpg's ``$1, $2, …`` once, at import: callers bind them by
name (``await Q.get_job.fetchrow(conn, id=…, namespace=…)``), never by position, and no
SQL is ever built from values at run time.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from typing import Any

_BLOCK = re.compile(r"^-- ([a-z_][a-z0-9_]*) --$", re.MULTILINE)
# :name, but not the second colon of a ::type cast
_PARAM = re.compile(r"(?<![:\w]):([a-z_][a-z0-9_]*)")


class QueryError(Exception):
    """A query file is malformed or a query was bound with the wrong names."""


@dataclass(frozen=True, slots=True)
class Query:
    name: str
    text: str  # with $1..$n
    params: tuple[str, ...]  # the name of $1, $2, ...

    def args(self, **values: Any) -> tuple[Any, ...]:
        """The positional arguments of this statement, from its parameters by name."""
        if len(values) != len(self.params) or not values.keys() <= set(self.params):
            missing = sorted(set(self.params) - values.keys())
            extra = sorted(values.keys() - set(self.params))
            raise QueryError(f"query {self.name}: missing {missing}, unexpected {extra}")
        return tuple(values[name] for name in self.params)

    # ``conn`` is an asyncpg connection or pool (both have these methods).
    async def fetch(self, conn: Any, **values: Any) -> list[Any]:
        return list(await conn.fetch(self.text, *self.args(**values)))

    async def fetchrow(self, conn: Any, **values: Any) -> Any:
        return await conn.fetchrow(self.text, *self.args(**values))

    async def fetchval(self, conn: Any, **values: Any) -> Any:
        return await conn.fetchval(self.text, *self.args(**values))

    async def execute(self, conn: Any, **values: Any) -> str:
        return str(await conn.execute(self.text, *self.args(**values)))


class Queries:
    """The named queries of one file, as attributes (``Q.get_job``)."""

    def __init__(self, queries: dict[str, Query]) -> None:
        self._queries = queries

    def __getattr__(self, name: str) -> Query:
        try:
            return self._queries[name]
        except KeyError:
            raise AttributeError(f"no query named {name!r}") from None

    def __iter__(self) -> Iterator[Query]:
        return iter(self._queries.values())


def parse_queries(source: str) -> dict[str, Query]:
    """Every named block of a file, its parameters numbered in order of first use."""
    parts = _BLOCK.split(source)
    if parts[0].strip() and not all(line.startswith("--") or not line.strip()
                                    for line in parts[0].splitlines()):
        raise QueryError("SQL before the first '-- name --' line")
    queries: dict[str, Query] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in queries:
            raise QueryError(f"query {name} is defined twice")
        params: list[str] = []

        def number(match: re.Match[str], params: list[str] = params) -> str:
            param = match.group(1)
            if param not in params:
                params.append(param)
            return f"${params.index(param) + 1}"

        # Comments stay in the file for readers; the server gets the statement alone (and
        # a ":word" in a comment is never taken for a parameter).
        code = "\n".join(line.split("--", 1)[0].rstrip() for line in body.splitlines())
        text = _PARAM.sub(number, "\n".join(ln for ln in code.splitlines() if ln)).strip()
        if not text:
            raise QueryError(f"query {name} is empty")
        queries[name] = Query(name, text, tuple(params))
    return queries


def load_queries(filename: str) -> Queries:
    """The queries of one ``.sql`` file of this package."""
    source = (resources.files(__package__) / filename).read_text()
    return Queries(parse_queries(source))
