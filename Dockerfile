# The engine's image for docker-compose.yml: `attribution worker | collect | simulate ...`.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml ./
COPY streams ./streams
COPY schemas ./schemas
RUN pip install '.[rocksdb]'
# Run the source tree next to schemas/ (the installed copy in site-packages has no
# schemas/ beside it); pip above brought the dependencies and the `attribution` script.
ENV PYTHONPATH=/app

# Worker state (STATE_STORE=rocksdb) and other files go under /app/.run.
RUN useradd --create-home --uid 10001 attribution && mkdir -p /app/.run && chown attribution /app/.run
USER attribution

# WEB_PORT (worker) and COLLECTOR_PORT (collector)
EXPOSE 6066 8080
CMD ["attribution", "worker"]
