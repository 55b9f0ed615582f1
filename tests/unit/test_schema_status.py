"""The comparison of a database's applied migrations with the ones this code ships, which
``jobsched migrate --status`` prints and every role makes before it starts."""

from __future__ import annotations

from jobsched.adapters.postgres.migrate import compare_schema, migration_files, mismatch_message

SHIPPED = [(1, "001_init.sql"), (2, "002_more.sql"), (3, "003_last.sql")]


def test_current_behind_never_migrated_and_newer() -> None:
    current = compare_schema({v: (n, None) for v, n in SHIPPED}, SHIPPED)
    assert current.current and mismatch_message(current) is None

    behind = compare_schema({1: ("001_init.sql", None)}, SHIPPED)
    assert behind.pending == ["002_more.sql", "003_last.sql"] and not behind.current
    assert "behind" in (message := mismatch_message(behind) or "")
    assert "run `jobsched migrate`" in message and "002_more.sql, 003_last.sql" in message

    never = compare_schema(None, SHIPPED)
    assert not never.migrated and never.pending == [n for _, n in SHIPPED]
    assert "never migrated" in (mismatch_message(never) or "")

    newer = compare_schema({**{v: (n, None) for v, n in SHIPPED}, 4: ("004_new.sql", None)},
                           SHIPPED)
    assert newer.unknown == ["004_new.sql"] and not newer.pending
    message = mismatch_message(newer) or ""
    assert "newer than this jobsched" in message and "ships up to 003" in message
    assert "jobsched migrate`" not in message  # migrating cannot fix that


def test_a_gap_is_pending_too() -> None:
    gap = compare_schema({1: ("001_init.sql", None), 3: ("003_last.sql", None)}, SHIPPED)
    assert gap.pending == ["002_more.sql"] and gap.unknown == []


def test_the_shipped_migrations_are_what_the_comparison_uses() -> None:
    shipped = [(v, n) for v, n, _ in migration_files()]
    assert compare_schema({v: (n, None) for v, n in shipped}, shipped).current
