# careplan-fhir: the two commands of the README, and the checks CI runs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
HOST   ?= 127.0.0.1
PORT   ?= 8080
DB     ?= sqlite:///./careplan.db

.PHONY: serve test lint check bench clean golden profiles-data

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

## Serve the FHIR API on http://$(HOST):$(PORT)/fhir with the examples loaded (embedded SQLite).
serve: $(STAMP)
	$(BIN)/careplan-fhir serve --host $(HOST) --port $(PORT) --database-url $(DB) \
		--examples examples/fhir --examples examples/guidance/golden

## Run the whole test suite (PostgreSQL tests run when CAREPLAN_TEST_POSTGRES_URL is set).
test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

check: lint test

## Regenerate the golden Bundles of the example leaflets (checked by tests/test_guidance_golden.py).
GOLDEN_DATE := 2026-11-24T00:00:00Z
golden: $(STAMP)
	@for f in examples/guidance/*.txt examples/guidance/*.md examples/guidance/*.html \
	          examples/guidance/*.yaml; do \
	  stem=$$(basename "$${f%.*}"); \
	  $(BIN)/careplan-fhir guidance import "$$f" --out "examples/guidance/golden/$$stem.bundle.json" \
	    --url-base https://careplan-fhir.org/fhir --version 0.1.0 --date $(GOLDEN_DATE) || exit 1; \
	done
	$(MAKE) golden-apply

## Regenerate the $$apply golden files: each golden template applied to a sample patient
## (checked by tests/test_apply_golden.py).
.PHONY: golden-apply
golden-apply: $(STAMP)
	$(BIN)/python -m careplan_fhir.apply.golden examples/guidance/golden examples/apply/golden

## Copy the StructureDefinitions of profiles/ into the package (checked by tests/test_profiles_validator.py).
profiles-data:
	cp profiles/StructureDefinition-*.json src/careplan_fhir/fhir/profiles_data/

bench: $(STAMP)
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) careplan.db careplan.db-shm careplan.db-wal careplan.db-writer \
		careplan-audit.db careplan-audit.db-shm careplan-audit.db-wal careplan-audit.db-writer
