import { Partitioners } from 'kafkajs'
import { afterAll, describe, expect, it } from 'vitest'
import { deadLetterHeaders, rejectionReason } from '../../consumer/dead-letter'
import { createKafka } from '../../consumer/kafka'
import { createLogger } from '../../consumer/logger'
import {
  decodeLateSample,
  decodeTelemetryBatch,
  decodeWindowAggregate,
  encodeTelemetryBatch,
  type Sample,
} from '../../consumer/schemas'
import avro from 'avsc'
import { encodeTelemetryBatch as encodeConfluent, telemetryBatchSchema } from '../../consumer/codec'
import { LocalSchemaRegistry } from '../../consumer/decode'
import { AggregatorService, type ServiceConfig } from '../../consumer/service'
import { createTopic, kafkaBrokers, readAll, uniqueTopic } from '../helpers/kafka'
import { mulberry32, ReferenceAggregator, windowId, type RefWindow } from '../reference'

const partitions = 4
const messagesPerPartition = 300
const window = { sizeMs: 10_000, advanceMs: 10_000, graceMs: 1_000 }
const limits = { maxFutureSkewMs: 60_000, minEventTimeMs: Date.UTC(2020, 0, 1), maxKeyBytes: 64 }
const t0 = Date.UTC(2023, 10, 14)
const logger = createLogger((process.env['KWA_TEST_LOG_LEVEL'] as 'info' | undefined) ?? 'silent')

type Poison = 'truncated' | 'trailing' | 'empty'
interface Produced {
  partition: number
  value: Buffer | null
  /** The samples of a valid message; undefined for poison. */
  samples?: Sample[]
  poison?: Poison
}

/** A bad sample of each kind the service must reject one by one (about 5% of samples). */
function badSample(random: () => number, good: Sample): Sample {
  const kinds: ((s: Sample) => Sample)[] = [
    (s) => ({ ...s, value: NaN }),
    (s) => ({ ...s, value: -Infinity }),
    (s) => ({ ...s, eventTime: -5 }),
    (s) => ({ ...s, eventTime: Date.UTC(2019, 0, 1) }),
    (s) => ({ ...s, eventTime: Date.now() + 86_400_000 }),
    (s) => ({ ...s, seriesKey: '' }),
    (s) => ({ ...s, seriesKey: `too-long/${'x'.repeat(100)}` }),
  ]
  return (kinds[Math.floor(random() * kinds.length)] as (s: Sample) => Sample)(good)
}

/** 5% poison messages, 5% bad samples, ~1% late samples, interleaved. */
function generate(seed: number): Produced[][] {
  const random = mulberry32(seed)
  return Array.from({ length: partitions }, (_, partition) =>
    Array.from({ length: messagesPerPartition }, (_, m): Produced => {
      const samples = Array.from({ length: 20 + Math.floor(random() * 60) }, (): Sample => {
        const late = random() < 0.01
        const good = {
          seriesKey: `dev-${partition + partitions * Math.floor(random() * 25)}`,
          eventTime: t0 + m * 200 - (late ? 20_000 + Math.floor(random() * 10_000) : 0),
          value: Math.round((random() - 0.5) * 1e6) / 256,
        }
        return random() < 0.05 ? badSample(random, good) : good
      })
      const bytes = encodeTelemetryBatch({ sourceId: `src-${partition}`, samples })
      if (random() >= 0.05) return { partition, value: bytes, samples }
      const poison = (['truncated', 'trailing', 'empty'] as const)[m % 3] as Poison
      const value =
        poison === 'truncated'
          ? bytes.subarray(0, bytes.length - 3)
          : poison === 'trailing'
            ? Buffer.concat([bytes, Buffer.from([7])])
            : Buffer.alloc(0)
      return { partition, value, poison }
    }),
  )
}

/** Multiset key of a sample (NaN-safe). */
const sampleKey = (s: Sample, extra = '') =>
  `${s.seriesKey}|${s.eventTime}|${String(s.value)}|${extra}`
const counted = (keys: string[]) => {
  const m = new Map<string, number>()
  for (const k of keys) m.set(k, (m.get(k) ?? 0) + 1)
  return m
}

describe('hostile input on a real broker', () => {
  const services: AggregatorService[] = []
  afterAll(async () => {
    await Promise.all(services.map((s) => s.stop()))
  })
  /** A replica on the shared test broker, stopped after the tests. */
  async function startService(
    config: Omit<ServiceConfig, 'brokers' | 'clientId' | 'sessionTimeoutMs'>,
  ): Promise<AggregatorService> {
    const service = new AggregatorService(
      {
        brokers: [kafkaBrokers()],
        clientId: 'kwa-test',
        sessionTimeoutMs: 10_000,
        statsIntervalMs: 0,
        ...config,
      },
      logger,
    )
    services.push(service)
    await service.start()
    return service
  }

  it('accounts for every sample: aggregated, late (to the late topic) or dead-lettered with a reason', async () => {
    const brokers = kafkaBrokers()
    const [input, output, deadLetter, lateTopic] = ['in', 'out', 'dlq', 'late'].map((n) =>
      uniqueTopic(`hostile-${n}`),
    ) as [string, string, string, string]
    await createTopic(brokers, input, partitions)
    await createTopic(brokers, output, partitions)
    const produced = generate(0x4057)

    // Expected: per partition, the reference over the valid messages' samples, in order.
    const testStart = Date.now()
    const expected = new Map<string, RefWindow>()
    const expectedLate: string[] = []
    const expectedRejected: string[] = []
    let aggregated = 0
    let samples = 0
    for (const messages of produced) {
      const reference = new ReferenceAggregator({ ...window, ...limits })
      const valid = messages.flatMap((m) => m.samples ?? [])
      samples += valid.length
      const result = reference.ingest(
        valid.map((s, offset) => ({ key: s.seriesKey, ts: s.eventTime, value: s.value, offset })),
        testStart + limits.maxFutureSkewMs,
      )
      aggregated += result.aggregated
      for (const w of result.closed) expected.set(windowId(w.key, w.start), w)
      for (const i of result.lateIdx) expectedLate.push(sampleKey(valid[i] as Sample))
      result.rejectedIdx.forEach((i, n) =>
        expectedRejected.push(
          sampleKey(valid[i] as Sample, rejectionReason(result.reasons[n] as number)),
        ),
      )
    }
    const poison = produced.flat().filter((m) => m.poison !== undefined)
    expect(poison.length).toBeGreaterThan(20)
    expect(expectedRejected.length).toBeGreaterThan(100)
    expect(expectedLate.length).toBeGreaterThan(10)

    const service = await startService({
      groupId: uniqueTopic('hostile-group'),
      inputTopic: input,
      outputTopic: output,
      deadLetterTopic: deadLetter,
      lateTopic,
      window,
      limits,
    })

    const kafka = createKafka({ brokers: [brokers], clientId: 'kwa-test', logger })
    const producer = kafka.producer({ createPartitioner: Partitioners.DefaultPartitioner })
    await producer.connect()
    for (let m = 0; m < messagesPerPartition; m += 50) {
      const messages = produced.flatMap((p) => p.slice(m, m + 50))
      await producer.send({ topic: input, acks: -1, messages })
    }
    await producer.disconnect()

    const windows = await readAll(brokers, output, {
      expected: expected.size,
      idleMs: 2_000,
      timeoutMs: 120_000,
    })
    const late = await readAll(brokers, lateTopic, {
      expected: expectedLate.length,
      idleMs: 1_000,
      timeoutMs: 60_000,
    })
    const dead = await readAll(brokers, deadLetter, {
      expected: poison.length,
      idleMs: 2_000,
      timeoutMs: 60_000,
    })

    // Windows: exactly the valid samples' recomputation.
    const got = new Map(
      windows.map((m) => {
        const a = decodeWindowAggregate(m.value as Buffer)
        return [windowId(a.seriesKey, a.windowStart), a] as const
      }),
    )
    expect(windows.length).toBe(expected.size)
    for (const [id, want] of expected) {
      const a = got.get(id)
      expect(a && [a.count, a.sum, a.min, a.max], id).toEqual([
        want.count,
        want.sum,
        want.min,
        want.max,
      ])
    }

    // Poison messages: raw bytes and context headers.
    const header = (m: (typeof dead)[number], name: string) => m.headers[name]?.toString()
    const poisonOut = dead.filter((m) => header(m, deadLetterHeaders.kind) !== 'rejected-samples')
    expect(poisonOut.length).toBe(poison.length)
    for (const m of poisonOut) {
      const partition = Number(header(m, deadLetterHeaders.sourcePartition))
      const offset = Number(header(m, deadLetterHeaders.sourceOffset))
      const source = produced[partition]?.[offset]
      expect(source?.poison, `${partition}@${offset}`).toBeDefined()
      expect(header(m, deadLetterHeaders.sourceTopic)).toBe(input)
      expect(header(m, deadLetterHeaders.kind)).toBe(
        source?.poison === 'empty' ? 'empty' : 'malformed',
      )
      expect(header(m, deadLetterHeaders.message)).toBeTruthy()
      expect((m.value ?? Buffer.alloc(0)).equals(source?.value ?? Buffer.alloc(0))).toBe(true)
    }

    // Rejected samples: each one, with its reason.
    const rejectedOut = dead
      .filter((m) => header(m, deadLetterHeaders.kind) === 'rejected-samples')
      .flatMap((m) =>
        decodeTelemetryBatch(m.value as Buffer).samples.map((s) =>
          sampleKey(s, header(m, deadLetterHeaders.reason)),
        ),
      )
    expect(counted(rejectedOut)).toEqual(counted(expectedRejected))

    // Late samples, with the window they missed.
    const lateOut = late.map((m) => decodeLateSample(m.value as Buffer))
    expect(counted(lateOut.map((s) => sampleKey(s)))).toEqual(counted(expectedLate))
    for (const s of lateOut) {
      expect(s.windowEnd - s.windowStart).toBe(window.sizeMs)
      expect(s.windowEnd).toBeLessThanOrEqual(s.streamTime - window.graceMs)
      expect(s.sourceTopic).toBe(input)
    }

    // The running totals account for every sample.
    const t = service.totals
    expect(t.badMessages).toBe(poison.length)
    expect(t.samples).toBe(samples)
    expect([t.aggregated, t.late, t.rejected]).toEqual([
      aggregated,
      expectedLate.length,
      expectedRejected.length,
    ])
    expect(t.aggregated + t.late + t.rejected).toBe(t.samples)
  })

  it('decodes Confluent-framed input from older and newer writers, dead-letters the rest', async () => {
    const brokers = kafkaBrokers()
    const [input, output, deadLetter] = ['in', 'out', 'dlq'].map((n) =>
      uniqueTopic(`schemas-${n}`),
    ) as [string, string, string]
    await createTopic(brokers, input, 1)
    await createTopic(brokers, output, 1)
    const current = telemetryBatchSchema as { fields: { name: string }[] }
    // Newer writer: an extra field on the batch. Older writer: values written as float.
    const newer = {
      ...current,
      fields: [...current.fields, { name: 'firmware', type: 'string', default: '' }],
    }
    const older = JSON.parse(JSON.stringify(current).replace('"double"', '"float"')) as avro.Schema
    const incompatible = JSON.parse(
      JSON.stringify(current).replace('"double"', '"string"'),
    ) as avro.Schema
    const registry = new LocalSchemaRegistry([
      [1, telemetryBatchSchema],
      [2, newer as avro.Schema],
      [3, older],
      [4, incompatible],
    ])
    const frame = (id: number, schema: avro.Schema, value: unknown) => {
      const header = Buffer.from([0, 0, 0, 0, id])
      return Buffer.concat([header, avro.Type.forSchema(schema).toBuffer(value)])
    }
    const samplesAt = (t: number, value: number): Sample[] => [
      { seriesKey: 'dev-1', eventTime: t, value },
    ]
    const values = [
      encodeConfluent(
        { sourceId: 'current', samples: samplesAt(t0, 1.25) },
        { wireFormat: 'confluent', schemaId: 1 },
      ),
      frame(2, newer as avro.Schema, {
        sourceId: 'newer',
        samples: samplesAt(t0 + 1, 2.5),
        firmware: '1.2',
      }),
      frame(3, older, { sourceId: 'older', samples: samplesAt(t0 + 2, 4) }),
      frame(4, incompatible, {
        sourceId: 'bad',
        samples: [{ seriesKey: 'dev-1', eventTime: t0, value: 'x' }],
      }),
      Buffer.concat([Buffer.from([0, 0, 0, 0, 99]), Buffer.from('whatever')]),
      encodeTelemetryBatch({ sourceId: 'plain', samples: samplesAt(t0, 1) }),
      encodeConfluent(
        { sourceId: 'closer', samples: samplesAt(t0 + 60_000, 0) },
        { wireFormat: 'confluent', schemaId: 1 },
      ),
    ]
    const service = await startService({
      groupId: uniqueTopic('schemas-group'),
      inputTopic: input,
      outputTopic: output,
      deadLetterTopic: deadLetter,
      window,
      decoding: { wireFormat: 'confluent', schemas: registry },
    })
    const kafka = createKafka({ brokers: [brokers], clientId: 'kwa-test', logger })
    const producer = kafka.producer({ createPartitioner: Partitioners.DefaultPartitioner })
    await producer.connect()
    await producer.send({ topic: input, acks: -1, messages: values.map((value) => ({ value })) })
    await producer.disconnect()

    const [window0] = (await readAll(brokers, output, { expected: 1, idleMs: 1_000 })).map((m) =>
      decodeWindowAggregate(m.value as Buffer),
    )
    expect(window0 && [window0.count, window0.sum, window0.min, window0.max]).toEqual([
      3, 7.75, 1.25, 4,
    ])
    const dead = await readAll(brokers, deadLetter, { expected: 3, idleMs: 1_000 })
    const kinds = dead.map((m) => [
      m.headers[deadLetterHeaders.sourceOffset]?.toString(),
      m.headers[deadLetterHeaders.kind]?.toString(),
    ])
    expect(kinds).toEqual([
      ['3', 'incompatible-schema'],
      ['4', 'unknown-schema'],
      ['5', 'bad-wire-format'],
    ])
    expect(service.totals.badMessages).toBe(3)
  })

  it('stops with an error naming the offset when set to fail on poison', async () => {
    const brokers = kafkaBrokers()
    const [input, output] = ['in', 'out'].map((n) => uniqueTopic(`fail-${n}`)) as [string, string]
    await createTopic(brokers, input, 1)
    await createTopic(brokers, output, 1)
    const service = await startService({
      groupId: uniqueTopic('fail-group'),
      inputTopic: input,
      outputTopic: output,
      onPoison: 'fail',
      window,
    })
    const kafka = createKafka({ brokers: [brokers], clientId: 'kwa-test', logger })
    const producer = kafka.producer({ createPartitioner: Partitioners.DefaultPartitioner })
    await producer.connect()
    const good = encodeTelemetryBatch({
      sourceId: 'ok',
      samples: [{ seriesKey: 'a', eventTime: t0, value: 1 }],
    })
    await producer.send({
      topic: input,
      acks: -1,
      messages: [{ value: good }, { value: Buffer.from([1, 2, 3]) }],
    })
    await producer.disconnect()
    const failure = await service.failed
    expect(failure.message).toMatch(
      new RegExp(`poison message at ${input}\\[0\\]@1 \\(malformed\\)`),
    )
  })
})
