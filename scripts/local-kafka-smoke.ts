/**
 * End-to-end check of scripts/local-kafka.ts against a given Kafka version:
 * start, 4-partition topic, produce/consume, transactional commit + abort (read_committed),
 * kill -9, restart on the same data dir, data still there, clean stop. Prints timings.
 *
 *   npx tsx scripts/local-kafka-smoke.ts [--version 4.1.1]
 */
import { parseArgs } from 'node:util'
import { strict as assert } from 'node:assert'
import { Kafka, logLevel, type Admin, type Message } from 'kafkajs'
import { defaultKafkaVersion, fetchKafka, startLocalBroker, type LocalBroker } from './local-kafka'

const PARTITIONS = 4
const PLAIN_MESSAGES = 40

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { version: { type: 'string' } } })
  const version = values.version ?? defaultKafkaVersion()

  const fetchMs = await timed(() => fetchKafka(version))
  report(`fetch ${version}`, fetchMs)

  let broker: LocalBroker | undefined
  const startMs = await timed(async () => {
    broker = await startLocalBroker({ version })
  })
  if (!broker) throw new Error('unreachable')
  report(`start (format + JVM + ready) on ${broker.brokers}`, startMs)

  try {
    await exercise(broker)
  } finally {
    await broker.cleanup()
  }
  console.log(`OK: Kafka ${version}`)
}

async function exercise(broker: LocalBroker): Promise<void> {
  const kafka = new Kafka({ clientId: 'smoke', brokers: [broker.brokers], logLevel: logLevel.WARN })
  const plainTopic = `smoke-plain-${Date.now()}`
  const txTopic = `smoke-tx-${Date.now()}`

  await withAdmin(kafka, async (admin) => {
    await admin.createTopics({
      waitForLeaders: true,
      topics: [
        { topic: plainTopic, numPartitions: PARTITIONS },
        { topic: txTopic, numPartitions: PARTITIONS },
      ],
    })
  })

  report('produce + consume', await timed(() => produceAndConsume(kafka, plainTopic)))
  report('transactions (commit + abort)', await timed(() => transactions(kafka, txTopic)))

  await broker.kill()
  report('restart after kill -9', await timed(() => broker.restart()))
  const afterRestart = new Kafka({
    clientId: 'smoke-2',
    brokers: [broker.brokers],
    logLevel: logLevel.WARN,
  })
  await withAdmin(afterRestart, async (admin) => {
    const topics = await admin.listTopics()
    assert.ok(topics.includes(plainTopic), `topic ${plainTopic} missing after restart`)
    const offsets = await admin.fetchTopicOffsets(plainTopic)
    const total = offsets.reduce((sum, o) => sum + Number(o.high), 0)
    assert.equal(offsets.length, PARTITIONS)
    assert.equal(total, PLAIN_MESSAGES, 'messages lost across kill -9 + restart')
  })
  const reread = await consume(afterRestart, plainTopic, PLAIN_MESSAGES)
  assert.equal(reread.length, PLAIN_MESSAGES)
  report('restart (clean stop + start)', await timed(() => broker.restart()))
  report('stop (SIGTERM, clean exit)', await timed(() => broker.stop()))
}

async function produceAndConsume(kafka: Kafka, topic: string): Promise<void> {
  const producer = kafka.producer()
  await producer.connect()
  const messages: Message[] = Array.from({ length: PLAIN_MESSAGES }, (_, i) => ({
    key: `key-${i}`,
    value: `value-${i}`,
  }))
  await producer.send({ topic, messages })
  await producer.disconnect()

  const received = await consume(kafka, topic, PLAIN_MESSAGES)
  assert.equal(received.length, PLAIN_MESSAGES)
  const partitions = new Set(received.map((r) => r.partition))
  assert.ok(partitions.size > 1, 'keys should spread over several partitions')
}

async function transactions(kafka: Kafka, topic: string): Promise<void> {
  const producer = kafka.producer({
    transactionalId: `smoke-tx-${process.pid}`,
    idempotent: true,
    maxInFlightRequests: 1,
  })
  await producer.connect()
  const aborted = await producer.transaction()
  await aborted.send({ topic, messages: [{ key: 'a', value: 'aborted' }] })
  await aborted.abort()
  const committed = await producer.transaction()
  await committed.send({
    topic,
    messages: Array.from({ length: 8 }, (_, i) => ({ key: `k${i}`, value: 'committed' })),
  })
  await committed.commit()
  await producer.disconnect()

  // kafkajs consumers read committed by default: only the 8 committed records may show up.
  const received = await consume(kafka, topic, 8)
  assert.ok(
    received.every((r) => r.value === 'committed'),
    'aborted record visible to read_committed',
  )
}

interface Received {
  partition: number
  value: string
}

/** Fresh group from the beginning until `expected` records arrived (30 s bound). */
async function consume(kafka: Kafka, topic: string, expected: number): Promise<Received[]> {
  // Short long-poll: disconnect() waits for the fetch in flight (5 s by default).
  const consumer = kafka.consumer({
    groupId: `smoke-${topic}-${Math.random()}`,
    maxWaitTimeInMs: 100,
  })
  const received: Received[] = []
  await consumer.connect()
  await consumer.subscribe({ topic, fromBeginning: true })
  const done = new Promise<void>((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new Error(`only ${received.length}/${expected} from ${topic}`)),
      30_000,
    )
    void consumer.run({
      eachMessage: ({ partition, message }) => {
        received.push({ partition, value: message.value?.toString() ?? '' })
        if (received.length >= expected) {
          clearTimeout(timer)
          resolve()
        }
        return Promise.resolve()
      },
    })
  })
  try {
    await done
    await sleep(500) // anything beyond `expected` (e.g. an aborted record) would show up here
  } finally {
    await consumer.disconnect()
  }
  return received
}

async function withAdmin(kafka: Kafka, use: (admin: Admin) => Promise<void>): Promise<void> {
  const admin = kafka.admin()
  await admin.connect()
  try {
    await use(admin)
  } finally {
    await admin.disconnect()
  }
}

async function timed(action: () => Promise<unknown>): Promise<number> {
  const startedAt = performance.now()
  await action()
  return performance.now() - startedAt
}

function report(what: string, ms: number): void {
  console.log(`${what}: ${(ms / 1000).toFixed(2)} s`)
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms))
}

main().catch((error: unknown) => {
  console.error(error)
  process.exit(1)
})
