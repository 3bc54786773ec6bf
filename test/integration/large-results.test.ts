/**
 * At least once, a window closing for many series at once can publish more than one record batch
 * takes (`max.message.bytes`). On a real broker: the refusal is recognised, and the results go
 * again in smaller requests, every one of them, in order, as the JS encoding would have written
 * them (they are encoded natively: consumer/results.ts).
 *
 *   npx vitest run --project integration test/integration/large-results.test.ts
 */
import { Partitioners } from 'kafkajs'
import { expect, it } from 'vitest'
import { createKafka } from '../../consumer/kafka'
import { createLogger } from '../../consumer/logger'
import type { ClosedWindows } from '../../consumer/native'
import { encodeClosedWindows } from '../../consumer/pipeline'
import { ResultRecords } from '../../consumer/results'
import { isTooLarge, sendResults } from '../../consumer/transactions'
import { createTopic, kafkaBrokers, readAll, uniqueTopic } from '../helpers/kafka'

const logger = createLogger('silent')

it('sends results over the broker message size limit in smaller requests', async () => {
  const brokers = kafkaBrokers()
  const topic = uniqueTopic('large-results')
  // 20k results of ~60 bytes in one partition: about 1.2 MB in one record batch, refused by a
  // 600 kB limit; the fallback's requests of at most 512 KiB are not.
  await createTopic(brokers, topic, 1, { 'max.message.bytes': '600000' })
  const closed = [0, 1].map((part) => closedWindows(part * 10_000, 10_000))
  const results = new ResultRecords(undefined, closed)
  const messages = results.messages()
  const kafka = createKafka({ brokers: [brokers], clientId: 'large-results', logger })
  // As the service's at-least-once producer.
  const producer = kafka.producer({
    allowAutoTopicCreation: false,
    createPartitioner: Partitioners.DefaultPartitioner,
  })
  await producer.connect()
  try {
    // The check has teeth: in one request the broker refuses them, as isTooLarge recognises.
    const refused = await producer
      .sendBatch({ acks: -1, topicMessages: [{ topic, messages }] })
      .then(
        () => undefined,
        (error: unknown) => error,
      )
    expect(isTooLarge(refused)).toBe(true)

    let split = 0
    await sendResults(producer, [{ topic, messages }], (records) => (split = records))
    expect(split).toBe(results.count)
  } finally {
    await producer.disconnect()
  }
  const read = await readAll(brokers, topic, { expected: results.count, timeoutMs: 60_000 })
  const want = closed.flatMap((c) => encodeClosedWindows(c))
  expect(read.map((m) => m.key?.toString())).toEqual(want.map((m) => m.key))
  expect(read.every((m, i) => m.value?.equals(want[i]!.value))).toBe(true)
}, 120_000)

/** Closed windows of series `first`..`first + n - 1`, as the aggregator reports them. */
function closedWindows(first: number, n: number): ClosedWindows {
  const column = (f: (i: number) => number) => Float64Array.from({ length: n }, (_, i) => f(i))
  return {
    seriesKeys: Array.from({ length: n }, (_, i) => `series-${first + i}`),
    windowStart: column(() => 1_700_000_000_000),
    windowEnd: column(() => 1_700_000_060_000),
    count: column((i) => 1 + (i % 7)),
    sum: column((i) => i * 1.5),
    mean: column((i) => (i * 1.5) / (1 + (i % 7))),
    min: column((i) => -i),
    max: column((i) => i),
    quantiles: new Float64Array(0),
  }
}
