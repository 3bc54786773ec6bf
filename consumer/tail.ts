import { randomUUID } from 'node:crypto'
import { aclResource, asAuthorizationError } from './errors'
import { createKafka, type KafkaSecurity } from './kafka'
import { checkTls } from './tls'
import type { Logger } from './logger'
import { decodeWindowAggregate, type WindowAggregate } from './schemas'

export interface TailConfig {
  brokers: string[]
  clientId: string
  /** TLS and SASL; default plaintext. */
  security?: KafkaSecurity
  topic: string
  fromBeginning: boolean
  format: 'text' | 'json'
}

/** Tail's throwaway consumer groups start with this (ACLs: Read on groups with this prefix). */
export const TAIL_GROUP_PREFIX = 'kwa-tail-'

const time = (ms: number) => new Date(ms).toISOString().slice(11, 23)

export function formatAggregate(a: WindowAggregate, format: TailConfig['format']): string {
  if (format === 'json') return JSON.stringify(a)
  const quantiles = (a.quantiles ?? [])
    .map((q) => ` p${+(q.q * 100).toPrecision(12)}=${q.value.toFixed(3)}`)
    .join('')
  const stats = `n=${a.count} mean=${a.mean.toFixed(3)} min=${a.min.toFixed(3)} max=${a.max.toFixed(3)}${quantiles}`
  return `${time(a.windowStart)}-${time(a.windowEnd)}  ${a.seriesKey.padEnd(16)} ${stats}`
}

/** Prints every window aggregate published to the output topic until `signal` aborts. */
export async function tailAggregates(
  config: TailConfig,
  logger: Logger,
  signal: AbortSignal,
  print: (line: string) => void = (line) => process.stdout.write(`${line}\n`),
): Promise<void> {
  const kafka = createKafka({
    brokers: config.brokers,
    clientId: config.clientId,
    security: config.security,
    logger,
  })
  await checkTls(config.brokers, config.security?.ssl, config.clientId)
  // A throwaway group: tail reads, never commits, and never steals partitions from others.
  const groupId = `${TAIL_GROUP_PREFIX}${randomUUID()}`
  const consumer = kafka.consumer({ groupId })
  const refused = (error: unknown) =>
    asAuthorizationError(error, `read topic ${config.topic}`, {
      topic: { operation: 'Read', resource: aclResource.topic(config.topic) },
      group: { operation: 'Read', resource: aclResource.group(TAIL_GROUP_PREFIX, true) },
    })
  // kafkajs gives up (a missing ACL, a broker gone for good): fail rather than wait silently.
  const crashed = new Promise<never>((_resolve, reject) =>
    consumer.on(consumer.events.CRASH, ({ payload }) => {
      const refusal = refused(payload.error)
      if (!payload.restart || refusal !== undefined) reject(refusal ?? payload.error)
    }),
  )
  crashed.catch(() => undefined)
  try {
    await consumer.connect()
    await consumer.subscribe({ topic: config.topic, fromBeginning: config.fromBeginning })
    await consumer.run({
      autoCommit: false,
      eachMessage: ({ message, partition }) => {
        if (message.value === null) return Promise.resolve()
        try {
          print(formatAggregate(decodeWindowAggregate(message.value), config.format))
        } catch (err) {
          logger.warn(
            { topic: config.topic, partition, offset: message.offset, err },
            'not a WindowAggregate',
          )
        }
        return Promise.resolve()
      },
    })
    const aborted = new Promise<void>((resolve) =>
      signal.addEventListener('abort', () => resolve(), { once: true }),
    )
    await Promise.race([aborted, crashed])
  } catch (error) {
    throw refused(error) ?? error
  } finally {
    await consumer.disconnect()
  }
}
