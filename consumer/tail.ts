import { randomUUID } from 'node:crypto'
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
  const consumer = kafka.consumer({ groupId: `kwa-tail-${randomUUID()}` })
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
  await new Promise<void>((resolve) =>
    signal.addEventListener('abort', () => resolve(), { once: true }),
  )
  await consumer.disconnect()
}
