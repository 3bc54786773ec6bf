/**
 * Cost of kafkajs encoding the service's output into a produce request (records, record batches,
 * CRC-32C) and choosing each keyed record's partition (murmur2), which was half of a replica's
 * CPU end to end: µs per record, median of several runs,
 * for the output records (Avro window results) and the changelog records a batch produces. No
 * broker: this times `produce/v3/request.js`'s encode, which the producer runs per request.
 * Run it with and without patches/kafkajs+2.2.4.patch to compare (see docs/benchmarks.md).
 *
 *   npm run bench:produce -- [--runs 30]
 */
import { Partitioners } from 'kafkajs'
import { parseArgs } from 'node:util'
import { changelogRecords } from '../consumer/changelog'
import type { ClosedWindows, WindowStates } from '../consumer/native'
import { encodeClosedWindows } from '../consumer/pipeline'
import { produceRequest } from '../test/helpers/kafkajs-internals'
import { fmt, median, benchEnvironment } from './lib'

interface Message {
  key: string | Buffer | null
  value: Buffer | null
  partition?: number
}

const { values: options } = parseArgs({ options: { runs: { type: 'string', default: '30' } } })
const runs = Number(options.runs)

/** `n` closed windows of distinct series keys, as the aggregator reports them. */
function closedWindows(n: number): ClosedWindows {
  const column = (f: (i: number) => number) => Float64Array.from({ length: n }, (_, i) => f(i))
  return {
    seriesKeys: Array.from({ length: n }, (_, i) => `host-${i % 1000}/metric-${i}`),
    windowStart: column(() => 1_700_000_000_000),
    windowEnd: column(() => 1_700_000_001_000),
    count: column((i) => 1 + (i % 17)),
    sum: column((i) => i * 1.5),
    mean: column((i) => (i * 1.5) / (1 + (i % 17))),
    min: column((i) => i % 7),
    max: column((i) => 100 + (i % 13)),
    quantiles: new Float64Array(0),
  }
}

function openWindows(closed: ClosedWindows): WindowStates {
  return {
    seriesKeys: closed.seriesKeys,
    windowStart: closed.windowStart,
    count: closed.count,
    sum: closed.sum,
    compensation: new Float64Array(closed.seriesKeys.length),
    min: closed.min,
    max: closed.max,
    firstOffset: closed.count,
  }
}

/** Median µs per record of `run` over `records` records, after 5 warm-up runs. */
async function microsPerRecord(records: number, run: () => unknown): Promise<number> {
  for (let i = 0; i < 5; i++) await run()
  const times: number[] = []
  for (let i = 0; i < runs; i++) {
    const t = performance.now()
    await run()
    times.push(((performance.now() - t) * 1000) / records)
  }
  return median(times)
}

/** µs per record to pick each keyed record's partition (murmur2 of the key), 4 partitions. */
function timePartitioner(messages: Message[]): Promise<number> {
  const partitioner = Partitioners.DefaultPartitioner()
  const partitionMetadata = [0, 1, 2, 3].map((partitionId) => ({
    partitionId,
    leader: 0,
    replicas: [0],
    isr: [0],
    partitionErrorCode: 0,
  }))
  // Summed so the calls are not optimised away.
  let sink = 0
  return microsPerRecord(messages.length, () => {
    for (const message of messages)
      sink += partitioner({ topic: 'out', partitionMetadata, message })
    return sink
  })
}

/**
 * µs per record to encode `messages`, spread over 4 partitions, into one transactional produce
 * request (as the service's producers send them).
 */
function timeEncode(messages: Message[]): Promise<number> {
  const partitions = [0, 1, 2, 3].map((partition) => ({
    partition,
    firstSequence: 0,
    messages: messages.filter((_, i) => i % 4 === partition),
  }))
  return microsPerRecord(messages.length, () =>
    produceRequest({
      acks: -1,
      timeout: 30_000,
      transactionalId: 'kwa-bench',
      producerId: 1,
      producerEpoch: 0,
      compression: 0,
      topicData: [{ topic: 'out', partitions }],
    }).encode(),
  )
}

async function main(): Promise<void> {
  console.log(benchEnvironment())
  const rows: string[][] = []
  const summary: Record<string, number> = {}
  for (const n of [100, 1_000, 10_000]) {
    const closed = closedWindows(n)
    const output: Message[] = encodeClosedWindows(closed)
    const changelog: Message[] = changelogRecords(
      openWindows(closed),
      closed,
      1_700_000_000_500,
      0,
      1_000_000,
    )
    const outputUs = await timeEncode(output)
    const changelogUs = await timeEncode(changelog)
    const partitionUs = await timePartitioner(output)
    rows.push([fmt(n), fmt(outputUs, 2), fmt(changelogUs, 2), fmt(partitionUs, 2)])
    if (n === 10_000) Object.assign(summary, { outputUs, changelogUs, partitionUs })
  }

  console.log(
    `Node ${process.version}; kafkajs produce request v3 encode, 4 partitions, median of ${runs}`,
  )
  console.log(
    '| records per request | output records µs/record | changelog records µs/record | partitioner µs/record |',
  )
  console.log('|---|---|---|---|')
  for (const row of rows) console.log(`| ${row.join(' | ')} |`)
  console.log(
    `produce: output ${fmt(summary['outputUs'] ?? NaN, 2)} µs/record, changelog ${fmt(summary['changelogUs'] ?? NaN, 2)} µs/record, partitioner ${fmt(summary['partitionUs'] ?? NaN, 2)} µs/record`,
  )
}

void main()
