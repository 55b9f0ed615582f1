.PHONY: run test fuzz lint install services test-tools

# Everything a fresh machine needs, then all roles with a demo job firing every 5 s.
run:
	scripts/run-local.sh

# The whole test suite on real PostgreSQL, RabbitMQ and ZooKeeper (started if missing).
test: install services test-tools
	python3 -m pytest -q

# The fuzzing tier at a large budget, by hand (make test runs it at FUZZ_EXAMPLES=20).
fuzz: install services
	FUZZ_EXAMPLES=$${FUZZ_EXAMPLES:-1000} python3 -m pytest -q tests/fuzz

install:
	python3 -m pip install -q -e '.[dev]'

services:
	scripts/services.sh

test-tools:
	scripts/install-test-tools.sh

lint:
	ruff check jobsched tests
	mypy jobsched
