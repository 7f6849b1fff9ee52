# The two commands of the README: `make demo` and `make test`. Everything else serves them.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck architecture unit integration infrastructure e2e ehr-server \
        system-deps venv clean cdk-synth cdk-gates benchmarks localstack-venv viewer

# BACKEND=moto (default) or BACKEND=localstack: which stand-in serves the cloud's AWS APIs.
BACKEND ?= moto

# VIEW=1: afterwards, serve the OHIF viewer on the PACS and print its URL (Ctrl-C stops it).
demo: system-deps venv ehr-server $(if $(filter localstack,$(BACKEND)),localstack-venv) $(if $(VIEW),viewer)
	IMAGING_AI_BACKEND=$(BACKEND) $(BIN)/python -m imaging_ai.local.demo $(if $(STUDY),--study "$(STUDY)") $(if $(VIEW),--view)

# The e2e test runs on both backends (IAM-enforcing moto and LocalStack).
test: system-deps venv ehr-server viewer localstack-venv lint typecheck architecture cdk-gates
	$(BIN)/python -m pytest -q tests

venv: $(STAMP)

# torch is installed first and pinned: an unpinned torch pulls a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev,cdk]'
	touch $(STAMP)

# The local EHR is a real FHIR R4 server from npm (Medplum's FHIR router, and on x86-64 the
# Node.js 22 it needs), installed once into ~/.cache/imaging-ai.
ehr-server: venv
	$(BIN)/python -c "from imaging_ai.local.fhir_server import ensure_installed as e; print('FHIR server:', e())"

# The viewer: OHIF's prebuilt bundle (npm pack, pinned) and playwright-core for the browser
# test, both once into ~/.cache/imaging-ai; chromium and Orthanc's DICOMweb come from Debian.
viewer: venv
	$(BIN)/python -c "from imaging_ai.local import ohif, browser; print('OHIF:', ohif.ensure_installed()); print('browser check:', browser.ensure_installed())"

# DCMTK, Orthanc and dicom3tools are the real DICOM peers; npm installs the local EHR;
# chromium and Orthanc's DICOMweb plugin (a file, not a command) serve the viewer test.
# Installed when we are root, and only what is missing: a Node.js from another source
# (e.g. NodeSource, which bundles npm) must not meet Debian's npm package.
TOOL_PACKAGES := storescu:dcmtk storescp:dcmtk dsrdump:dcmtk dciodvfy:dicom3tools dcm2niix:dcm2niix \
                 Orthanc:orthanc node:nodejs npm:npm chromium:chromium
DICOMWEB_PLUGIN := /usr/share/orthanc/plugins/libOrthancDicomWeb.so
system-deps:
	@missing=""; \
	if [ ! -e $(DICOMWEB_PLUGIN) ]; then missing=" orthanc-dicomweb"; fi; \
	for pair in $(TOOL_PACKAGES); do \
	  tool=$${pair%%:*}; package=$${pair##*:}; \
	  if ! command -v $$tool >/dev/null 2>&1 && [ ! -x /usr/sbin/$$tool ] && [ ! -x /usr/bin/$$tool ]; then \
	    case " $$missing " in *" $$package "*) ;; *) missing="$$missing $$package";; esac; \
	  fi; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = "0" ]; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  else \
	    echo "missing Debian packages:$$missing. Run as root, or: sudo apt-get install -y$$missing"; exit 1; \
	  fi; \
	fi

# One tier at a time (tests/conftest.py marks each test with its folder's tier);
# FAST=1 leaves out the tests marked slow.
unit integration infrastructure e2e: venv
	$(BIN)/python -m pytest -q -m "$@$(if $(FAST), and not slow)" tests

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: venv
	$(BIN)/mypy

architecture: venv
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) .local-run cdk/cdk.out .mypy_cache .ruff_cache .pytest_cache

# ---- LocalStack (issue 13) ----------------------------------------------------------------
# localstack-core from PyPI, in its own venv (it pins boto3 1.40), run as a host process (no
# Docker). 4.10.0 is the newest that runs on Python 3.11 (Debian 12's): 4.11+ call uuid5 with
# bytes (KMS CreateKey fails), 4.14 and 2026.3 use 3.12 generics (2026.x also brings the
# LocalStack account token). docs/local-backends.md has the details. Pins below:
# cbor2 6 dropped the module LocalStack imports; pyOpenSSL 25+ dropped X509.add_extensions,
# and pyOpenSSL 24.2 needs cryptography < 44. moto-ext serves STS and EventBridge's internals.
LOCALSTACK_VENV := .tools/localstack-venv
LOCALSTACK_PACKAGES := localstack-core[base-runtime]==4.10.0 moto-ext==5.1.12.post22 \
                       cbor2==5.6.5 pyopenssl==24.2.1 cryptography==43.0.3 crontab==1.0.5 \
                       jsonpath-ng==1.7.0 antlr4-python3-runtime==4.13.2

$(LOCALSTACK_VENV)/.installed: Makefile
	test -x $(LOCALSTACK_VENV)/bin/python || $(PYTHON) -m venv $(LOCALSTACK_VENV)
	$(LOCALSTACK_VENV)/bin/python -m pip install -q --disable-pip-version-check $(LOCALSTACK_PACKAGES)
	touch $@

localstack-venv: $(LOCALSTACK_VENV)/.installed

# ---- Infrastructure (issue 7) -------------------------------------------------------------
# cdk-synth: deployable Lambda assets (pip, manylinux2014 x86_64 wheels) + synthesis into
#   cdk/cdk.out, cdk-nag gate included; pass CDK_CONTEXT='-c stage=prod -c sites=a,b' etc.
# cdk-gates: synth-only assets (no pip); dev and prod synthesized with cdk-nag (synthesis fails
#   on any unacknowledged finding); cfn-lint (errors fail; exit 4/8 = warnings/info, printed);
#   checkov from its own venv (any failed check fails; skips and reasons in .checkov.yaml).
CDK_GATES_DIR := cdk/.build/gates
CHECKOV_VENV := .tools/checkov-venv
CHECKOV_VERSION := 3.3.30
CDK_ENV := JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION=1
CDK_CONTEXT ?=
# The prod gate synthesizes several models (one endpoint each, one kept warm, one with a STAT
# endpoint too): cdk/models.example.json.
CDK_PROD_MODELS := cdk/models.example.json

.PHONY: cdk-assets checkov-venv

cdk-assets: venv
	$(BIN)/python cdk/build_lambda_assets.py

cdk-synth: cdk-assets
	$(CDK_ENV) $(BIN)/python cdk/app.py $(CDK_CONTEXT)

# checkov pins an old boto3: it lives in its own venv, never in $(VENV).
$(CHECKOV_VENV)/bin/checkov:
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install -q --disable-pip-version-check checkov==$(CHECKOV_VERSION)

checkov-venv: $(CHECKOV_VENV)/bin/checkov

cdk-gates: venv checkov-venv
	@set -e; start=$$(date +%s); rm -rf $(CDK_GATES_DIR); \
	$(BIN)/python cdk/build_lambda_assets.py --no-deps --out $(CDK_GATES_DIR)/assets >/dev/null; \
	$(BIN)/mypy --strict cdk/app.py cdk/build_lambda_assets.py cdk/imaging_ai_infra; \
	for stage in dev prod; do \
	  echo "cdk-nag (HIPAA.Security + AwsSolutions): synthesizing $$stage"; \
	  models=""; [ $$stage = prod ] && models="models=$$(cat $(CDK_PROD_MODELS))"; \
	  CDK_OUTDIR=$(CDK_GATES_DIR)/$$stage $(CDK_ENV) $(BIN)/python cdk/app.py -c stage=$$stage \
	    -c sites=site-a,site-b $${models:+-c "$$models"} \
	    -c lambda_asset_root=$(CDK_GATES_DIR)/assets >/dev/null 2>$(CDK_GATES_DIR)/nag-$$stage.log \
	    || { grep -v "^b'" $(CDK_GATES_DIR)/nag-$$stage.log | grep -B1 -A2 '^ERROR' ; echo "cdk-nag: unacknowledged findings in $$stage"; exit 1; }; \
	done; \
	templates="$(CDK_GATES_DIR)/dev/ImagingAi-dev.template.json $(CDK_GATES_DIR)/prod/ImagingAi-prod.template.json"; \
	echo "cfn-lint: $$templates"; rc=0; $(BIN)/cfn-lint $$templates || rc=$$?; \
	case $$rc in 0) echo "cfn-lint: clean";; 4|8|12) echo "cfn-lint: warnings only (exit $$rc), no errors";; \
	  *) echo "cfn-lint: errors (exit $$rc)"; exit 1;; esac; \
	echo "checkov: $$templates"; \
	$(CHECKOV_VENV)/bin/checkov --config-file .checkov.yaml $$(printf -- '-f %s ' $$templates); \
	echo "cdk-gates: passed in $$(( $$(date +%s) - start )) s"
