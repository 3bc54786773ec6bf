# kafka-window-aggregator: `kwa` with its native (Rust, napi-rs) window core.
# Build:  docker build -t kwa .
# Run:    docker run --rm -e KAFKA_BROKERS=host:9092 kwa run        (or: kwa topics | produce | tail)

# --- build: Rust addon + TypeScript ---
FROM node:20-bookworm AS build
RUN curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --default-toolchain 1.95.0
ENV PATH="/root/.cargo/bin:${PATH}"
WORKDIR /app
# patch-package (postinstall) applies patches/ to node_modules: copy it before npm ci.
COPY package.json package-lock.json ./
COPY patches ./patches
RUN npm ci --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY native ./native
COPY consumer ./consumer
COPY schemas ./schemas
# The addon (native/*.node, release build) and dist/ (tsc); then drop the dev dependencies.
RUN npm run build && npm prune --omit=dev --no-audit --no-fund

# --- runtime: node, production deps, compiled JS, the addon, the Avro contracts ---
FROM node:20-bookworm-slim
ENV NODE_ENV=production
WORKDIR /app
COPY --from=build /app/package.json ./
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY --from=build /app/native/index.js /app/native/package.json ./native/
COPY --from=build /app/native/*.node ./native/
COPY --from=build /app/schemas ./schemas
# Not root: the image's `node` user (uid 1000). Nothing here needs to write to /app.
USER node
# /metrics, /healthz, /readyz of `kwa run` (--http-port, KWA_HTTP_PORT). The server listens on
# 127.0.0.1 unless KWA_HTTP_HOST says otherwise (0.0.0.0 to be scraped from other containers).
EXPOSE 9464
# Liveness of `kwa run`. The slim image has no curl: ask node. Other commands (topics, produce,
# tail) serve no HTTP: turn the check off for them (compose: `healthcheck: { disable: true }`).
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:' + (process.env.KWA_HTTP_PORT || 9464) + '/healthz', { signal: AbortSignal.timeout(4000) }).then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]
# Signals go straight to node (exec form): SIGTERM finishes the batch, commits and leaves the group.
ENTRYPOINT ["node", "dist/consumer/cli.js"]
CMD ["run"]
