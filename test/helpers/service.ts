import { Partitioners } from 'kafkajs'
import { afterEach } from 'vitest'
import { createKafka } from '../../consumer/kafka'
import { createLogger, type Logger } from '../../consumer/logger'
import { encodeTelemetryBatch, type Sample } from '../../consumer/schemas'
import { AggregatorService, type ServiceConfig } from '../../consumer/service'
import { createTopic, kafkaBrokers, uniqueTopic } from './kafka'

/** What every in-process replica of a test file shares. */
export interface ReplicaDefaults {
  clientId: string
  partitions: number
  window: ServiceConfig['window']
  logger: Logger
}

/** One test's topics and group, and replicas of it (stopped after the test). */
export interface ReplicaSetup {
  brokers: string
  input: string
  output: string
  config: ServiceConfig
  /** A new replica of the group, not started. */
  replica: () => AggregatorService
  /** A new replica of the group, started. */
  started: () => Promise<AggregatorService>
}

/**
 * In-process replicas on the test broker: `setup(name)` creates fresh input and output topics
 * (the given partitions) and a config for a fresh group; every replica made is stopped after each
 * test. Call at the top of a describe block.
 */
export function inProcessReplicas(
  defaults: ReplicaDefaults,
): (name: string, extra?: Partial<ServiceConfig>) => Promise<ReplicaSetup> {
  const services: AggregatorService[] = []
  afterEach(async () => {
    await Promise.all(services.splice(0).map((s) => s.stop()))
  })
  return async (name, extra = {}) => {
    const brokers = kafkaBrokers()
    const input = uniqueTopic(`${name}-in`)
    const output = uniqueTopic(`${name}-out`)
    await createTopic(brokers, input, defaults.partitions)
    await createTopic(brokers, output, defaults.partitions)
    const config: ServiceConfig = {
      brokers: [brokers],
      clientId: defaults.clientId,
      groupId: uniqueTopic(`${name}-group`),
      inputTopic: input,
      outputTopic: output,
      window: defaults.window,
      sessionTimeoutMs: 10_000,
      statsIntervalMs: 0,
      ...extra,
    }
    const replica = () => {
      const service = new AggregatorService(config, defaults.logger)
      services.push(service)
      return service
    }
    const started = async () => {
      const service = replica()
      await service.start()
      return service
    }
    return { brokers, input, output, config, replica, started }
  }
}

/**
 * Produces messages `from` to `to` (exclusive) of each partition's list of sample batches, one
 * TelemetryBatch per message, to that partition; 50 messages per partition and send. With
 * `transactionalId`, each send is a committed transaction (so the topic holds commit markers, as
 * when the upstream producer writes exactly once).
 */
export async function produceTelemetry(
  brokers: string,
  topic: string,
  input: Sample[][][],
  from: number,
  to: number,
  { transactionalId }: { transactionalId?: string } = {},
): Promise<void> {
  const kafka = createKafka({ brokers: [brokers], clientId: 'test-producer', logger: quiet })
  const producer = kafka.producer({
    createPartitioner: Partitioners.DefaultPartitioner,
    ...(transactionalId === undefined
      ? {}
      : { transactionalId, idempotent: true, maxInFlightRequests: 1 }),
  })
  await producer.connect()
  try {
    for (let m = from; m < to; m += 50) {
      const messages = input.flatMap((batches, partition) =>
        batches.slice(m, Math.min(m + 50, to)).map((samples, i) => ({
          partition,
          value: encodeTelemetryBatch({ sourceId: `test-${partition}-${m + i}`, samples }),
        })),
      )
      if (transactionalId === undefined) {
        await producer.send({ topic, acks: -1, messages })
        continue
      }
      const transaction = await producer.transaction()
      try {
        await transaction.send({ topic, acks: -1, messages })
        await transaction.commit()
      } catch (error) {
        await transaction.abort()
        throw error
      }
    }
  } finally {
    await producer.disconnect()
  }
}

const quiet = createLogger('silent')
