FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    MLOPS_BOT_CONFIG=/etc/mlops-bot/mlops-bot.yaml PORT=3000

# tini as PID 1 reaps the processes a retrain command leaves when it ends or is cancelled.
RUN apt-get update && apt-get install -y --no-install-recommends tini && rm -rf /var/lib/apt/lists/*
RUN useradd --create-home --uid 10001 mlops && mkdir -p /data /etc/mlops-bot && chown mlops /data
WORKDIR /app
COPY pyproject.toml README.md ./
COPY bot ./bot
COPY handlers ./handlers
RUN pip install ".[charts]"
COPY examples ./examples

USER mlops
# The SQLite store (set `store: /data/mlops-bot.db` in the config) lives on this volume.
VOLUME ["/data"]
EXPOSE 3000
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD python -c "import os,sys,urllib.request; sys.exit(0 if urllib.request.urlopen(f'http://127.0.0.1:{os.environ[\"PORT\"]}/healthz', timeout=4).status == 200 else 1)"
ENTRYPOINT ["tini", "--"]
CMD ["mlops-bot", "serve"]
