import type { Logger } from './logger'
import { namespace } from './logger'
import { createKafka, type KafkaSecurity } from './kafka'
import { checkTls } from './tls'
import { Partitioners } from 'kafkajs'
import { encodeTelemetryBatch, type Sample, type TelemetryBatch } from './schemas'

export interface GeneratorConfig {
  keys: number
  partitions: number
  samplesPerBatch: number
  /** Fraction of samples stamped up to `maxDelayMs` in the past. */
  outOfOrder: number
  maxDelayMs: number
  random?: () => number
}

/**
 * Synthetic telemetry: series `series-<n>` pinned to partition n % partitions (every series must
 * live on one partition: windows are per partition), values a noisy sine wave per series.
 */
export class TelemetryGenerator {
  private readonly random: () => number
  private readonly keysByPartition: string[][]
  private sequence = 0

  constructor(private readonly config: GeneratorConfig) {
    this.random = config.random ?? Math.random
    const width = String(Math.max(0, config.keys - 1)).length
    this.keysByPartition = Array.from({ length: config.partitions }, () => [])
    for (let n = 0; n < config.keys; n++) {
      this.keysByPartition[n % config.partitions]?.push(`series-${String(n).padStart(width, '0')}`)
    }
  }

  /** Partitions that have at least one series. */
  get activePartitions(): number[] {
    return this.keysByPartition.flatMap((keys, p) => (keys.length > 0 ? [p] : []))
  }

  batch(partition: number, nowMs: number): TelemetryBatch {
    const keys = this.keysByPartition[partition] ?? []
    const samples: Sample[] = new Array<Sample>(keys.length === 0 ? 0 : this.config.samplesPerBatch)
    for (let i = 0; i < samples.length; i++) {
      const seriesKey = keys[Math.floor(this.random() * keys.length)] as string
      const late = this.random() < this.config.outOfOrder
      const eventTime = late ? nowMs - Math.floor(this.random() * this.config.maxDelayMs) : nowMs
      const phase = (seriesKey.length * 7 + seriesKey.charCodeAt(seriesKey.length - 1)) % 13
      const value = 50 + 10 * Math.sin(eventTime / 20_000 + phase) + (this.random() - 0.5) * 4
      samples[i] = { seriesKey, eventTime, value }
    }
    return { sourceId: `kwa-produce-${process.pid}-${this.sequence++}`, samples }
  }
}

export interface ProduceConfig extends Omit<GeneratorConfig, 'random'> {
  brokers: string[]
  clientId: string
  /** TLS and SASL; default plaintext. */
  security?: KafkaSecurity
  topic: string
  /** Samples per second; 0 = as fast as possible. */
  rate: number
  durationMs?: number
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

/** Creates the topic when missing, then produces until `signal` aborts or the duration ends. */
export async function produceTelemetry(
  config: ProduceConfig,
  logger: Logger,
  signal: AbortSignal,
): Promise<number> {
  const log = namespace(logger, 'Produce')
  const kafka = createKafka({
    brokers: config.brokers,
    clientId: config.clientId,
    security: config.security,
    logger,
  })
  await checkTls(config.brokers, config.security?.ssl, config.clientId)
  const admin = kafka.admin()
  const producer = kafka.producer({
    allowAutoTopicCreation: false,
    createPartitioner: Partitioners.DefaultPartitioner,
  })
  await admin.connect()
  try {
    if (!(await admin.listTopics()).includes(config.topic)) {
      await admin.createTopics({
        topics: [{ topic: config.topic, numPartitions: config.partitions }],
        waitForLeaders: true,
      })
      log.info({ topic: config.topic, partitions: config.partitions }, 'created topic')
    }
  } finally {
    await admin.disconnect()
  }

  const generator = new TelemetryGenerator(config)
  const partitions = generator.activePartitions
  await producer.connect()
  const started = Date.now()
  let sent = 0
  try {
    while (
      !signal.aborted &&
      (config.durationMs === undefined || Date.now() - started < config.durationMs)
    ) {
      const now = Date.now()
      const messages = partitions.map((partition) => ({
        partition,
        value: encodeTelemetryBatch(generator.batch(partition, now)),
      }))
      await producer.send({ topic: config.topic, acks: -1, messages })
      sent += messages.length * config.samplesPerBatch
      if (config.rate > 0) {
        const due = started + (sent / config.rate) * 1000
        if (due > Date.now()) await sleep(due - Date.now())
      }
    }
  } finally {
    await producer.disconnect()
  }
  log.info(
    { topic: config.topic, samples: sent, seconds: (Date.now() - started) / 1000 },
    'produced',
  )
  return sent
}
