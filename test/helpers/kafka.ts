/**
 * Helpers for tests that talk to the broker provided by test/setup/kafka.ts (vitest globalSetup).
 */
import { randomBytes } from 'node:crypto'
import { inject } from 'vitest'
import { Kafka, logLevel, type Admin, type Batch, type IHeaders } from 'kafkajs'
import type { KafkaSecurity } from '../../consumer/kafka'

/** Bootstrap string ("host:port") of the broker set up for this test run. */
export function kafkaBrokers(): string {
  const brokers = inject('kafkaBrokers')
  if (!brokers) {
    throw new Error('No kafkaBrokers provided: is test/setup/kafka.ts in the vitest globalSetup?')
  }
  return brokers
}

/** A topic name no other test (or earlier run against the same broker) uses. */
export function uniqueTopic(prefix = 'test'): string {
  const safePrefix = prefix.replace(/[^A-Za-z0-9._-]/g, '-').slice(0, 100)
  return `${safePrefix}-${Date.now().toString(36)}-${randomBytes(4).toString('hex')}`
}

/** Creates a topic and waits until every partition has a leader. Throws if it already exists. */
export async function createTopic(
  brokers: string,
  name: string,
  partitions = 1,
  config: Record<string, string> = {},
): Promise<void> {
  await withAdmin(brokers, undefined, async (admin) => {
    const created = await admin.createTopics({
      waitForLeaders: true,
      topics: [
        {
          topic: name,
          numPartitions: partitions,
          configEntries: Object.entries(config).map(([configName, value]) => ({
            name: configName,
            value,
          })),
        },
      ],
    })
    if (!created) throw new Error(`Topic ${name} already exists`)
  })
}

export interface ReadMessage {
  key: Buffer | null
  value: Buffer | null
  partition: number
  /** Kafka offsets are int64, so kafkajs keeps them as strings. */
  offset: string
  timestamp: string
  headers: IHeaders
}

export interface ReadAllOptions {
  /** Keep reading until at least this many messages arrived (they may still be in flight). */
  expected?: number
  /** Once everything else is satisfied, wait this long without new messages before returning. */
  idleMs?: number
  /** Fail if not done by then (default 30 s). */
  timeoutMs?: number
  /** kafkajs reads committed by default; set true to see records of open/aborted transactions. */
  readUncommitted?: boolean
  /** TLS and SASL (a broker's SASL listener); default plaintext. */
  security?: KafkaSecurity
}

const DEFAULT_READ_TIMEOUT_MS = 30_000

/**
 * Reads `topic` from the beginning with a fresh consumer group and returns the messages in the
 * order received (ordered per partition). Returns once every partition reached the end offset it
 * had when the call started, `expected` messages arrived and `idleMs` passed without new ones.
 */
export async function readAll(
  brokers: string,
  topic: string,
  options: ReadAllOptions = {},
): Promise<ReadMessage[]> {
  const endOffsets = await fetchEndOffsets(brokers, topic, options.security)
  const progress = new ReadProgress(endOffsets, options)
  const kafka = newKafka(brokers, 'read-all', options.security)
  const consumer = kafka.consumer({
    groupId: `read-all-${topic}-${randomBytes(6).toString('hex')}`,
    readUncommitted: options.readUncommitted ?? false,
    // disconnect() waits for the fetch in flight; the default 5 s long poll would add up to 5 s.
    maxWaitTimeInMs: 100,
  })
  await consumer.connect()
  try {
    await consumer.subscribe({ topic, fromBeginning: true })
    // Also emitted for batches that held only markers/aborted records (never passed to eachBatch).
    consumer.on(consumer.events.END_BATCH_PROCESS, ({ payload }) => {
      progress.advance(payload.partition, payload.lastOffset)
    })
    await consumer.run({
      eachBatch: ({ batch }) => {
        progress.addBatch(batch)
        return Promise.resolve()
      },
    })
    await progress.untilDone(options.timeoutMs ?? DEFAULT_READ_TIMEOUT_MS, topic)
  } finally {
    await consumer.disconnect()
  }
  return progress.messages
}

/**
 * Tracks the consumed position per partition. Positions come from kafkajs' batch lastOffset, which
 * counts transaction markers and aborted records: those are never delivered as messages, yet a
 * topic written transactionally ends with a marker, so message offsets alone never reach the end.
 */
class ReadProgress {
  readonly messages: ReadMessage[] = []
  private readonly positions = new Map<number, bigint>()
  private lastMessageAt = Date.now()

  constructor(
    private readonly endOffsets: Map<number, bigint>,
    private readonly options: ReadAllOptions,
  ) {}

  addBatch(batch: Batch): void {
    for (const message of batch.messages) {
      this.messages.push({
        key: message.key ?? null,
        value: message.value,
        partition: batch.partition,
        offset: message.offset,
        timestamp: message.timestamp,
        headers: message.headers ?? {},
      })
      this.lastMessageAt = Date.now()
    }
    this.advance(batch.partition, batch.lastOffset())
  }

  advance(partition: number, lastOffset: string): void {
    const next = BigInt(lastOffset) + 1n
    if (next > (this.positions.get(partition) ?? 0n)) this.positions.set(partition, next)
  }

  isDone(): boolean {
    for (const [partition, end] of this.endOffsets) {
      if ((this.positions.get(partition) ?? 0n) < end) return false
    }
    if (this.messages.length < (this.options.expected ?? 0)) return false
    return Date.now() - this.lastMessageAt >= (this.options.idleMs ?? 0)
  }

  untilDone(timeoutMs: number, topic: string): Promise<void> {
    const deadline = Date.now() + timeoutMs
    return new Promise((resolve, reject) => {
      const check = (): void => {
        if (this.isDone()) return resolve()
        if (Date.now() > deadline) return reject(this.timeoutError(timeoutMs, topic))
        setTimeout(check, 25)
      }
      check()
    })
  }

  private timeoutError(timeoutMs: number, topic: string): Error {
    const behind = [...this.endOffsets]
      .filter(([partition, end]) => (this.positions.get(partition) ?? 0n) < end)
      .map(([partition, end]) => `p${partition} at ${this.positions.get(partition) ?? 0n}/${end}`)
    const expected = this.options.expected === undefined ? '' : `/${this.options.expected}`
    return new Error(
      `readAll(${topic}) timed out after ${timeoutMs} ms with ${this.messages.length}${expected} ` +
        `messages${behind.length > 0 ? `; partitions behind: ${behind.join(', ')}` : ''}`,
    )
  }
}

/** End offset per partition; a partition whose log is empty (low == high) needs no reading. */
async function fetchEndOffsets(
  brokers: string,
  topic: string,
  security?: KafkaSecurity,
): Promise<Map<number, bigint>> {
  return withAdmin(brokers, security, async (admin) => {
    const offsets = await admin.fetchTopicOffsets(topic)
    const ends = new Map<number, bigint>()
    for (const { partition, high, low } of offsets) {
      if (BigInt(high) > BigInt(low)) ends.set(partition, BigInt(high))
    }
    return ends
  })
}

async function withAdmin<T>(
  brokers: string,
  security: KafkaSecurity | undefined,
  use: (admin: Admin) => Promise<T>,
): Promise<T> {
  const admin = newKafka(brokers, 'test-admin', security).admin()
  await admin.connect()
  try {
    return await use(admin)
  } finally {
    await admin.disconnect()
  }
}

/** kafkajs logs retriable errors (e.g. coordinator still loading) at ERROR: keep test output clean. */
function newKafka(brokers: string, clientId: string, security: KafkaSecurity = {}): Kafka {
  return new Kafka({
    clientId,
    brokers: brokers.split(','),
    logLevel: logLevel.NOTHING,
    ...(security.ssl !== undefined && { ssl: security.ssl }),
    ...(security.sasl !== undefined && { sasl: security.sasl }),
  })
}
