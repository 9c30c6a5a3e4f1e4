# Soudan: the two set-up commands are `make up` (the stack, needs Docker) and `make test`.

PYTHON ?= python3
VENV ?= .venv
UV = $(PYTHON) -m uv
COMPOSE ?= docker compose --env-file deploy/.env
export UV_PYTHON_DOWNLOADS = never

MEMBERS := shared services/ingress services/triage services/dispatch services/console \
           services/reporting services/allinone tools/fakeline
PYPROJECTS := pyproject.toml $(addsuffix /pyproject.toml,$(MEMBERS))

.PHONY: install system-packages broker test test-fast test-secantus test-cluster test-unit lint format lock up down up-ha down-ha logs run demo bench bench-e2e clean

install: $(VENV)/.installed

# Third-party packages only from the hashed lock; the workspace members editable, without deps.
$(VENV)/.installed: requirements-dev.lock $(PYPROJECTS)
	@$(UV) --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet "uv>=0.9"
	@test -x $(VENV)/bin/python || $(UV) venv --quiet --python $(PYTHON) $(VENV)
	$(UV) pip sync --quiet --python $(VENV)/bin/python --require-hashes requirements-dev.lock
	$(UV) pip install --quiet --python $(VENV)/bin/python --no-deps $(addprefix -e ,$(MEMBERS))
	@touch $@

# Debian packages the tests use: Japanese fonts (PDF report, rich-menu image), Chromium (the
# console's browser tests, Playwright at /usr/bin/chromium) and RabbitMQ (the `cluster` tests
# start three nodes of their own). Installed when run as root; otherwise
# one line says what to install.
SYSTEM_PACKAGES_CHECK = \
	missing=""; \
	[ -f /usr/share/fonts/opentype/ipaexfont-gothic/ipaexg.ttf ] || missing="$$missing fonts-ipaexfont"; \
	[ -x /usr/bin/chromium ] || missing="$$missing chromium"; \
	[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || missing="$$missing rabbitmq-server"
system-packages:
	@$(SYSTEM_PACKAGES_CHECK); \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then \
		echo "installing Debian packages:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
			apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	else \
		echo "make test needs Debian packages it cannot install without root: sudo apt-get install$$missing"; \
		exit 1; \
	fi

# A local broker with a low open-files limit (Debian's default soft limit, 1024) runs out of file
# handles under the fault tests' virtual hosts and a loaded run: handshakes and vhost creation
# then hang. Said in one line; the limit is the broker's (its user's), not this shell's.
BROKER_FD_CHECK = \
	pid=$$(pgrep -f 'beam.smp.*-s rabbit boot' 2>/dev/null | head -1); \
	if [ -n "$$pid" ] && [ -r /proc/$$pid/limits ]; then \
		soft=$$(awk '/^Max open files/ {print $$4}' /proc/$$pid/limits); \
		if [ "$$soft" != unlimited ] && [ "$$soft" -lt 10000 ] 2>/dev/null; then \
			echo "warning: the local RabbitMQ may open only $$soft files; under load it can hang." \
				"Raise it: add 'ulimit -n 20000' to /etc/rabbitmq/rabbitmq-env.conf and restart it"; \
		fi; \
	fi

# RabbitMQ on 127.0.0.1:5672 when neither RABBITMQ_URL nor a running broker is there and Debian's
# rabbitmq-server is installed (the tests otherwise use testcontainers).
broker:
	@if [ -z "$${RABBITMQ_URL:-}" ] && ! $(PYTHON) -c 'import socket; socket.create_connection(("127.0.0.1", 5672), timeout=1).close()' 2>/dev/null \
		&& command -v rabbitmq-server >/dev/null; then \
		echo "RabbitMQ is not answering on 127.0.0.1:5672; starting Debian's rabbitmq-server"; \
		rabbitmq-server -detached; \
		for _ in $$(seq 1 120); do \
			$(PYTHON) -c 'import socket; socket.create_connection(("127.0.0.1", 5672), timeout=1).close()' 2>/dev/null && break; \
			sleep 1; \
		done; \
		rabbitmqctl await_startup --timeout 120 >/dev/null; \
	fi
	@$(BROKER_FD_CHECK)

# The fast pass (every test but the cluster ones, the in-process store), then the SecantusDB pass
# and the cluster tests side by side: the cluster tests mostly wait on their nodes. Each pass runs
# on PYTEST_WORKERS processes (pytest-xdist): one process kept this 2-core machine about 65 % idle
# (the tests wait on the broker, Chromium and the servers); with two, the fast pass took 262 s
# instead of 387 s and the SecantusDB pass 324 s beside the cluster tests instead of 464 s alone
# (make test 595-634 s instead of 1,016 s, fresh clones). A file's tests stay on one worker
# (--dist loadfile): some modules share one stack, and a test may read what the ones before did. (The two whole passes side by side, tried
# earlier, were no faster and their timing-sensitive tests failed.) --output-sync keeps each
# one's output whole.
PYTEST_WORKERS ?= 2
test: install system-packages broker
	@$(MAKE) --no-print-directory test-fast
	@$(MAKE) --no-print-directory -j2 --output-sync=target test-secantus test-cluster

test-fast: install
	$(VENV)/bin/pytest -m "not cluster" -n $(PYTEST_WORKERS) --dist loadfile

# The three-node RabbitMQ cluster's fault tests (about four minutes; README: "The cluster tests").
test-cluster: install
	$(VENV)/bin/pytest -m cluster

# Every test that reaches the store (its fixtures use mongodb_url) once more, through PyMongo's
# real AsyncMongoClient, against a SecantusDB server (secantusd-py; a third-party MongoDB server on
# WiredTiger, GPL-2.0, a separate process) that pytest starts on a free port with its data in a
# temporary directory and stops at the end (one per worker process).
test-secantus: install
	$(VENV)/bin/pytest --secantus --store-tests-only -n $(PYTEST_WORKERS) --dist loadfile

test-unit: install
	$(VENV)/bin/pytest -m unit

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy shared

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# Re-resolve after changing a pyproject.toml. uv.lock stays out of git (it records download
# addresses); its hashed exports are committed: the runtime set for the image, everything for dev.
lock:
	@$(UV) --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet "uv>=0.9"
	$(UV) lock
	$(UV) export --quiet --frozen --format requirements-txt --all-packages --no-dev \
		--no-emit-workspace -o requirements.lock
	$(UV) export --quiet --frozen --format requirements-txt --all-packages --all-groups \
		--no-emit-workspace -o requirements-dev.lock

# With SOUDAN_DEMO=true in deploy/.env (a fresh one has it): the fake LINE platform too, one
# scripted student, and the console's address and demo sign-in at the end.
up: deploy/.env
	@if grep -q '^SOUDAN_DEMO=true' deploy/.env; then \
		$(COMPOSE) --profile demo up -d --build --wait && \
		$(COMPOSE) --profile demo run --rm students && \
		sh deploy/init-env.sh --sign-in; \
	else \
		$(COMPOSE) up -d --build --wait; \
	fi

deploy/.env:
	sh deploy/init-env.sh

down:
	$(COMPOSE) --profile demo down

# The highly available stack (deploy/compose.ha.yaml, docs/DEPLOY.md): three RabbitMQ nodes, a
# three-member MongoDB replica set, several instances of each service; no demo profile.
COMPOSE_HA ?= docker compose -f deploy/compose.ha.yaml --env-file deploy/.env
up-ha: deploy/.env
	@if grep -q '^SOUDAN_DEMO=true' deploy/.env; then \
		echo "deploy/.env is a demo (SOUDAN_DEMO=true) and the HA stack has no fake LINE platform:" \
			"set the real LINE credentials first (README: Going live)"; \
		exit 1; \
	fi
	$(COMPOSE_HA) up -d --build --wait

down-ha:
	$(COMPOSE_HA) down

logs:
	$(COMPOSE) logs -f --tail=200

# All five services in one process, without Docker (see README: "Running without Docker").
run: install
	$(VENV)/bin/soudan-all

# The demo without Docker: the five services, the in-process store and a fake LINE platform,
# a scripted conversation, then the console until Ctrl-C (needs RabbitMQ at RABBITMQ_URL or
# 127.0.0.1:5672; see README: "Demo").
demo: install
	$(VENV)/bin/soudan-demo

# The benchmarks of docs/BENCHMARKS.md, one after another in one sitting (needs RabbitMQ at
# RABBITMQ_URL, wrk from Debian for the webhook's throughput; MONGODB_URL for a real store).
# Each prints JSON lines; docs/BENCHMARKS.md says what each figure means.
BENCH_ENV = RABBITMQ_URL=$${RABBITMQ_URL:-amqp://guest:guest@127.0.0.1:5672/}
bench: install
	$(BENCH_ENV) $(VENV)/bin/python bench/ingress_webhook.py --runs 3 --duration 6
	$(VENV)/bin/python bench/triage_detector.py
	$(BENCH_ENV) $(VENV)/bin/python bench/dispatch_broadcast.py --runs 5
	$(VENV)/bin/python bench/store_listener.py

# The whole service: webhook to auto-reply at 100, 300 and 500 messages/s, urgent to the top of
# the queue, memory (several minutes; longer once a rate saturates the machine); the share of
# counselor replies sent by reply token; then the CPU, AMQP messages and store round trips of one
# student message, all-in-one and one process per service (about 15 minutes).
bench-e2e: install
	$(BENCH_ENV) $(VENV)/bin/python bench/e2e_latency.py --duration 10
	$(BENCH_ENV) $(VENV)/bin/python bench/reply_tokens.py
	$(BENCH_ENV) $(VENV)/bin/python bench/e2e_cost.py --runs 3
	$(BENCH_ENV) $(VENV)/bin/python bench/e2e_cost.py --runs 3 --separate

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

# PNGs of the console for the README, into docs/screenshots/ (needs RabbitMQ at RABBITMQ_URL or
# 127.0.0.1:5672, and Debian's chromium and fonts-noto-cjk).
.PHONY: screenshots
screenshots: install
	$(VENV)/bin/python services/console/tests/make_screenshots.py docs/screenshots
