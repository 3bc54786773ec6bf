# kafka-window-aggregator: `kwa` with its native (Rust, napi-rs) window core.
# Build:  docker build -t kwa .      Run:  docker run --rm -e KAFKA_BROKERS=host:9092 kwa run

# --- build: Rust addon + TypeScript ---
FROM node:20-bookworm AS build
RUN curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --default-toolchain 1.95.0
ENV PATH="/root/.cargo/bin:${PATH}"
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY native ./native
COPY consumer ./consumer
COPY schemas ./schemas
RUN npm run build && npm prune --omit=dev

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
USER node
ENTRYPOINT ["node", "dist/consumer/cli.js"]
CMD ["run"]
