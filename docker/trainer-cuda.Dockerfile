# GPU trainer image on a CUDA PyTorch base (scan-train, scan-export), built from the repository root:
#   docker build -f docker/trainer-cuda.Dockerfile -t scan-train-cuda .
#   docker run --rm --gpus all -v $PWD/runs:/app/runs -v /data:/data scan-train-cuda \
#     configs/cifar10.yaml --output runs/cifar10 --set data.root=/data/cifar10
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime
WORKDIR /app
COPY pyproject.toml README.md ./
COPY trainer ./trainer
COPY export ./export
COPY scan_serve ./scan_serve
COPY configs ./configs
# the base image's CUDA torch satisfies the torch requirement; the gpu extra adds faiss-gpu and onnxruntime-gpu
RUN pip install --no-cache-dir ".[train,gpu]" \
 && useradd --create-home --uid 10001 scan && mkdir -p /app/runs && chown scan /app/runs
USER scan
ENTRYPOINT ["scan-train"]
