/**
 * read_committed reads on a real broker when aborted transactions end out of order.
 *
 * The broker lists a fetch's aborted transactions in the order their abort markers were written,
 * not by first offset. Upstream kafkajs 2.2.4 assumed the latter and returned the records of an
 * aborted transaction listed after one that started later (patches/kafkajs+2.2.4.patch fixes
 * it). That broke exactly once twice over: a restore folded aborted changelog records into the
 * state, and read_committed readers (the chaos verifier, downstream consumers) saw aborted output.
 *
 *   npx vitest run --project integration test/integration/read-committed.test.ts
 */
import type { Kafka, Producer } from 'kafkajs'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { ChangelogReader, changelogRecords } from '../../consumer/changelog'
import { createKafka } from '../../consumer/kafka'
import { createLogger } from '../../consumer/logger'
import type { ClosedWindows, WindowStates } from '../../consumer/native'
import { createTopic, kafkaBrokers, readAll, uniqueTopic } from '../helpers/kafka'

const logger = createLogger('silent')
let kafka: Kafka
const producers: Producer[] = []

beforeAll(() => {
  kafka = createKafka({ brokers: [kafkaBrokers()], clientId: 'kwa-read-committed-test', logger })
})

afterAll(async () => {
  await Promise.all(producers.map((p) => p.disconnect()))
})

async function transactionalProducer(id: string): Promise<Producer> {
  const producer = kafka.producer({ transactionalId: id, idempotent: true, maxInFlightRequests: 1 })
  await producer.connect()
  producers.push(producer)
  return producer
}

/**
 * Waits until `topic`'s high watermark (markers included; admin offsets would give the last
 * stable offset, pinned by the open transaction) reaches `atLeast`.
 */
async function untilHighWatermark(topic: string, atLeast: number): Promise<void> {
  const consumer = kafka.consumer({
    groupId: uniqueTopic('high-watermark'),
    readUncommitted: true,
    maxWaitTimeInMs: 100,
  })
  let reached = (): void => undefined
  const done = new Promise<void>((resolve) => (reached = resolve))
  await consumer.connect()
  try {
    await consumer.subscribe({ topic, fromBeginning: true })
    consumer.on(consumer.events.END_BATCH_PROCESS, ({ payload }) => {
      if (Number(payload.highWatermark) >= atLeast) reached()
    })
    await consumer.run({ eachBatch: () => Promise.resolve() })
    let timer: NodeJS.Timeout | undefined
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new Error(`${topic} never reached offset ${atLeast}`)),
        20_000,
      )
    })
    await Promise.race([done, timeout]).finally(() => clearTimeout(timer))
  } finally {
    await consumer.disconnect()
  }
}

interface Write {
  key: Buffer
  value: Buffer | null
}

/**
 * Writes to partition 0 of `topic`: `first`'s transaction starts at offset 0, `second`'s at 1;
 * `second` aborts first, so the broker lists the aborted transactions as [second, first].
 * Then `committed` is written in a third, committed transaction.
 */
async function abortOutOfOrder(
  topic: string,
  writes: { first: Write[]; second: Write[]; committed: Write[] },
): Promise<void> {
  const tag = topic.slice(-8)
  const [a, b, c] = await Promise.all(
    ['a', 'b', 'c'].map((name) => transactionalProducer(`kwa-rc-${tag}-${name}`)),
  )
  const send = (messages: Write[]) => ({
    topic,
    messages: messages.map((m) => ({ ...m, partition: 0 })),
  })
  const first = await a!.transaction()
  await first.send(send(writes.first))
  const second = await b!.transaction()
  await second.send(send(writes.second))
  const sent = writes.first.length + writes.second.length
  await second.abort()
  // The second transaction's abort marker is written before the first aborts.
  await untilHighWatermark(topic, sent + 1)
  await first.abort()
  await untilHighWatermark(topic, sent + 2)
  const third = await c!.transaction()
  await third.send(send(writes.committed))
  await third.commit()
}

const text = (s: string) => Buffer.from(s)

describe('read_committed with aborted transactions listed out of offset order', () => {
  it('a kafkajs consumer returns only the committed records', async () => {
    const topic = uniqueTopic('read-committed')
    await createTopic(kafkaBrokers(), topic, 1)
    await abortOutOfOrder(topic, {
      first: [{ key: text('a'), value: text('aborted-1') }],
      second: [{ key: text('b'), value: text('aborted-2') }],
      committed: [
        { key: text('c'), value: text('committed-1') },
        { key: text('d'), value: text('committed-2') },
      ],
    })
    const read = await readAll(kafkaBrokers(), topic, { expected: 2, idleMs: 300 })
    expect(read.map((m) => m.value?.toString())).toEqual(['committed-1', 'committed-2'])
    // The aborted records are there for a read_uncommitted reader: the case really happened.
    const raw = await readAll(kafkaBrokers(), topic, { expected: 4, readUncommitted: true })
    expect(raw.map((m) => m.value?.toString())).toEqual([
      'aborted-1',
      'aborted-2',
      'committed-1',
      'committed-2',
    ])
  }, 60_000)

  it('a changelog restore folds only committed records', async () => {
    const topic = uniqueTopic('read-committed-changelog')
    await createTopic(kafkaBrokers(), topic, 1, { 'cleanup.policy': 'compact' })
    const window = (key: string, start: number, count: number): WindowStates => ({
      seriesKeys: [key],
      windowStart: Float64Array.of(start),
      count: Float64Array.of(count),
      sum: Float64Array.of(count * 2),
      compensation: Float64Array.of(0),
      min: Float64Array.of(1),
      max: Float64Array.of(3),
      firstOffset: Float64Array.of(7),
    })
    const none: ClosedWindows = {
      seriesKeys: [],
      windowStart: new Float64Array(0),
      windowEnd: new Float64Array(0),
      count: new Float64Array(0),
      sum: new Float64Array(0),
      mean: new Float64Array(0),
      min: new Float64Array(0),
      max: new Float64Array(0),
      quantiles: new Float64Array(0),
    }
    await abortOutOfOrder(topic, {
      // Aborted batches: one opened a window for another key, one grew the window.
      first: changelogRecords(window('ghost', 0, 5), none, 9_000, 0, 11),
      second: changelogRecords(window('s', 0, 99), none, 8_000, 0, 12),
      committed: changelogRecords(window('s', 0, 3), none, 500, 0, 10),
    })
    const reader = new ChangelogReader(kafka, topic, uniqueTopic('restore'), logger)
    await reader.start()
    try {
      const restored = await reader.restore(0, 30_000)
      expect(restored.streamTime).toBe(500)
      expect(restored.nextOffset).toBe('10')
      expect(restored.states.seriesKeys).toEqual(['s'])
      expect(Array.from(restored.states.count)).toEqual([3])
      expect(Array.from(restored.states.sum)).toEqual([6])
    } finally {
      await reader.stop()
    }
  }, 60_000)
})
