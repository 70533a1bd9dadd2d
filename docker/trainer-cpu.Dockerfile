# CPU trainer image (scan-train, scan-export), built from the repository root:
#   docker build -f docker/trainer-cpu.Dockerfile -t scan-train-cpu .
#   docker run --rm -v $PWD/runs:/app/runs scan-train-cpu configs/fashion_mnist_cpu.yaml --output runs/fmnist
FROM python:3.11-slim-bookworm
RUN apt-get update \
 && apt-get install -y --no-install-recommends dataset-fashion-mnist \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY trainer ./trainer
COPY export ./export
COPY scan_serve ./scan_serve
COPY configs ./configs
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu \
 && pip install --no-cache-dir ".[train,cpu]" \
 && useradd --create-home --uid 10001 scan && mkdir -p /app/runs && chown scan /app/runs
USER scan
ENTRYPOINT ["scan-train"]
