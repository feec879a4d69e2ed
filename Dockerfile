# One signaling node. Slim, non-root, no compilers in the final image.
#
#   docker build -t signaling .
#   docker run --rm -p 8080:8080 -e SIGNALING_JWT_SECRET_FILE=/run/secrets/jwt signaling
#
# The base is pinned to an exact tag; pin the digest too in your registry mirror:
#   docker build --build-arg PYTHON_IMAGE=python:3.11.11-slim-bookworm@sha256:<digest> .
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/signaling
COPY pyproject.toml README.md LICENSE ./
COPY signaling ./signaling
COPY nginx/nginx.conf ./nginx/nginx.conf
COPY nginx/templates ./nginx/templates
RUN /opt/signaling/bin/pip install .

FROM ${PYTHON_IMAGE}
ENV PATH=/opt/signaling/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SIGNALING_HOST=0.0.0.0 \
    SIGNALING_PORT=8080 \
    SIGNALING_LOG_FORMAT=json
RUN groupadd --system --gid 10001 signaling \
    && useradd --system --uid 10001 --gid signaling --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin signaling
COPY --from=build /opt/signaling /opt/signaling
USER 10001:10001
EXPOSE 8080
# Liveness only: /readyz also turns 503 while Redis is away or the node drains, and
# Docker must not mark a draining node unhealthy-then-restart it (compose uses /readyz
# for start-up ordering, Kubernetes for readiness: see docker-compose.yml, deploy/).
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('SIGNALING_PORT', '8080'), timeout=2)"]
# SIGTERM drains: /readyz 503, 1001 closes spread over SIGNALING_DRAIN_WINDOW, exit 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["signaling"]
CMD ["serve"]
