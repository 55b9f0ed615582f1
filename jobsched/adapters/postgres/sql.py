"""Named SQL blocks with named parameters, loaded from the ``.sql`` files beside this module.

A file holds blocks, each opened by a line ``-- name --`` (as Procrastinate's queries.sql);
the comment lines under it say why the statement is shaped the way it is. Parameters are
written ``:name`` and become asyncpg's ``$1, $2, …`` once, at import: callers bind them by
name (``await Q.get_job.fetchrow(conn, id=…, namespace=…)``), never by position, and no
SQL is ever built from values at run time.

A block that joins a batch of ids (``unnest`` of arrays) to executions says
``-- plan: generic`` in a comment line: it then runs on a generic plan
(``plan_cache_mode = force_generic_plan``, for its own transaction only: ``SET LOCAL``).
asyncpg prepares every statement, and PostgreSQL gives a connection's first five
executions custom plans. With the batch's arrays in view and no statistics on a day
partition filled moments ago (a herd or burn-down all due at one instant), the custom plans
of these statements took the partition for "one row" and compared every row of it with
every batch row: 2.4-4.2 s for a claim of 600 on a partition of 20,000 against 23-33 ms on
the generic plan (an index probe per batch row), the result batch 3.2 s against 79 ms; the
claim alone was 12 of PostgreSQL's ~19.5 s of statement time in a 20,000-job burn-down.

A generic plan is made once per connection, for the table as it is then: one made while
the day partition held a few hundred rows (a fresh database's first herd or burn-down; a
partition never analyzed, or not yet) hashed a scan of the whole partition for every batch,
or compared every row of it with every batch row (1,500 rows), and kept doing so as the
partition grew: PostgreSQL's CPU doubled in about two burn-downs of five. These statements
therefore read their batch as ``(SELECT * FROM unnest(…) LIMIT cardinality(:ids))``: a
LIMIT the generic plan cannot read is estimated at a tenth of its input, so the batch
counts as one row, and one probe by key per batch row is the cheapest plan whatever the
partition's size (tests/integration/test_batch_plans.py plans them on partitions of 40,
300 and 1,500 rows). A condition on the state is written ``state || ''`` so that no partial
index on the state is read whole for each batch row.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from importlib import resources
from typing import Any

_BLOCK = re.compile(r"^-- ([a-z_][a-z0-9_]*) --$", re.MULTILINE)
# :name, but not the second colon of a ::type cast
_PARAM = re.compile(r"(?<![:\w]):([a-z_][a-z0-9_]*)")
_PLAN_MARK = "-- plan: "
_PLANS = {"generic": "SET LOCAL plan_cache_mode = force_generic_plan"}
_RESET = "RESET plan_cache_mode"


class QueryError(Exception):
    """A query file is malformed or a query was bound with the wrong names."""


@dataclass(frozen=True, slots=True)
class Query:
    name: str
    text: str  # with $1..$n
    params: tuple[str, ...]  # the name of $1, $2, ...
    #: The planner settings it runs with (``-- plan: …``; see the module's docstring).
    plan: str | None = None

    def args(self, **values: Any) -> tuple[Any, ...]:
        """The positional arguments of this statement, from its parameters by name."""
        if len(values) != len(self.params) or not values.keys() <= set(self.params):
            missing = sorted(set(self.params) - values.keys())
            extra = sorted(values.keys() - set(self.params))
            raise QueryError(f"query {self.name}: missing {missing}, unexpected {extra}")
        return tuple(values[name] for name in self.params)

    # ``conn`` is an asyncpg connection or pool (both have these methods).
    async def fetch(self, conn: Any, **values: Any) -> list[Any]:
        args = self.args(**values)
        async with self._planned(conn) as c:
            return list(await c.fetch(self.text, *args))

    async def fetchrow(self, conn: Any, **values: Any) -> Any:
        args = self.args(**values)
        async with self._planned(conn) as c:
            return await c.fetchrow(self.text, *args)

    async def fetchval(self, conn: Any, **values: Any) -> Any:
        args = self.args(**values)
        async with self._planned(conn) as c:
            return await c.fetchval(self.text, *args)

    async def execute(self, conn: Any, **values: Any) -> str:
        args = self.args(**values)
        async with self._planned(conn) as c:
            return str(await c.execute(self.text, *args))

    @contextlib.asynccontextmanager
    async def _planned(self, conn: Any) -> AsyncIterator[Any]:
        """The connection (or pool) to run on; for a statement with planner settings, a
        connection in a transaction that has them: the caller's own transaction when there
        is one (reset after the statement), else one for this statement alone."""
        if self.plan is None:
            yield conn
            return
        if not hasattr(conn, "is_in_transaction"):  # a pool: one of its connections
            async with conn.acquire() as acquired, self._planned(acquired) as planned:
                yield planned
            return
        settings = _PLANS[self.plan]
        if conn.is_in_transaction():
            await conn.execute(settings)
            yield conn
            await conn.execute(_RESET)  # the caller's next statements plan as usual
        else:
            async with conn.transaction():
                await conn.execute(settings)
                yield conn


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

        plans = [line[len(_PLAN_MARK):].split(" (", 1)[0].strip()
                 for line in body.splitlines() if line.startswith(_PLAN_MARK)]
        if any(plan not in _PLANS for plan in plans) or len(plans) > 1:
            raise QueryError(f"query {name}: one '-- plan: ' line, of {sorted(_PLANS)}")
        # Comments stay in the file for readers; the server gets the statement alone (and
        # a ":word" in a comment is never taken for a parameter).
        code = "\n".join(line.split("--", 1)[0].rstrip() for line in body.splitlines())
        text = _PARAM.sub(number, "\n".join(ln for ln in code.splitlines() if ln)).strip()
        if not text:
            raise QueryError(f"query {name} is empty")
        queries[name] = Query(name, text, tuple(params), plans[0] if plans else None)
    return queries


def load_queries(filename: str) -> Queries:
    """The queries of one ``.sql`` file of this package."""
    source = (resources.files(__package__) / filename).read_text()
    return Queries(parse_queries(source))
