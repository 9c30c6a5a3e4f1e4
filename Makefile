# Soudan: the two set-up commands are `make up` (the stack, needs Docker) and `make test`.

PYTHON ?= python3
VENV ?= .venv
UV = $(PYTHON) -m uv
COMPOSE ?= docker compose --env-file deploy/.env
export UV_PYTHON_DOWNLOADS = never

MEMBERS := shared services/ingress services/triage services/dispatch services/console \
           services/reporting services/allinone tools/fakeline tools/fakemongo
PYPROJECTS := pyproject.toml $(addsuffix /pyproject.toml,$(MEMBERS))

.PHONY: install test test-fakemongo test-unit lint format lock up down logs run demo bench bench-e2e clean

install: $(VENV)/.installed

# Third-party packages only from the hashed lock; the workspace members editable, without deps.
$(VENV)/.installed: requirements-dev.lock $(PYPROJECTS)
	@$(UV) --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet "uv>=0.9"
	@test -x $(VENV)/bin/python || $(UV) venv --quiet --python $(PYTHON) $(VENV)
	$(UV) pip sync --quiet --python $(VENV)/bin/python --require-hashes requirements-dev.lock
	$(UV) pip install --quiet --python $(VENV)/bin/python --no-deps $(addprefix -e ,$(MEMBERS))
	@touch $@

test: install
	$(VENV)/bin/pytest
	@$(MAKE) --no-print-directory test-fakemongo

# The store-heavy tests once more through PyMongo's real AsyncMongoClient, against a
# soudan-fakemongo (mongomock behind the MongoDB wire protocol; NOT MongoDB) that --exec starts on
# a free port and stops when pytest ends (40-48 s more on two cores).
FAKEMONGO_TESTS := shared/tests/test_store.py shared/tests/test_records.py \
	services/triage/tests/test_triage_events.py services/dispatch/tests/test_broadcasts.py \
	services/console/tests/test_console.py services/reporting/tests/test_recorder.py \
	services/reporting/tests/test_figures.py services/allinone/tests/test_e2e.py
test-fakemongo: install
	$(VENV)/bin/soudan-fakemongo --port 0 --exec $(VENV)/bin/pytest $(FAKEMONGO_TESTS)

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

# The whole service: webhook to auto-reply at 100, 300 and 500 messages/s, urgent to the top of
# the queue, memory (several minutes; longer once a rate saturates the machine).
bench-e2e: install
	$(BENCH_ENV) $(VENV)/bin/python bench/e2e_latency.py --duration 10

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

# PNGs of the console for the README, into docs/screenshots/ (needs RabbitMQ at RABBITMQ_URL or
# 127.0.0.1:5672, and Debian's chromium and fonts-noto-cjk).
.PHONY: screenshots
screenshots: install
	$(VENV)/bin/python services/console/tests/make_screenshots.py docs/screenshots
