import { defineConfig } from 'vitest/config'

export default defineConfig({
  test: {
    projects: [
      {
        test: {
          name: 'unit',
          include: ['test/**/*.test.ts'],
          exclude: ['test/integration/**'],
          testTimeout: 60_000,
        },
      },
      {
        test: {
          name: 'integration',
          include: ['test/integration/**/*.test.ts'],
          // Starts (or finds) a real Kafka broker: KAFKA_BROKERS, testcontainers, or the jar broker.
          globalSetup: ['test/setup/kafka.ts'],
          testTimeout: 240_000,
          hookTimeout: 180_000,
          // Broker-backed tests share one small machine: run files one at a time.
          fileParallelism: false,
        },
      },
    ],
  },
})
