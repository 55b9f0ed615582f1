.PHONY: run test lint install services test-tools

# Everything a fresh machine needs, then all roles with a demo job firing every 5 s.
run:
	scripts/run-local.sh

# The whole test suite on real PostgreSQL, RabbitMQ and ZooKeeper (started if missing).
test: install services test-tools
	python3 -m pytest -q

install:
	python3 -m pip install -q -e '.[dev]'

services:
	scripts/services.sh

test-tools:
	scripts/install-test-tools.sh

lint:
	ruff check jobsched jobsched_dev tests
	mypy jobsched jobsched_dev
