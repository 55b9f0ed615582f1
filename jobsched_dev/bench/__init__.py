"""``jobsched bench``: benchmark scenarios run against a real cluster.

Each scenario prints a table and can write JSON; figures go into docs/benchmarks.md with
the command that produced them.
"""
