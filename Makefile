# Entry points for people and CI. Everything runs in a venv cached outside the repository
# (~/.cache/kubegraft/venv-<hash of pyproject.toml>, made by hack/venv.sh) and, where a cluster
# is involved, with binaries built once from the Go module proxy (hack/build-binaries.sh).

.PHONY: test test-unit images test-images chart dashboards previews run-quickstart venv binaries cluster-up cluster-down cluster-status

## test: the whole suite except GPU tests (lint, types, layering, every tier); CI runs this
test:
	hack/test.sh all

## test-unit: the fast tier only; starts nothing
test-unit:
	hack/test.sh unit

## images: build the operator and trainer images with buildah (hack/build-images.sh; makes the
## offline base image first where none can be pulled). TRAINER_VARIANT=cpu for CPU-only torch.
TRAINER_VARIANT ?= cuda
images:
	hack/build-images.sh operator trainer --trainer-variant $(TRAINER_VARIANT)

## test-images: build the images (with the examples' offline assets) and run them (pytest -m images)
test-images:
	KUBEGRAFT_IMAGE_ASSETS=1 hack/build-images.sh operator trainer --trainer-variant $(TRAINER_VARIANT)
	hack/in-env.sh --binaries python -m pytest -m images tests/images

## chart: regenerate the chart's CRD templates, values schema, README and manifests/rbac/
chart:
	hack/in-env.sh python hack/chartgen.py

## dashboards: regenerate the chart's Grafana dashboards (hack/dashboards.py, grafana-foundation-sdk)
dashboards:
	hack/in-env.sh python hack/dashboards.py

## previews: draw both dashboards from a real Prometheus scraping a real run into docs/img
previews:
	KUBEGRAFT_WRITE_PREVIEWS=docs/img hack/in-env.sh --binaries python -m pytest -q tests/e2e/test_observability.py

## run-quickstart: fine-tune the quickstart example locally (CPU is enough)
run-quickstart:
	hack/in-env.sh kubegraft run examples/quickstart.yaml

## venv / binaries: set up (or reuse) the environment and the control-plane binaries
venv:
	hack/venv.sh
binaries:
	hack/build-binaries.sh

## cluster-up / cluster-down / cluster-status: the local control plane for manual work
## (then: eval "$$(hack/in-env.sh kubegraft dev cluster env)")
cluster-up:
	hack/in-env.sh --binaries kubegraft dev cluster up
cluster-down:
	hack/in-env.sh kubegraft dev cluster down
cluster-status:
	hack/in-env.sh kubegraft dev cluster status

help:
	@grep -E '^## ' Makefile | sed 's/^## /  /'
