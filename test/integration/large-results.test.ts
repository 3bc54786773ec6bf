/**
 * At least once, a window closing for many series at once can publish more than one record batch
 * takes (`max.message.bytes`). On a real broker: the refusal is recognised, and the results go
 * again in smaller requests, every one of them, in order.
 *
 *   npx vitest run --project integration test/integration/large-results.test.ts
 */
import { Partitioners } from 'kafkajs'
import { expect, it } from 'vitest'
import { createKafka } from '../../consumer/kafka'
import { createLogger } from '../../consumer/logger'
import { isTooLarge, sendResults } from '../../consumer/transactions'
import { createTopic, kafkaBrokers, readAll, uniqueTopic } from '../helpers/kafka'

const logger = createLogger('silent')

it('sends results over the broker message size limit in smaller requests', async () => {
  const brokers = kafkaBrokers()
  const topic = uniqueTopic('large-results')
  // 20k results of ~60 bytes in one partition: about 1.2 MB in one record batch, refused by a
  // 600 kB limit; the fallback's requests of at most 512 KiB are not.
  await createTopic(brokers, topic, 1, { 'max.message.bytes': '600000' })
  const messages = Array.from({ length: 20_000 }, (_, i) => ({
    key: `series-${i}`,
    value: Buffer.alloc(40, i % 251),
  }))
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
    expect(split).toBe(messages.length)
  } finally {
    await producer.disconnect()
  }
  const read = await readAll(brokers, topic, { expected: messages.length, timeoutMs: 60_000 })
  expect(read.map((m) => m.key?.toString())).toEqual(messages.map((m) => m.key))
  expect(read.every((m, i) => m.value?.equals(messages[i]!.value))).toBe(true)
}, 120_000)
