# The gateway image: scan-serve with embedded onnxruntime (CPU), serving a model repository mounted at /models.
#   docker build -t scan-serve .
#   docker run --rm -p 50051:50051 -p 9464:9464 -v $PWD/model_repository:/models:ro scan-serve
#   (add -e SCAN_SERVE_MODEL_NAME=... for another model, -e SCAN_SERVE_TRITON_URL=host:8001 for Triton,
#    -v tokendir:/run/secrets:ro -e SCAN_SERVE_TOKEN_FILE=/run/secrets/token for operator methods)
FROM python:3.11-slim-bookworm
WORKDIR /app
COPY pyproject.toml README.md ./
COPY trainer ./trainer
COPY export ./export
COPY scan_serve ./scan_serve
# the gateway without torch (fine-tuning with --store needs the trainer image's .[train])
RUN pip install --no-cache-dir ".[serve,cpu]" \
 && useradd --create-home --uid 10001 scan
USER scan
ENV SCAN_SERVE_REPOSITORY=/models SCAN_SERVE_MODEL_NAME=fashion_mnist SCAN_SERVE_HOST=0.0.0.0
VOLUME ["/models"]
EXPOSE 50051 9464
HEALTHCHECK --interval=10s --timeout=6s --start-period=20s --retries=3 CMD ["python", "-m", "scan_serve.healthcheck", "127.0.0.1:50051"]
ENTRYPOINT ["scan-serve"]
