# The two commands a newcomer needs: `make run` and `make test` (both as root).
.PHONY: setup run top test lint unit kernel bench clean image

ARGS ?=

setup:
	@bash scripts/setup.sh

run: setup
	.venv/bin/linnix-exporter run $(ARGS)

# The live terminal view: make top, or make top ARGS="--from localhost:10924".
top: setup
	.venv/bin/linnix-exporter top $(ARGS)

lint: setup
	.venv/bin/ruff check linnix_exporter tests bench dashboards alerts deploy
	.venv/bin/ruff format --check linnix_exporter tests bench dashboards alerts deploy
	.venv/bin/mypy
	.venv/bin/mypy --strict dashboards/*.py
	.venv/bin/mypy --strict alerts/rules.py
	.venv/bin/python dashboards/generate.py --check
	.venv/bin/python -m alerts.rules --check

test: setup lint
	.venv/bin/python -m pytest -v -ra $(ARGS)

unit: setup
	.venv/bin/python -m pytest -v -m "not kernel" $(ARGS)

# Every bench, or some: make bench ARGS="probe_cost idle_cost". Raw output of each run goes
# to bench/results/<name>.txt (committed; docs/benchmarks.md cites those files).
bench: setup
	.venv/bin/python -m bench.run $(ARGS)

# The container image, built with podman from ./Dockerfile (scripts/image.sh).
image: setup
	@bash scripts/image.sh

clean:
	rm -rf .venv .mypy_cache .ruff_cache .pytest_cache
