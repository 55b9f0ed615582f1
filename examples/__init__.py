"""Example task modules the docs use: run a worker with ``--import examples.tasks`` from
the checkout root."""
