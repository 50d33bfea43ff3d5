FROM python:3.11-slim
# The mlops_nb scoring service. Build:  docker build -t mlops-nb .
# Run (the project folder, with its config and its registry, mounted read-write for the inference log; the token from a
# secret file or the environment: listening on 0.0.0.0 without one is refused):
#   docker run --rm -p 8080:8080 -v "$PWD:/project" -e MLOPS_NB_TOKEN="$(cat token)" mlops-nb \
#     mlops-nb serve --host 0.0.0.0 --config /project/config.yaml
# Without --config the built-in defaults apply: the registry is /project/mlruns.db (tracking.uri sqlite:///mlruns.db).
# Only an approved champion is served (`mlops-nb promote`). TLS: terminate it in front of the container, or mount a
# certificate and add --ssl-certfile/--ssl-keyfile (the health check below then needs https).

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MLFLOW_LOGGING_LEVEL=WARNING

RUN groupadd --system --gid 10001 mlops \
 && useradd --system --uid 10001 --gid mlops --create-home --home-dir /home/mlops mlops

WORKDIR /opt/mlops_nb
# Dependencies first (a layer reused until settings.ini or the lock changes), pinned by requirements.lock.
COPY settings.ini setup.py README.md requirements.lock ./
COPY mlops_nb ./mlops_nb
RUN pip install -c requirements.lock . \
 && pip check

# The numeric ids of the user made above (a name may not resolve on the host, e.g. for mounted files).
USER 10001:10001
WORKDIR /project
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/ping', timeout=4)"]
CMD ["mlops-nb", "serve", "--host", "0.0.0.0"]
