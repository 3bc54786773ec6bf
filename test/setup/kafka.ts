/**
 * vitest globalSetup: makes one Kafka broker available to the whole test run.
 *
 * Choice order:
 *   1. KAFKA_BROKERS, if set, is used as is (a developer's or CI's own broker).
 *   2. testcontainers (cp-kafka image), if a container runtime answers.
 *   3. A real broker from Maven Central jars (scripts/local-kafka.ts): needs java + mvn, no Docker.
 * KWA_KAFKA_BACKEND=testcontainers|jar forces 2 or 3 (e.g. to run the jar broker with
 * KWA_KAFKA_VERSION=4.1.1 on a machine that has Docker).
 *
 * Tests read the bootstrap string with inject('kafkaBrokers') (see test/helpers/kafka.ts);
 * child processes get it as KAFKA_BROKERS. No broker means the run fails, never skips.
 */
import type { TestProject } from 'vitest/node'
import { startLocalBroker } from '../../scripts/local-kafka'

declare module 'vitest' {
  export interface ProvidedContext {
    kafkaBrokers: string
  }
}

/** cp-kafka 7.9 is Apache Kafka 3.9, the same line as the jar broker's default. */
const DEFAULT_CP_KAFKA_IMAGE = 'confluentinc/cp-kafka:7.9.0'
const CP_KAFKA_PORT = 9093
const RUNTIME_DETECTION_TIMEOUT_MS = 5_000

interface RunningKafka {
  brokers: string
  description: string
  stop(): Promise<void>
}

export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const kafka = await acquireKafka()
  console.log(`[kafka] ${kafka.description}: ${kafka.brokers}`)

  const previousEnv = process.env['KAFKA_BROKERS']
  process.env['KAFKA_BROKERS'] = kafka.brokers // inherited by test workers and child processes
  project.provide('kafkaBrokers', kafka.brokers)

  return async () => {
    if (previousEnv === undefined) delete process.env['KAFKA_BROKERS']
    else process.env['KAFKA_BROKERS'] = previousEnv
    await kafka.stop()
  }
}

async function acquireKafka(): Promise<RunningKafka> {
  const fromEnv = process.env['KAFKA_BROKERS']?.trim()
  if (fromEnv) {
    return { brokers: fromEnv, description: 'using KAFKA_BROKERS', stop: () => Promise.resolve() }
  }

  const forced = process.env['KWA_KAFKA_BACKEND']?.trim()
  if (forced && forced !== 'testcontainers' && forced !== 'jar') {
    throw new Error(`KWA_KAFKA_BACKEND must be "testcontainers" or "jar", not "${forced}"`)
  }

  const failures: string[] = []
  if (forced !== 'jar') {
    const runtimeProblem = await containerRuntimeProblem()
    if (runtimeProblem === undefined) {
      try {
        return await startKafkaContainer()
      } catch (error) {
        failures.push(`testcontainers: ${errorText(error)}`)
      }
    } else {
      failures.push(`testcontainers: no container runtime (${runtimeProblem})`)
    }
    if (forced === 'testcontainers') throw noBrokerError(failures)
  }

  try {
    return await startJarBroker()
  } catch (error) {
    failures.push(`local jar broker: ${errorText(error)}`)
  }
  throw noBrokerError(failures)
}

/** undefined when a runtime answers; otherwise why not. Bounded so a hung daemon cannot stall us. */
async function containerRuntimeProblem(): Promise<string | undefined> {
  try {
    // Imported lazily: the jar path should not pay for loading the Docker client.
    const { getContainerRuntimeClient } = await import('testcontainers')
    await withTimeout(getContainerRuntimeClient(), RUNTIME_DETECTION_TIMEOUT_MS)
    return undefined
  } catch (error) {
    return errorText(error)
  }
}

async function startKafkaContainer(): Promise<RunningKafka> {
  const { KafkaContainer } = await import('@testcontainers/kafka')
  const image = process.env['KWA_CP_KAFKA_IMAGE']?.trim() || DEFAULT_CP_KAFKA_IMAGE
  const container = new KafkaContainer(image).withEnvironment({
    // Match the jar broker: explicit topics only, single-replica transaction log.
    KAFKA_AUTO_CREATE_TOPICS_ENABLE: 'false',
    KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR: '1',
    KAFKA_TRANSACTION_STATE_LOG_NUM_PARTITIONS: '1',
  })
  // The module enables KRaft itself for cp-kafka >= 8.0.0; 7.x would default to ZooKeeper.
  if (majorOfImageTag(image) < 8) container.withKraft()
  const started = await container.start()
  return {
    brokers: `${started.getHost()}:${started.getMappedPort(CP_KAFKA_PORT)}`,
    description: `testcontainers ${image}`,
    stop: async () => {
      await started.stop()
    },
  }
}

async function startJarBroker(): Promise<RunningKafka> {
  const broker = await startLocalBroker()
  return {
    brokers: broker.brokers,
    description: `local Kafka ${broker.version} from jars (log: ${broker.logFile})`,
    stop: () => broker.cleanup(),
  }
}

function majorOfImageTag(image: string): number {
  const tag = image.slice(image.lastIndexOf(':') + 1)
  const major = Number.parseInt(tag, 10)
  return Number.isNaN(major) ? Number.POSITIVE_INFINITY : major
}

function noBrokerError(failures: string[]): Error {
  return new Error(
    'No Kafka broker for the tests. Set KAFKA_BROKERS=host:port, or provide a container ' +
      'runtime, or java 17 + mvn with Maven Central reachable for the local jar broker.\n' +
      failures.map((f) => `- ${f}`).join('\n'),
  )
}

function withTimeout<T>(promise: Promise<T>, timeoutMs: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no answer within ${timeoutMs} ms`)), timeoutMs)
  })
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer))
}

function errorText(error: unknown): string {
  return error instanceof Error ? error.message : String(error)
}
