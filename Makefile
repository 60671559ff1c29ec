# SlideLens: `make run` installs what is missing and starts the app on the demo cohort; `make test` runs the tests.
PY ?= python
PORT ?= 8501
STAMP := .make

.PHONY: run test install browser lint demo bench clean

$(STAMP)/python: requirements.txt
	@mkdir -p $(STAMP)
	$(PY) -m pip install -q -r requirements.txt
	@touch $@

$(STAMP)/node: package.json package-lock.json
	@mkdir -p $(STAMP)
	npm ci --no-audit --no-fund --loglevel=error
	@touch $@

# Debian's headless Chromium for the end-to-end browser tests (needs root, as on CI)
$(STAMP)/browser:
	@mkdir -p $(STAMP)
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null)
	@touch $@

install: $(STAMP)/python $(STAMP)/node

browser: $(STAMP)/browser

run: install
	$(PY) -m streamlit run app.py --server.port $(PORT)

test: install browser
	$(PY) -m pytest -q

lint: install
	$(PY) -m ruff check .

demo: install
	$(PY) -m core demo --out data/demo

clean:
	rm -rf $(STAMP) node_modules
