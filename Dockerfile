FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY streams streams
COPY agents agents
COPY schemas schemas
COPY rules rules
RUN pip install --no-cache-dir '.[rocksdb]'
EXPOSE 6066
CMD ["upsell", "worker"]
