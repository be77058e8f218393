FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY embedguard embedguard
COPY capture capture
COPY pipeline pipeline
COPY replay replay
COPY dashboard dashboard
COPY schemas schemas
RUN pip install --no-cache-dir . && useradd --system embedguard
USER embedguard
ENTRYPOINT []
