FROM python:3.11-slim-bookworm
RUN apt-get update && apt-get install -y --no-install-recommends build-essential cmake \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY requirements/ requirements/
RUN CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON" \
    pip install --no-cache-dir --require-hashes -r requirements/base.lock \
    && pip install --no-cache-dir --require-hashes --no-deps -r requirements/bfcl.lock
COPY . .
RUN DJANGO_SETTINGS_MODULE=webapp.settings.production \
    DJANGO_SECRET_KEY=only-used-to-collect-static-files-at-build-time \
    python manage.py collectstatic --noinput
EXPOSE 8000
CMD ["daphne", "-b", "0.0.0.0", "-p", "8000", "webapp.asgi:application"]
