# A camera worker: `dsanet run` with the Triton client and the Kafka sink (CPU only: the encoder runs on
# Triton, the head on this CPU). Build from the repository root:
#   docker build -f deploy/docker/worker.Dockerfile -t dsanet-worker .
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml constraints.txt README.md ./
COPY stream ./stream
COPY engine ./engine
COPY export ./export
COPY configs ./configs
RUN pip install --no-cache-dir -c constraints.txt ".[cpu,triton,kafka]"
# /data holds the spool and events; a named volume takes this ownership on first use
RUN mkdir -p /data && chown 65534:65534 /data
USER 65534:65534
ENTRYPOINT ["dsanet"]
CMD ["run", "-c", "/config/site.yaml"]
