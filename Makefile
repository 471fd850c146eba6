# The targets an AccelByte Extend developer types; each one runs a script of scripts/,
# which hold the logic (and work without make).
#   make setup   .venv with the pinned dependencies and the generated gRPC code
#   make run     `python -m app serve` with the settings of .env (ARGS=worker for Kafka)

SHELL := /bin/bash
IMAGE ?= challenge-event-handler:local
ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help setup test demo proto image image-smoke run

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

setup: ## create .venv, install the pinned dependencies, generate the gRPC code
	bash scripts/setup.sh

test: ## start PostgreSQL and Kafka, lint, type-check and run the whole test suite (ARGS: pytest's)
	bash scripts/test.sh $(ARGS)

demo: ## the sample events into an embedded SQLite file, progress shown (README command 1)
	bash scripts/demo.sh $(ARGS)

proto: .venv/bin/python ## regenerate proto/gen from the .proto files (grpcio-tools)
	.venv/bin/python scripts/gen_protos.py

image: ## build the container image from the Dockerfile (podman or docker; IMAGE=name:tag)
	IMAGE=$(IMAGE) bash scripts/image.sh

image-smoke: ## build the image with podman and run it as Extend would (root, a few minutes)
	bash scripts/image-smoke.sh

run: ## run `serve` locally with the settings of .env (copy .env.template first)
	bash scripts/run.sh $(ARGS)

.venv/bin/python:
	bash scripts/setup.sh
