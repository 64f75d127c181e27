# The two commands a newcomer needs: `make run` and `make test`. Both install what is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RABBITMQ_SERVER := /usr/lib/rabbitmq/bin/rabbitmq-server

.PHONY: run cluster test check wheel-check bench soak soak-cluster lock clean rabbitmq chromium postgresql nginx deps

$(STAMP): requirements-dev.lock pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements-dev.lock
	@# The project itself cannot be hash-checked (it is built here): no deps, all came above.
	$(BIN)/python -m pip install --quiet --no-deps -e .
	@touch $@

deps: $(STAMP)

# Debian's RabbitMQ: installed when missing and we are root; otherwise say what to do.
rabbitmq:
	@if [ ! -x $(RABBITMQ_SERVER) ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing rabbitmq-server (Debian package)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server >/dev/null; \
	  else \
	    echo "RabbitMQ is missing: run 'sudo apt-get install -y rabbitmq-server' (or set AMQP_URL)"; \
	    [ -n "$$AMQP_URL" ] || exit 1; \
	  fi; \
	fi

# Debian's Chromium, for the browser tests (skipped without it, except in CI).
chromium:
	@if [ ! -x /usr/bin/chromium ] && [ "$$(id -u)" = 0 ]; then \
	  echo "installing chromium (Debian package)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	fi

# Debian's PostgreSQL server binaries, for the PostgreSQL tests (a private cluster per run).
postgresql:
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  echo "installing postgresql (Debian package)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; \
	fi

# Debian's nginx, for make cluster and the tests behind TLS (a private instance per run).
nginx:
	@if [ ! -x /usr/sbin/nginx ] && [ "$$(id -u)" = 0 ]; then \
	  echo "installing nginx (Debian package)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null; \
	fi

run: deps rabbitmq
	$(BIN)/python -m devstack.stack

# The production shape: nginx (TLS) -> gunicorn, PostgreSQL, three RabbitMQ nodes (quorum).
cluster: deps rabbitmq postgresql nginx
	$(BIN)/python -m devstack.cluster $(CLUSTER_ARGS)

test: deps
	@[ -x $(RABBITMQ_SERVER) ] || [ "$$(id -u)" != 0 ] || $(MAKE) --no-print-directory rabbitmq
	@[ -x /usr/bin/chromium ] || [ "$$(id -u)" != 0 ] || $(MAKE) --no-print-directory chromium
	@$(MAKE) --no-print-directory postgresql
	@$(MAKE) --no-print-directory nginx
	$(BIN)/pytest $(PYTEST_ARGS)

check: deps
	scripts/check

# Build the wheel, install it with requirements.lock into a fresh venv outside the repository,
# and run it from there: every console script, a migration, one registration (CI runs this).
wheel-check: deps
	$(BIN)/python scripts/wheel_check.py

bench: deps rabbitmq
	$(BIN)/python -m bench $(BENCH_ARGS)

soak: deps rabbitmq
	$(BIN)/python -m bench.soak $(SOAK_ARGS)

# The same soak on make cluster's shape, a leader-node SIGKILL in place of the broker restart.
soak-cluster: deps rabbitmq postgresql nginx
	$(BIN)/python -m bench.soak --cluster $(SOAK_ARGS)

# Regenerate the lock files from pyproject.toml, with hashes (uv comes with the dev extra).
# The production lock is constrained by the dev one, so both pin the same versions.
lock: deps
	$(BIN)/uv pip compile pyproject.toml --extra dev --python-version 3.11 --generate-hashes \
	  -q -o requirements-dev.lock
	$(BIN)/uv pip compile pyproject.toml --python-version 3.11 --generate-hashes \
	  -c requirements-dev.lock -q -o requirements.lock

clean:
	rm -rf $(VENV) .run .pytest_cache .mypy_cache .ruff_cache
