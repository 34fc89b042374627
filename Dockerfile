# One image for every service of compose.yaml (simulator, worker, report, bundle, serve, demo-camera); CPU torch,
# or CUDA torch with --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu130 (compose's serve-gpu services).
# /bundles exists, owned by the app user, so the named volume compose mounts there is writable by `dynbn fit`.
# The data directory (cifar10/, frost/, models/) is mounted at /data, never baked in.
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 \
    DYNBN_DATA=/data DYNBN_ARTIFACTS=/artifacts

WORKDIR /app
# dependencies first (a layer that survives code edits): torch from the CPU wheel index, then
# the rest exactly as pyproject.toml lists them (one list, no copy to drift)
COPY pyproject.toml README.md ./
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN pip install --index-url ${TORCH_INDEX} torch==2.14.1 torchvision==0.29.1 \
 && python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
    > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt && rm /tmp/requirements.txt

COPY dynbn ./dynbn
COPY simulator ./simulator
COPY streamer ./streamer
COPY scenarios ./scenarios
# editable: scenarios/ is found next to the packages
RUN pip install --no-deps -e . \
 && useradd --create-home --uid 1000 dynbn \
 && mkdir -p /artifacts /out /bundles && chown dynbn /artifacts /out /bundles
USER dynbn

CMD ["dynbn", "scenario", "run", "--out", "/out"]
