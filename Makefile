.PHONY: run test fuzz lint install lock services test-tools

# Everything a fresh machine needs, then all roles with a demo job firing every 5 s.
run:
	scripts/run-local.sh

# The whole test suite on real PostgreSQL, RabbitMQ and ZooKeeper (started if missing):
# two processes, a module (the chaos suite: all of it) per process at a time; then, alone,
# the tests that stop the machine's RabbitMQ. TEST_PROCESSES=1 runs it on one process.
TEST_PROCESSES ?= 2
test: install services test-tools
	python3 -m pytest -q -n $(TEST_PROCESSES) --dist loadgroup -m "not serial" --durations=40
	python3 -m pytest -q -m serial --durations=5

# The fuzzing tier at a large budget, by hand (make test runs it at FUZZ_EXAMPLES=20).
fuzz: install services
	FUZZ_EXAMPLES=$${FUZZ_EXAMPLES:-1000} python3 -m pytest -q tests/fuzz

# The development and test dependencies at the versions the suite last passed with.
install:
	python3 -m pip install -q -c requirements/dev.lock -e '.[dev]'

# On purpose only: re-resolve them (the newest the bounds allow), rewrite the lock, then
# run the suite and commit the lock with whatever the new versions needed.
lock:
	scripts/lock.sh

services:
	scripts/services.sh

test-tools:
	scripts/install-test-tools.sh

lint:
	ruff check jobsched jobsched_dev tests
	mypy jobsched jobsched_dev
