# The Berth control plane (web, worker, scheduler and beat share this image; see docker-compose.yml).

# Front-end libraries from npm (package-lock.json), served as static files: no build step.
FROM node:20-bookworm-slim AS vendor
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund --ignore-scripts \
    && mkdir -p vendor/xterm vendor/uplot \
    && cp node_modules/@xterm/xterm/lib/xterm.js node_modules/@xterm/xterm/css/xterm.css \
          node_modules/@xterm/addon-fit/lib/addon-fit.js vendor/xterm/ \
    && cp node_modules/uplot/dist/uPlot.iife.min.js node_modules/uplot/dist/uPlot.min.css vendor/uplot/

FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app

COPY requirements.txt agent/requirements.txt /tmp/
RUN pip install -r /tmp/requirements.txt && useradd --system --uid 10001 --home /app berth

COPY . /app
COPY --from=vendor /src/vendor /app/web/static/vendor
# Static files are collected at build time; the key here is only for this step.
RUN BERTH_DEBUG=false BERTH_SECRET_KEY=collectstatic-only BERTH_ALLOWED_HOSTS=build \
    python manage.py collectstatic --noinput -v0 && chown -R berth /app

USER berth
EXPOSE 8000
# uvicorn serves HTTP and WebSockets (agents and browsers). A stop waits at most 3 s for
# work in flight: agents reconnect anyway, and a stop must not hang on a lingering task.
CMD ["uvicorn", "config.asgi:application", "--host", "0.0.0.0", "--port", "8000", "--proxy-headers", "--forwarded-allow-ips=*", "--timeout-graceful-shutdown", "3"]
