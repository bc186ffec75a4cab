# The two commands a newcomer needs: `make run` and `make test` (both as root).
.PHONY: setup run test lint unit kernel bench clean image

ARGS ?=

setup:
	@bash scripts/setup.sh

run: setup
	.venv/bin/linnix-exporter run $(ARGS)

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

bench: setup
	.venv/bin/python -m bench.probe_cost
	.venv/bin/python -m bench.probe_read_cost
	.venv/bin/python -m bench.collection_cost > bench/results/collection_cost.txt
	.venv/bin/python -m bench.cold_tick --baseline b420ef3 --strace --strace-seconds 41 > bench/results/cold_tick.txt
	.venv/bin/python -m bench.big_host --baseline b420ef3 > bench/results/big_host.txt
	.venv/bin/python -m bench.iter_cost
	.venv/bin/python -m bench.idle_cost --baseline b420ef3 --timer > bench/results/idle_cost.txt
	.venv/bin/python -m bench.idle_cost --seconds 120 --otlp http
	.venv/bin/python -m bench.idle_cost --seconds 120 --otlp grpc
	.venv/bin/python -m bench.usage_over_time
	.venv/bin/python -m bench.scrape_load
	.venv/bin/python -m bench.otlp_soak --minutes 3
	.venv/bin/python -m bench.storm_overhead
	bash scripts/image.sh && .venv/bin/python -m bench.image_startup

# The container image, built with podman from ./Dockerfile (scripts/image.sh).
image: setup
	@bash scripts/image.sh

clean:
	rm -rf .venv .mypy_cache .ruff_cache .pytest_cache
