# Two entry points (README): `make quick` renders the quick offline Table 2, `make test`
# runs the test suite. Both create .venv and install the pinned package when missing.
# constraints.txt pins every transitive dependency (pip freeze of a working environment).
PYTHON ?= python3.11
VENV := .venv
STAMP := $(VENV)/.installed
CORES ?= 2

.PHONY: quick test lint gpu-check schema

$(STAMP): pyproject.toml constraints.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

quick: $(STAMP)
	. $(VENV)/bin/activate && snakemake reports/table2_mnist.md --cores $(CORES) \
	  --configfile config/quick.yaml

test: $(STAMP)
	. $(VENV)/bin/activate && pytest -q -n 2 --dist loadfile --no-loadscope-reorder --durations=25

lint: $(STAMP)
	. $(VENV)/bin/activate && ruff check src tests workflow benchmarks && snakefmt --check Snakefile workflow \
	  && snakemake --lint

# Prepares the GPU check (issue 21): wheels into .whl/, then prints the one device command.
gpu-check: $(STAMP)
	scripts/gpu-check prepare

# The generated files: the config schema, from the registries (tests/test_config_schema.py checks
# it), and the spec reference, from the spec declarations (tests/test_spec_docs.py checks it).
schema: $(STAMP)
	$(VENV)/bin/python -m robustreg schema --out workflow/schemas/config.schema.yaml
	$(VENV)/bin/python -m robustreg spec-docs --out docs/table-specs.md
