# A CPU image that serves an mm checkpoint with mm-serve (see the README's "Serving, search and export" section).
#   docker build -t mm-serve .
#   docker run -p 8000:8000 -v "$PWD/outputs/run_clip-small:/model:ro" mm-serve
#   docker run -p 8000:8000 -v ...:/model:ro -v "$PWD/photos-index:/index:ro" mm-serve --index /index
# tests/test_dockerfile.py replays the pip steps and the command below in a fresh virtual environment.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
# The CPU build of torch first: the package's own `torch` requirement would otherwise pull the CUDA build.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
COPY . /app
# The package itself (a local path, not a PyPI name to pin); its dependencies' ranges are in setup.py.
# hadolint ignore=DL3013
RUN pip install ".[serve]" \
    && useradd --create-home --uid 1000 mm
USER 1000
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/ready', timeout=4)"]
ENTRYPOINT ["mm-serve", "/model", "--host", "0.0.0.0", "--port", "8000"]
