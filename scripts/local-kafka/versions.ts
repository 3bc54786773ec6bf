// Kafka versions and cache paths: default version, cache dir, version checks, libs dir.
import os from 'node:os'
import path from 'node:path'

export const DEFAULT_KAFKA_VERSION = '3.9.2'

export function defaultKafkaVersion(): string {
  const fromEnv = process.env['KWA_KAFKA_VERSION']?.trim()
  return fromEnv ? fromEnv : DEFAULT_KAFKA_VERSION
}

export function kafkaCacheDir(): string {
  const fromEnv = process.env['KWA_CACHE_DIR']?.trim()
  return fromEnv ? fromEnv : path.join(os.homedir(), '.cache', 'kafka-window-aggregator')
}

/** The version ends up in paths and Maven arguments, so only accept plain version strings. */
export function assertVersion(version: string): void {
  if (!/^\d+\.\d+\.\d+([.-][0-9A-Za-z.-]+)?$/.test(version)) {
    throw new Error(`Not a Kafka version: "${version}" (expected e.g. 3.9.2 or 4.1.1)`)
  }
}

function majorOf(version: string): number {
  return Number.parseInt(version.split('.')[0] ?? '0', 10)
}

/** Kafka 4 moved to log4j2 and added share groups; 3.x uses log4j 1 (reload4j here). */
export function isKafka4OrLater(version: string): boolean {
  return majorOf(version) >= 4
}

export function libsDirOf(version: string): string {
  return path.join(kafkaCacheDir(), `kafka-${version}`, 'libs')
}
