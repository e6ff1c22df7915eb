# syntax=docker/dockerfile:1
FROM python:3.11-slim AS build
# a C compiler for setup.py's mypyc build of the guards (the image that runs it needs none)
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY proxy ./proxy
RUN pip wheel --no-cache-dir --wheel-dir /wheels . \
    && python -c "import sys, zipfile, glob; names = zipfile.ZipFile(glob.glob('/wheels/flux_proxy-*.whl')[0]).namelist(); sys.exit(not any(n.startswith('proxy/limits/guard.') and n.endswith('.so') for n in names))"

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 flux
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
COPY config/flux-proxy.toml /etc/flux-proxy/flux-proxy.toml
USER flux
WORKDIR /home/flux
ENV FLUX_PROXY_CONFIG=/etc/flux-proxy/flux-proxy.toml PYTHONUNBUFFERED=1
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=3s --start-period=5s \
  CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status != 200)"
CMD ["flux-proxy", "serve", "--host", "0.0.0.0", "--port", "8000"]
