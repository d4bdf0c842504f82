.PHONY: run test test-sglang test-postgres lint engine web worker clean bench bench-engine bench-tools finetune soak

run:            ## install what is missing and start every process (Ctrl-C stops them)
	@scripts/run.sh

test:           ## install what is missing, start needed services, run lint and the whole suite
	@scripts/test.sh

test-sglang:    ## the SGLang backend against a real SGLang server on this CPU (before a release; ~6 GB, minutes)
	@scripts/test-sglang.sh

test-postgres:  ## the non-browser suite against a local PostgreSQL
	@scripts/test.sh --postgres

lint:
	@.venv/bin/ruff check .

# The processes one by one (after `make run` has installed everything once).
web:
	@.venv/bin/daphne -b 127.0.0.1 -p $${ASYNCLM_PORT:-8000} webapp.asgi:application
engine:
	@.venv/bin/python manage.py run_engine
worker:
	@.venv/bin/celery -A webapp worker -Q default,tools --loglevel INFO

clean:          ## remove the virtualenv and local state (models, database)
	rm -rf .venv var

bench:          ## the paper's latency experiment on BFCL: simulated decoder, then the embedded model -> var/bench/
	@scripts/bootstrap.sh
	@scripts/with-redis.sh .venv/bin/python manage.py bench --token-ms 10 --limit 20
	@scripts/with-redis.sh .venv/bin/python manage.py bench --append --decoder embedded --datasets parallel \
		--modes sync,async --limit 30

bench-engine:   ## the engine's costs on this machine -> var/bench/engine.json
	@scripts/bootstrap.sh
	@scripts/with-redis.sh .venv/bin/python manage.py bench_engine

bench-tools:    ## zero-latency calls through 2 Celery worker processes -> var/bench/tools.json
	@scripts/bootstrap.sh
	@scripts/with-redis.sh .venv/bin/python manage.py bench_tools

soak:           ## 200 tasks from 5 users while engines, a worker process and Redis are killed -> var/bench/soak.json
	@scripts/bootstrap.sh --models smollm2-135m
	@scripts/with-redis.sh .venv/bin/python manage.py migrate -v0
	@scripts/with-redis.sh .venv/bin/python manage.py soak $(ARGS)

finetune:       ## the adaptation step: CML traces, LoRA training, GGUF export, evaluation -> finetune/adapters/
	@scripts/finetune.sh $(ARGS)
