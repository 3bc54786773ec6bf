import type { KafkaMessage } from 'kafkajs'
import pino from 'pino'
import { describe, expect, it } from 'vitest'
import { decodeCheckpoint } from '../consumer/checkpoint'
import { idleStreamTime } from '../consumer/service'
import { outputRecords } from './helpers/records'
import {
  PartitionPipeline,
  type BatchOutcome,
  type BatchCounts,
  type WindowConfig,
} from '../consumer/pipeline'
import {
  decodeWindowAggregate,
  encodeTelemetryBatch,
  type Sample,
  type TelemetryBatch,
} from '../consumer/schemas'
import {
  ReferenceAggregator,
  compareWindows,
  mulberry32,
  ulpDistance,
  windowId,
  type RefSample,
  type RefWindow,
} from './reference'

// ---------------------------------------------------------------------------------------------
// A partition of kafkajs-shaped messages
// ---------------------------------------------------------------------------------------------

/** One input message: its telemetry batch, or undefined for a message that is not one. */
interface Input {
  message: KafkaMessage
  batch: TelemetryBatch | undefined
}

const kafkaMessage = (offset: number, value: Buffer | null): KafkaMessage => ({
  offset: String(offset),
  value,
  key: null,
  timestamp: '1700000000000',
  headers: {},
  attributes: 0,
})

/** Values that are not telemetry batches; `good` is a valid encoding to damage. */
function badValue(rand: () => number, good: Buffer): Buffer | null {
  switch (Math.floor(rand() * 6)) {
    case 0:
      return null
    case 1:
      return Buffer.alloc(0)
    case 2: // 'n' is a string length of 55: more than the remaining bytes
      return Buffer.from('not avro at all, just text')
    case 3: // a huge varint string length
      return Buffer.concat([Buffer.from([0xfe, 0xff, 0xff, 0xff, 0x0f]), good])
    case 4: // truncated
      return good.subarray(0, Math.max(1, Math.floor(good.length * rand())))
    default: // trailing bytes
      return Buffer.concat([good, Buffer.from([1, 2, 3])])
  }
}

interface PartitionSpec {
  seed: number
  window: WindowConfig
  messages: number
  keys: number
}

function generatePartition(spec: PartitionSpec): Input[] {
  const rand = mulberry32(spec.seed)
  const inputs: Input[] = []
  let clock = 1_700_000_000_000 + Math.floor(rand() * 1e6)
  let offset = Math.floor(rand() * 100)
  const step = (spec.window.sizeMs * 40) / (spec.messages * 30)
  for (let m = 0; m < spec.messages; m++) {
    const samples: Sample[] = []
    const count = rand() < 0.03 ? 0 : 1 + Math.floor(rand() * 60)
    for (let i = 0; i < count; i++) {
      clock += Math.floor(rand() * 2 * step)
      let eventTime = clock
      if (rand() < 0.1) eventTime -= Math.floor(rand() * 2 * spec.window.sizeMs)
      let value = rand() < 0.5 ? (rand() - 0.5) * 1000 : Math.floor(rand() * 100) / 8
      const r = rand()
      if (r < 0.005) value = Number.NaN
      else if (r < 0.01) value = -Infinity
      else if (r < 0.015) eventTime = -1 - Math.floor(rand() * 1000)
      samples.push({ seriesKey: `series-${Math.floor(rand() * spec.keys)}`, eventTime, value })
    }
    const batch: TelemetryBatch = { sourceId: `source-${m % 3}`, samples }
    const encoded = encodeTelemetryBatch(batch)
    inputs.push(
      rand() < 0.05
        ? { message: kafkaMessage(offset, badValue(rand, encoded)), batch: undefined }
        : { message: kafkaMessage(offset, encoded), batch },
    )
    offset += rand() < 0.1 ? 2 : 1 // gaps, as left by transaction markers or compaction
  }
  return inputs
}

/** Cuts the inputs into fetch-sized batches of 1 to 40 messages. */
function fetchBatches(inputs: Input[], seed: number): Input[][] {
  const rand = mulberry32(seed ^ 0xfe7c)
  const batches: Input[][] = []
  for (let i = 0; i < inputs.length;) {
    const n = 1 + Math.floor(rand() * 40)
    batches.push(inputs.slice(i, i + n))
    i += n
  }
  return batches
}

const samplesOf = (inputs: readonly Input[]): RefSample[] =>
  inputs.flatMap(({ message, batch }) =>
    (batch?.samples ?? []).map((s) => ({
      key: s.seriesKey,
      ts: s.eventTime,
      value: s.value,
      offset: Number(message.offset),
    })),
  )

// ---------------------------------------------------------------------------------------------
// Pipeline harness
// ---------------------------------------------------------------------------------------------

interface LogLine {
  level: number
  msg: string
  offset?: string
}

function capturingLogger(): { logger: pino.Logger; lines: LogLine[] } {
  const lines: LogLine[] = []
  const logger = pino(
    { level: 'warn' },
    { write: (line: string) => lines.push(JSON.parse(line) as LogLine) },
  )
  return { logger, lines }
}

const topic = 'telemetry'
const partition = 3

const decodeResults = (outcome: BatchOutcome): RefWindow[] =>
  outputRecords(outcome.results).map((record) => {
    const a = decodeWindowAggregate(record.value)
    expect(record.key).toBe(a.seriesKey)
    return {
      key: a.seriesKey,
      start: a.windowStart,
      end: a.windowEnd,
      count: a.count,
      sum: a.sum,
      mean: a.mean,
      min: a.min,
      max: a.max,
    }
  })

/** Differences between published windows and the reference's closed windows. */
function windowProblems(got: RefWindow[], want: RefWindow[]): string[] {
  const problems: string[] = []
  got.forEach((w, i) => {
    const prev = got[i - 1]
    if (prev !== undefined && compareWindows(prev, w) >= 0) problems.push(`order at ${i}`)
  })
  const byId = new Map(want.map((w) => [windowId(w.key, w.start), w]))
  for (const w of got) {
    const ref = byId.get(windowId(w.key, w.start))
    byId.delete(windowId(w.key, w.start))
    const ok =
      ref !== undefined &&
      w.end === ref.end &&
      w.count === ref.count &&
      w.min === ref.min &&
      w.max === ref.max &&
      ulpDistance(w.sum, ref.sum) <= 1 &&
      Math.abs(w.mean - ref.mean) <= 1e-9 * Math.abs(ref.mean) + 1e-300
    if (!ok) problems.push(`got ${JSON.stringify(w)}, reference ${JSON.stringify(ref)}`)
  }
  for (const w of byId.values()) problems.push(`missing ${JSON.stringify(w)}`)
  return problems.slice(0, 10)
}

/** Identical outcomes: same records byte for byte, same commit, same counts. */
function sameOutcome(got: BatchOutcome, want: BatchOutcome, counts: Partial<BatchCounts>): void {
  const [gotResults, wantResults] = [outputRecords(got.results), outputRecords(want.results)]
  expect(gotResults.length).toBe(wantResults.length)
  const different = gotResults.findIndex(
    (r, i) =>
      r.key !== wantResults[i]?.key || !r.value.equals(wantResults[i]?.value ?? Buffer.alloc(0)),
  )
  expect(different, 'first differing record').toBe(-1)
  expect(got.commit).toEqual(want.commit)
  expect(got.lastOffset).toBe(want.lastOffset)
  expect(got.counts).toEqual({ ...want.counts, ...counts })
}

const specs: (PartitionSpec & { name: string })[] = [
  {
    name: 'tumbling 10s, grace 2s',
    seed: 0x3001,
    window: { sizeMs: 10_000, advanceMs: 10_000, graceMs: 2_000 },
    messages: 500,
    keys: 300,
  },
  {
    name: 'hopping 60s/15s, grace 0',
    seed: 0x3002,
    window: { sizeMs: 60_000, advanceMs: 15_000, graceMs: 0 },
    messages: 500,
    keys: 300,
  },
  {
    name: 'hopping 20s/5s, grace 7s',
    seed: 0x3003,
    window: { sizeMs: 20_000, advanceMs: 5_000, graceMs: 7_000 },
    messages: 500,
    keys: 300,
  },
]

describe('PartitionPipeline', () => {
  it.each(specs)('$name: results, counts and commits match the reference', (spec) => {
    const inputs = generatePartition(spec)
    const batches = fetchBatches(inputs, spec.seed)
    const { logger, lines } = capturingLogger()
    const pipeline = new PartitionPipeline(
      topic,
      partition,
      { window: spec.window },
      { checkpoint: null },
      logger,
    )
    const ref = new ReferenceAggregator(spec.window)
    let badMessages = 0
    const totals = { late: 0, rejected: 0, closed: 0, emptyCommits: 0 }
    try {
      batches.forEach((batch, b) => {
        const context = `seed=0x${spec.seed.toString(16)} batch=${b}`
        const outcome = pipeline.process(batch.map((i) => i.message))
        const samples = samplesOf(batch)
        const want = ref.ingest(samples)
        expect(windowProblems(decodeResults(outcome), want.closed), context).toEqual([])
        totals.late += want.late
        totals.rejected += want.rejected
        totals.closed += want.closed.length
        const bad = batch.filter((i) => i.batch === undefined).length
        badMessages += bad
        expect(outcome.counts, context).toEqual({
          messages: batch.length,
          badMessages: bad,
          samples: samples.length,
          aggregated: want.aggregated,
          late: want.late,
          rejected: want.rejected,
          replayed: 0,
          windowsClosed: want.closed.length,
        })
        const last = Number(batch[batch.length - 1]?.message.offset)
        expect(outcome.lastOffset, context).toBe(String(last))
        // Commit the lowest offset still held in an open window, or the next one when none is.
        expect(outcome.commit.offset, context).toBe(String(ref.lowWatermark ?? last + 1))
        if (ref.lowWatermark === null) totals.emptyCommits++
        expect(decodeCheckpoint(outcome.commit.metadata), context).toEqual({
          streamTime: ref.streamTime,
          processedUpTo: last + 1,
        })
      })
      expect(pipeline.stats.openWindows).toBe(ref.openCount)
    } finally {
      pipeline.free()
      pipeline.free() // idempotent
    }
    // Each bad message was logged once, with its offset.
    const skipped = lines.filter((l) => l.msg === 'poison message to the dead-letter topic')
    expect(skipped.length).toBe(badMessages)
    // The data exercised what it is meant to.
    expect(badMessages).toBeGreaterThan(5)
    expect(totals.late).toBeGreaterThan(0)
    expect(totals.rejected).toBeGreaterThan(0)
    expect(totals.closed).toBeGreaterThan(spec.keys)
    const badOffsets = inputs.filter((i) => i.batch === undefined).map((i) => i.message.offset)
    expect(skipped.map((l) => l.offset)).toEqual(badOffsets)
  })

  it.each(specs)(
    '$name: a pipeline restored from a commit replays and continues identically',
    (spec) => {
      const inputs = generatePartition(spec)
      const batches = fetchBatches(inputs, spec.seed)
      const silent = pino({ level: 'silent' })
      const original = new PartitionPipeline(
        topic,
        partition,
        { window: spec.window },
        { checkpoint: null },
        silent,
      )
      const outcomes = batches.map((batch) => original.process(batch.map((i) => i.message)))
      original.free()
      const rand = mulberry32(spec.seed ^ 0x7e57)
      let replayedSomething = false

      for (let trial = 0; trial < 6; trial++) {
        // Restore after batch `b`, from the commit made then.
        const b = Math.floor(rand() * (batches.length - 2))
        const context = `seed=0x${spec.seed.toString(16)} restored after batch ${b}`
        const commit = (outcomes[b] as BatchOutcome).commit
        const checkpoint = decodeCheckpoint(commit.metadata)
        const restored = new PartitionPipeline(
          topic,
          partition,
          { window: spec.window },
          { checkpoint },
          silent,
        )
        const processedUpTo = Number(batches[b + 1]?.[0]?.message.offset)
        const replay = batches
          .slice(0, b + 1)
          .flat()
          .filter((i) => Number(i.message.offset) >= Number(commit.offset))
        expect(checkpoint?.processedUpTo, context).toBe(
          Number(batches[b]?.at(-1)?.message.offset) + 1,
        )
        expect(
          replay.every((i) => Number(i.message.offset) < processedUpTo),
          context,
        ).toBe(true)
        const replayedSamples = samplesOf(replay).length
        replayedSomething ||= replayedSamples > 0
        try {
          const following = batches.slice(b + 1)
          if (trial % 2 === 0) {
            // Re-delivered messages arrive in their own fetches, in random chunks.
            for (let i = 0; i < replay.length;) {
              const chunk = replay.slice(i, i + 1 + Math.floor(rand() * 30))
              i += chunk.length
              const outcome = restored.process(chunk.map((m) => m.message))
              expect(outcome.results.count, context).toBe(0)
              expect(outcome.counts, context).toMatchObject({
                messages: 0,
                badMessages: 0,
                samples: 0,
                aggregated: 0,
                replayed: samplesOf(chunk).length,
              })
            }
          } else {
            // Re-delivered messages arrive together with the next new ones.
            following[0] = [...replay, ...(following[0] ?? [])]
          }
          following.forEach((batch, j) => {
            const outcome = restored.process(batch.map((i) => i.message))
            const replayed = trial % 2 === 1 && j === 0 ? replayedSamples : 0
            sameOutcome(outcome, outcomes[b + 1 + j] as BatchOutcome, { replayed })
          })
        } finally {
          restored.free()
        }
      }
      expect(replayedSomething).toBe(true)
    },
  )
})

describe('idle close', () => {
  const window = { sizeMs: 10_000, advanceMs: 10_000, graceMs: 2_000 }
  const silent = pino({ level: 'silent' })
  const message = (offset: number, samples: [string, number, number][]) =>
    kafkaMessage(
      offset,
      encodeTelemetryBatch({
        sourceId: 'idle-test',
        samples: samples.map(([seriesKey, eventTime, value]) => ({ seriesKey, eventTime, value })),
      }),
    )
  const t0 = Date.UTC(2024, 0, 1)

  it('idleStreamTime: moves by the wall clock from the last input, bounded by now - skew', () => {
    const quiet = { since: 1_000, streamTime: t0 }
    expect(idleStreamTime(quiet, 31_000, null)).toBe(t0 + 30_000)
    // Event time ahead of the wall clock: the bound holds it back.
    expect(idleStreamTime({ since: t0, streamTime: t0 }, t0 + 60_000, 5_000)).toBe(t0 + 55_000)
    expect(idleStreamTime({ since: t0, streamTime: t0 }, t0 + 4_000, 5_000)).toBeNull()
    expect(idleStreamTime({ since: 0, streamTime: null }, 1e12, null)).toBeNull()
    expect(idleStreamTime(quiet, 1_000, null)).toBeNull()
  })

  it('advanceIdle closes due windows once, commits them like a batch, then samples are late', () => {
    const pipeline = new PartitionPipeline(
      topic,
      partition,
      { window },
      { checkpoint: null },
      silent,
    )
    try {
      pipeline.process([
        message(0, [
          ['a', t0 + 1_000, 1],
          ['b', t0 + 2_000, 2],
        ]),
        message(1, [['a', t0 + 12_000, 4]]),
      ])
      // Stream time t0+12s closed [t0, t0+10s) (grace 2s); [t0+10s, t0+20s) is due at t0+22s.
      expect(pipeline.nextCloseTime).toBe(t0 + 22_000)
      expect(pipeline.advanceIdle(t0 + 21_999)).toBeUndefined()
      const outcome = pipeline.advanceIdle(t0 + 22_000)
      expect(outcome).toBeDefined()
      const results = decodeResults(outcome as BatchOutcome)
      expect(results.map((w) => [w.key, w.start, w.count])).toEqual([['a', t0 + 10_000, 1]])
      expect(outcome?.counts).toMatchObject({ messages: 0, samples: 0, windowsClosed: 1 })
      // Same input position; the checkpoint holds the new stream time.
      expect(outcome?.nextOffset).toBe('2')
      expect(outcome?.commit.offset).toBe('2')
      expect(decodeCheckpoint(outcome?.commit.metadata ?? '')).toEqual({
        streamTime: t0 + 22_000,
        processedUpTo: 2,
      })
      expect(pipeline.advanceIdle(t0 + 40_000)).toBeUndefined() // nothing open
      const late = pipeline.process([message(2, [['a', t0 + 15_000, 1]])])
      expect(late.counts).toMatchObject({ late: 1, aggregated: 0 })
    } finally {
      pipeline.free()
    }
  })

  it('advanceIdle waits for the replay of a restore (at least once) to catch up', () => {
    const checkpoint = { streamTime: t0 + 5_000, processedUpTo: 10 }
    const pipeline = new PartitionPipeline(
      topic,
      partition,
      { window },
      { checkpoint, resumeAt: '8' },
      silent,
    )
    try {
      pipeline.process([message(8, [['a', t0 + 4_000, 1]])])
      // Offset 9 is still to be replayed: its samples may belong to the open window.
      expect(pipeline.advanceIdle(t0 + 30_000)).toBeUndefined()
      pipeline.process([message(9, [['a', t0 + 5_000, 2]])])
      const outcome = pipeline.advanceIdle(t0 + 30_000) as BatchOutcome
      expect(decodeResults(outcome).map((w) => [w.start, w.count, w.sum])).toEqual([[t0, 2, 3]])
      expect(outcome.nextOffset).toBe('10')
    } finally {
      pipeline.free()
    }
  })
})
