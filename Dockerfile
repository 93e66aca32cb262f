# The Live Event Service image: web (gunicorn), relay and worker all run from it.
FROM python:3.11-slim AS base

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /app

# dependencies first (cached while only the code changes)
COPY pyproject.toml constraints.txt ./
RUN mkdir -p webapp workers && touch webapp/__init__.py workers/__init__.py \
    && pip install -c constraints.txt . \
    && pip uninstall -y live-event-service

COPY webapp ./webapp
COPY workers ./workers
COPY migrations ./migrations
COPY templates ./templates
COPY static ./static

RUN useradd --system --uid 10001 --home-dir /app les \
    && mkdir -p /app/var/mailbox /tmp/prometheus-multiproc \
    && chown -R les /app/var /tmp/prometheus-multiproc
USER les

ENV ENV=production \
    BIND=0.0.0.0:8000 \
    PROMETHEUS_MULTIPROC_DIR=/tmp/prometheus-multiproc \
    FLASK_APP="webapp:create_app()"

EXPOSE 8000 9101 9102
CMD ["gunicorn", "-c", "webapp/gunicorn_conf.py", "webapp:create_app()"]
