/**
 * End-to-end throughput on a real local broker: decode → aggregate → publish → commit, for each
 * delivery mode, side by side in one run. Input is produced up front; the clock runs from the
 * replica's start until its committed offsets reach the end of the input.
 *
 *   npm run bench:e2e -- [--brokers host:port] [--messages 2000] [--samples 500] [--runs 3]
 */
import { parseArgs } from 'node:util'
import { Partitioners } from 'kafkajs'
import { decodeCheckpoint } from '../consumer/checkpoint'
import { createKafka } from '../consumer/kafka'
import { createLogger } from '../consumer/logger'
import { TelemetryGenerator } from '../consumer/produce'
import { encodeTelemetryBatch } from '../consumer/schemas'
import { AggregatorService, deliveryModes, type Delivery } from '../consumer/service'
import { startLocalBroker, type LocalBroker } from '../scripts/local-kafka'

const partitions = 4
const logger = createLogger('error')
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? NaN

async function produceInput(
  brokers: string,
  topic: string,
  messages: number,
  samples: number,
): Promise<void> {
  const kafka = createKafka({ brokers: [brokers], clientId: 'bench', logger })
  const admin = kafka.admin()
  await admin.connect()
  await admin.createTopics({
    waitForLeaders: true,
    topics: [topic, `${topic}-out`].map((t) => ({ topic: t, numPartitions: partitions })),
  })
  await admin.disconnect()
  const generator = new TelemetryGenerator({
    keys: 10_000,
    partitions,
    samplesPerBatch: samples,
    outOfOrder: 0.01,
    maxDelayMs: 1_000,
  })
  const producer = kafka.producer({ createPartitioner: Partitioners.DefaultPartitioner })
  await producer.connect()
  const t0 = 1_700_000_000_000
  for (let m = 0; m < messages; m += 100) {
    const batch = Array.from({ length: Math.min(100, messages - m) }, (_, i) => {
      const partition = (m + i) % partitions
      // Event time advances 10 ms per message: windows of 1 s close steadily.
      return {
        partition,
        value: encodeTelemetryBatch(generator.batch(partition, t0 + (m + i) * 10)),
      }
    })
    await producer.send({ topic, acks: -1, messages: batch })
  }
  await producer.disconnect()
}

async function measure(
  brokers: string,
  topic: string,
  delivery: Delivery,
  run: number,
): Promise<number> {
  const kafka = createKafka({ brokers: [brokers], clientId: 'bench', logger })
  const admin = kafka.admin()
  await admin.connect()
  const ends = await admin.fetchTopicOffsets(topic)
  const groupId = `bench-${delivery}-${run}-${Date.now()}`
  const service = new AggregatorService(
    {
      brokers: [brokers],
      clientId: 'bench',
      groupId,
      inputTopic: topic,
      outputTopic: `${topic}-out`,
      window: { sizeMs: 1_000, advanceMs: 1_000, graceMs: 500 },
      sessionTimeoutMs: 30_000,
      statsIntervalMs: 0,
      delivery,
    },
    logger,
  )
  const started = performance.now()
  await service.start()
  for (;;) {
    const [committed] = await admin.fetchOffsets({ groupId, topics: [topic] })
    // At least once commits the oldest offset still in an open window: progress is in the checkpoint.
    const done = ends.every((e) => {
      const c = committed?.partitions.find((p) => p.partition === e.partition)
      return (
        c !== undefined &&
        (c.offset === e.high || decodeCheckpoint(c.metadata)?.processedUpTo === Number(e.high))
      )
    })
    if (done) break
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
  const seconds = (performance.now() - started) / 1000
  await service.stop()
  await admin.disconnect()
  return seconds
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      brokers: { type: 'string' },
      messages: { type: 'string', default: '2000' },
      samples: { type: 'string', default: '500' },
      runs: { type: 'string', default: '3' },
    },
  })
  const messages = Number(values.messages)
  const samples = Number(values.samples)
  const runs = Number(values.runs)
  let broker: LocalBroker | undefined
  const brokers = values.brokers ?? (broker = await startLocalBroker()).brokers
  try {
    const topic = `bench-e2e-${Date.now()}`
    await produceInput(brokers, topic, messages, samples)
    const seconds: Record<Delivery, number[]> = { 'exactly-once': [], 'at-least-once': [] }
    for (let run = 0; run < runs; run++) {
      // Alternate the modes so drift on a shared machine hits both alike.
      for (const delivery of deliveryModes)
        seconds[delivery].push(await measure(brokers, topic, delivery, run))
    }
    const rate = (d: Delivery) => (messages * samples) / median(seconds[d])
    console.log(
      `\ninput: ${messages} messages × ${samples} samples, ${partitions} partitions, one replica`,
    )
    console.log('| delivery | median s | samples/s | messages/s | runs (s) |')
    console.log('|---|---|---|---|---|')
    for (const d of deliveryModes) {
      const s = median(seconds[d])
      const runsText = seconds[d].map((x) => x.toFixed(2)).join(', ')
      console.log(
        `| ${d} | ${s.toFixed(2)} | ${Math.round(rate(d))} | ${Math.round(messages / s)} | ${runsText} |`,
      )
    }
    console.log(
      `e2e: at-least-once ${Math.round(rate('at-least-once'))} samples/s, exactly-once ${Math.round(rate('exactly-once'))} samples/s`,
    )
  } finally {
    await broker?.cleanup()
  }
}

main().then(
  () => process.exit(0),
  (error: unknown) => {
    console.error(error)
    process.exit(1)
  },
)
