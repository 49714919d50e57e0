# edgetl developer entry points. `make demo` and `make test` work on a fresh machine:
# both create (or reuse) .venv and install what they need.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# CPU build of torch by default; point this at another file (or /dev/null) on a CUDA host.
CONSTRAINTS ?= constraints/cpu.txt
EXTRAS ?= host,text,openvino,quantize,sign,fleet,test,docs
STAMP := $(VENV)/.installed
DEMO := demo-output
export EDGETL_CACHE_DIR ?= $(CURDIR)/$(DEMO)/cache

RUNTIME_VENV := .venv-runtime
# The fuzz tests' budget in make bench (tests/test_fuzz.py: examples per unit; make test runs 100).
FUZZ_EXAMPLES ?= 5000
ARM64_ROOT ?= $(HOME)/.cache/edgetl/arm64

.PHONY: install demo test test-runtime check-arm64 bench lint dist docs clean

install: $(STAMP)

$(STAMP): pyproject.toml setup.py edgetl/__init__.py $(CONSTRAINTS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c $(CONSTRAINTS) -e ".[$(EXTRAS)]"
	touch $(STAMP)

demo: install
	$(BIN)/edgetl select builtin:digits --out $(DEMO)/selection --overwrite
	$(BIN)/edgetl finetune builtin:digits --backbone auto --out $(DEMO)/run --overwrite
	$(BIN)/edgetl export $(DEMO)/run --out $(DEMO)/bundle --overwrite \
		--format onnx,onnx-int8,onnx-int8-vnni,openvino,openvino-bf16,openvino-int8,openvino-int8-vnni
	$(BIN)/edgetl data export builtin:digits $(DEMO)/digits --overwrite
	$(BIN)/edgetl-rt evaluate $(DEMO)/bundle $(DEMO)/digits --min-accuracy 0.95
	$(BIN)/edgetl-rt predict $(DEMO)/bundle $(DEMO)/digits/val/7/*.png --top-k 2 | head -n 5
	$(BIN)/edgetl compare $(DEMO)/bundle $(DEMO)/digits
	$(BIN)/edgetl bench $(DEMO)/bundle --batch 1,8 --out $(DEMO)/bench --record

test: install lint
	$(BIN)/python -m pytest -q

# The torch-free tests in an environment holding the runtime alone (numpy, Pillow, onnxruntime, click): what a
# device installs.  `make test` runs them too, beside the host's.
test-runtime:
	test -x $(RUNTIME_VENV)/bin/python || $(PYTHON) -m venv $(RUNTIME_VENV)
	$(RUNTIME_VENV)/bin/python -m pip install --quiet -e . pytest
	$(RUNTIME_VENV)/bin/python -m pytest -q -p no:cacheprovider tests/runtime

# The runtime on emulated aarch64 (qemu-user, an arm64 Debian userland from Debian's and PyPI's registries, cached
# in ARM64_ROOT), against this machine: its tests, and predict / evaluate / update / rollback / history on the
# make-demo bundle's onnx and onnx-int8 artifacts.  Needs root (chroot); not part of `make test`.
check-arm64: install
	test -f $(DEMO)/bundle/manifest.json || $(MAKE) demo
	bash emulation/arm64_env.sh $(ARM64_ROOT) $(BIN)/python
	$(BIN)/python emulation/compare_arm64.py --root $(ARM64_ROOT) --bundle $(DEMO)/bundle --data $(DEMO)/digits

bench: install
	$(BIN)/python -m pip install --quiet -c $(CONSTRAINTS) -e ".[$(EXTRAS),bench]"   # the shifts' corruptions
	$(BIN)/python benchmarks/finetune_cache.py
	$(BIN)/python benchmarks/runtime_vs_eager.py
	$(BIN)/python benchmarks/cold_start.py
	$(BIN)/python benchmarks/engine_extraction.py
	$(BIN)/python benchmarks/device_update.py
	$(BIN)/python benchmarks/teach_latency.py
	$(BIN)/python benchmarks/targets.py
	$(BIN)/python benchmarks/bench_fidelity.py
	$(BIN)/python benchmarks/select_backbones.py
	$(BIN)/python benchmarks/serve_load.py
	$(BIN)/python benchmarks/serve_http.py
	$(BIN)/python benchmarks/serve_hostile.py
	$(BIN)/python benchmarks/extraction_pipeline.py
	$(BIN)/python benchmarks/distributed_pass.py
	$(BIN)/python benchmarks/text_transfer.py
	$(BIN)/python benchmarks/verify_bundle.py
	$(BIN)/python benchmarks/shifts.py
	$(BIN)/python benchmarks/adaptation.py
	$(BIN)/python benchmarks/drift.py
	$(BIN)/python benchmarks/unknown_inputs.py
	$(BIN)/python benchmarks/fleet_merge.py
	-$(BIN)/python benchmarks/int8_cpu_paths.py    # needs qemu-user and a VNNI CPU; says so otherwise
	$(BIN)/python -m pytest -q -m slow
	EDGETL_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/python -m pytest -q -p no:cacheprovider -rxX tests/test_fuzz.py

# ruff (pyproject.toml: line length, import order, pyflakes, bugbear, pyupgrade), and commit subjects of at most
# 72 characters since 0.6.1 (the detail goes in the body); a clone without that history checks what it has.
LINT_SINCE := 5b28bec
lint: install
	$(BIN)/ruff check edgetl exporters runtime devices tests benchmarks emulation docs setup.py
	@git rev-parse -q --verify $(LINT_SINCE) >/dev/null 2>&1 && range=$(LINT_SINCE)..HEAD || range=HEAD; \
	long=$$(git log --no-merges --format='%h %s' $$range 2>/dev/null | awk 'length($$0) - index($$0, " ") > 72'); \
	if [ -n "$$long" ]; then echo "commit subjects over 72 characters:"; echo "$$long"; exit 1; fi

# The sdist and the wheel, into dist/ (setup.py finds the packages and their data files; tests/test_wheel.py
# installs such a wheel on its own and runs the host and device paths from it).
dist: install
	$(BIN)/python -m build --outdir dist

# The documentation site (docs/, mkdocs.yml) into site/; --strict turns every warning (a broken link, a page
# missing from the nav, a CLI reference that cannot be generated) into a failure.
docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

clean:
	rm -rf $(DEMO) .pytest_cache build dist site
