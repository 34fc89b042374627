# One image for every service of compose.yaml (simulator, worker, report); CPU torch.
# The data directory (cifar10/, frost/, models/) is mounted at /data, never baked in.
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 \
    DYNBN_DATA=/data DYNBN_ARTIFACTS=/artifacts

WORKDIR /app
# dependencies first (a layer that survives code edits); torch from the CPU wheel index
COPY pyproject.toml README.md ./
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.14.1 torchvision==0.29.1 \
 && pip install numpy scipy pillow opencv-python-headless safetensors pydantic pydantic-settings pyyaml redis matplotlib av

COPY dynbn ./dynbn
COPY simulator ./simulator
COPY streamer ./streamer
COPY scenarios ./scenarios
# editable: scenarios/ is found next to the packages
RUN pip install --no-deps -e . \
 && useradd --create-home --uid 1000 dynbn \
 && mkdir -p /artifacts /out && chown dynbn /artifacts /out
USER dynbn

CMD ["dynbn", "scenario", "run", "--out", "/out"]
