# careplan-fhir: the FHIR R4 server, installed from this repository (not editable).
# Untested here: no Docker engine runs on our build machines. Build with `docker build -t careplan-fhir .`
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Install the project from a throw-away copy of its sources; only the installed package and the
# example resources stay in the image. Alembic migrations ship inside the package.
COPY pyproject.toml README.md /tmp/build/
COPY src /tmp/build/src
RUN pip install /tmp/build && rm -rf /tmp/build

WORKDIR /app
COPY examples /app/examples

# Run as an unprivileged user. /data holds the embedded SQLite database used when no
# CAREPLAN_DATABASE_URL is given (docker-compose.yml points the app at PostgreSQL instead).
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin careplan \
    && mkdir -p /data \
    && chown careplan /data
USER careplan
ENV CAREPLAN_DATABASE_URL=sqlite:////data/careplan.db
# The server's token-signing key (created on first start; /app is not writable by this user).
# Mint a token inside the container: careplan-fhir token --scope 'system/*.rs'
ENV CAREPLAN_AUTH_SIGNING_KEY_FILE=/data/careplan-dev-key.json
VOLUME ["/data"]

EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/fhir/metadata', timeout=4)"]

# `serve` runs the Alembic migrations first (--migrate is on by default), then uvicorn.
CMD ["careplan-fhir", "serve", "--host", "0.0.0.0", "--port", "8080"]
