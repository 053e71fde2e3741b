# Two commands: `make run` serves the demo, `make test` runs the suite.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install run test lint typecheck contracts migrations-check check-deploy schema-check clean

$(STAMP): requirements/base.txt requirements/dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements/dev.txt
	touch $(STAMP)

install: $(STAMP)

run: install
	$(PY) -m infra.run

# Extra pytest arguments: make test ARGS="-k tenants -x"
test: install
	$(PY) -m infra.test $(ARGS)

lint: install
	$(VENV)/bin/ruff check .

typecheck: install
	$(VENV)/bin/mypy config tenants sites studies ecrf exports billing infra

contracts: install
	$(VENV)/bin/lint-imports

migrations-check: install
	DJANGO_SETTINGS_MODULE=config.settings.test $(PY) manage.py makemigrations --check --dry-run

check-deploy: install
	SECRET_KEY=$$(head -c 64 /dev/urandom | base64 | tr -d '\n/+=' | head -c 60) \
	DJANGO_SETTINGS_MODULE=config.settings.prod $(PY) manage.py check --deploy --fail-level WARNING

clean:
	rm -rf $(VENV) .data

schema-check: install
	DJANGO_SETTINGS_MODULE=config.settings.test $(PY) manage.py spectacular --validate --fail-on-warn --file /dev/null
