/**
 * Measures how often a group's committed offset is stale right after a transactional handover
 * (issue 10): a producer commits a transaction holding records and a group offset; a new
 * producer with the same transactional id initialises (InitProducerId succeeds only once that
 * transaction is complete); then a plain OffsetFetch, as kafkajs sends it (no `require_stable`),
 * asks for the group's offset. Kafka's classic group coordinator applies the transaction's offsets
 * asynchronously, so the answer is sometimes the offset from before the transaction.
 *
 *   KAFKA_BROKERS=127.0.0.1:9092 npx tsx scripts/stale-offset-probe.ts [handovers]
 *
 * Prints `stale N of M`. kwa does not depend on this offset (docs/ARCHITECTURE.md).
 */
import { Kafka, logLevel } from 'kafkajs'

async function main(): Promise<void> {
  const brokers = [process.env['KAFKA_BROKERS'] ?? '127.0.0.1:9092']
  const handovers = Number(process.argv[2] ?? 100)
  const kafka = new Kafka({ clientId: 'stale-offset-probe', brokers, logLevel: logLevel.NOTHING })
  const id = Date.now().toString(36)
  const topic = `stale-offset-probe-${id}`
  const groupId = `stale-offset-probe-${id}`
  const transactionalId = `stale-offset-probe-${id}`
  const producer = () =>
    kafka.producer({ transactionalId, idempotent: true, maxInFlightRequests: 1 })
  const admin = kafka.admin()
  await admin.connect()
  let stale = 0
  try {
    await admin.createTopics({ waitForLeaders: true, topics: [{ topic, numPartitions: 1 }] })
    for (let i = 1; i <= handovers; i++) {
      const previous = producer()
      await previous.connect()
      const transaction = await previous.transaction()
      await transaction.send({ topic, messages: [{ value: String(i) }] })
      await transaction.sendOffsets({
        consumerGroupId: groupId,
        topics: [{ topic, partitions: [{ partition: 0, offset: String(i) }] }],
      })
      await transaction.commit()
      const next = producer()
      await next.connect()
      const [offsets] = await admin.fetchOffsets({ groupId, topics: [topic] })
      if (offsets?.partitions[0]?.offset !== String(i)) stale++
      await Promise.all([previous.disconnect(), next.disconnect()])
    }
    await admin.deleteTopics({ topics: [topic] })
  } finally {
    await admin.disconnect()
  }
  process.stdout.write(`stale ${stale} of ${handovers}\n`)
}

void main()
