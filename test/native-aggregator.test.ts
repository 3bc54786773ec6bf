import { describe, expect, it } from 'vitest'
import { PartitionAggregator, type ClosedWindows, type IngestResult } from '../consumer/native'
import {
  ReferenceAggregator,
  compareCodePoints,
  compareWindows,
  exactSum,
  mulberry32,
  ulpDistance,
  windowId,
  type RefIngestResult,
  type RefSample,
  type RefWindow,
} from './reference'

// ---------------------------------------------------------------------------------------------
// Seeded random data
// ---------------------------------------------------------------------------------------------

interface DataSpec {
  seed: number
  sizeMs: number
  advanceMs: number
  graceMs: number
  /** Distinct series keys. */
  keys: number
  samples: number
  /** Event-time span of the run, in window sizes. */
  spanWindows: number
  /** First event time. */
  base: number
  /** Fraction of samples shifted back by up to two window sizes. */
  outOfOrder: number
  /** Fraction of invalid samples (each of the rejection kinds, alone and combined). */
  invalid: number
  values: 'mixed' | 'dyadic'
}

interface Dataset {
  samples: RefSample[]
  /** Exclusive end index of each Kafka message (samples of a message share one offset). */
  messageEnds: number[]
}

/**
 * Series key names: mostly ASCII, plus keys whose code point order differs from UTF-16 order
 * (U+1F600 vs U+FF01 at the same position) to check the documented output order.
 */
function keyName(n: number): string {
  switch (n % 7) {
    case 0:
      return `sensor-\u{1F600}-${n}`
    case 1:
      return `sensor-\uFF01-${n}`
    case 2:
      return `Sensor-é-${n}`
    default:
      return `host-${n}/cpu`
  }
}

function randomValue(rand: () => number, kind: DataSpec['values']): number {
  if (kind === 'dyadic') return (Math.floor(rand() * 2 ** 21) - 2 ** 20) / 1024
  const r = rand()
  if (r < 0.5) return (rand() - 0.5) * 2000
  if (r < 0.7) return (rand() - 0.5) * 10 ** Math.floor(rand() * 24 - 12)
  if (r < 0.85) return Math.floor(rand() * 200) - 100
  if (r < 0.95) return 0.1 * Math.floor(rand() * 100)
  return (rand() < 0.5 ? -1 : 1) * (1e12 + rand() * 1e12)
}

/** Makes a valid sample invalid in one of the ways the aggregator must reject. */
function spoil(sample: RefSample, rand: () => number): void {
  const kind = Math.floor(rand() * 10)
  switch (kind) {
    case 0:
      sample.value = Number.NaN
      break
    case 1:
      sample.value = rand() < 0.5 ? Infinity : -Infinity
      break
    case 2:
      sample.ts = -1 - Math.floor(rand() * 1000)
      break
    case 3:
      sample.ts += 0.5
      break
    case 4:
      sample.ts = [2 ** 53, 1e300, Number.NaN, Infinity][Math.floor(rand() * 4)] ?? 2 ** 53
      break
    case 5:
      sample.key = null
      break
    case 6: // value and timestamp: the value (1) wins
      sample.value = Number.NaN
      sample.ts = -5
      break
    case 7: // timestamp and key: the timestamp (2) wins
      sample.ts += 0.25
      sample.key = null
      break
    case 8: // value and key: the value (1) wins
      sample.value = -Infinity
      sample.key = null
      break
    default: // -0 is the integer 0: valid, but an early timestamp (late, or negative windows)
      sample.ts = -0
  }
}

function generate(spec: DataSpec): Dataset {
  const rand = mulberry32(spec.seed)
  const samples: RefSample[] = []
  const messageEnds: number[] = []
  const meanStep = (spec.spanWindows * spec.sizeMs) / spec.samples
  const hotKeys = Math.min(100, spec.keys)
  let clock = spec.base
  let offset = 1000 + Math.floor(rand() * 1000)
  while (samples.length < spec.samples) {
    // One Kafka message: 1..40 samples, one offset; offsets may have gaps (e.g. tx markers).
    const size = 1 + Math.floor(rand() * 40)
    for (let j = 0; j < size; j++) {
      clock += Math.floor(rand() * 2 * meanStep)
      if (rand() < 0.0005) clock += Math.floor(rand() * 3 * spec.sizeMs) // a jump ahead
      let ts = clock
      if (rand() < spec.outOfOrder) ts = Math.max(0, ts - Math.floor(rand() * 2 * spec.sizeMs))
      const n = rand() < 0.3 ? Math.floor(rand() * hotKeys) : Math.floor(rand() * spec.keys)
      const sample: RefSample = {
        key: keyName(n),
        ts,
        value: randomValue(rand, spec.values),
        offset,
      }
      if (rand() < spec.invalid) spoil(sample, rand)
      samples.push(sample)
    }
    messageEnds.push(samples.length)
    offset += 1 + (rand() < 0.05 ? Math.floor(rand() * 5) : 0)
  }
  return { samples, messageEnds }
}

/**
 * Cuts samples into batches of 1 to 10k samples (log-uniform); with `aligned`, only at message
 * boundaries, as a Kafka fetch would.
 */
function batchesOf(data: Dataset, seed: number, aligned: boolean): RefSample[][] {
  const rand = mulberry32(seed ^ 0x5eed)
  const batches: RefSample[][] = []
  let start = 0
  let message = 0
  while (start < data.samples.length) {
    let end = Math.min(data.samples.length, start + Math.floor(Math.exp(rand() * Math.log(10_001))))
    if (aligned) {
      while ((data.messageEnds[message] ?? Infinity) < end) message++
      end = data.messageEnds[message] ?? data.samples.length
    }
    batches.push(data.samples.slice(start, end))
    start = end
  }
  return batches
}

// ---------------------------------------------------------------------------------------------
// Native calls and comparison
// ---------------------------------------------------------------------------------------------

interface Columns {
  keys: string[]
  keyIndex: Uint32Array
  timestamps: Float64Array
  values: Float64Array
  offsets: Float64Array
}

/** A batch as native columns; a null key becomes a key index outside the key table. */
function columnsOf(samples: readonly RefSample[]): Columns {
  const ids = new Map<string, number>()
  const keys: string[] = []
  for (const s of samples) {
    if (s.key !== null && !ids.has(s.key)) {
      ids.set(s.key, keys.length)
      keys.push(s.key)
    }
  }
  const columns: Columns = {
    keys,
    keyIndex: new Uint32Array(samples.length),
    timestamps: new Float64Array(samples.length),
    values: new Float64Array(samples.length),
    offsets: new Float64Array(samples.length),
  }
  samples.forEach((s, i) => {
    const bad = i % 2 === 0 ? keys.length : 0xffffffff
    columns.keyIndex[i] = s.key === null ? bad : (ids.get(s.key) as number)
    columns.timestamps[i] = s.ts
    columns.values[i] = s.value
    columns.offsets[i] = s.offset
  })
  return columns
}

const ingestColumns = (
  aggregator: PartitionAggregator,
  c: Columns,
  maxEventTime?: number | null,
): IngestResult =>
  aggregator.ingest(c.keys, c.keyIndex, c.timestamps, c.values, c.offsets, maxEventTime)

const ingest = (
  aggregator: PartitionAggregator,
  samples: readonly RefSample[],
  maxEventTime?: number | null,
): IngestResult => ingestColumns(aggregator, columnsOf(samples), maxEventTime)

type Typed = Uint8Array | Uint32Array | Float64Array

/** Same bytes: stricter than numeric equality (tells -0 from 0, compares NaN payloads). */
const sameBytes = (a: Typed, b: Typed): boolean =>
  Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(
    Buffer.from(b.buffer, b.byteOffset, b.byteLength),
  )

/** The first difference between two ingest outcomes, or undefined when they are identical. */
function outcomeDifference(a: IngestResult, b: IngestResult): string | undefined {
  for (const field of ['aggregated', 'late', 'rejected'] as const) {
    if (a[field] !== b[field]) return `${field}: ${a[field]} vs ${b[field]}`
  }
  for (const field of ['lateIndexes', 'rejectedIndexes', 'rejectedReasons'] as const) {
    if (!sameBytes(a[field], b[field])) return field
  }
  const [x, y] = [a.closed, b.closed]
  if (x.seriesKeys.length !== y.seriesKeys.length) {
    return `closed windows: ${x.seriesKeys.length} vs ${y.seriesKeys.length}`
  }
  const differentKey = x.seriesKeys.findIndex((key, i) => key !== y.seriesKeys[i])
  if (differentKey >= 0) return `closed window ${differentKey}: series key`
  const columns = ['windowStart', 'windowEnd', 'count', 'sum', 'mean', 'min', 'max'] as const
  const differentColumn = columns.find((column) => !sameBytes(x[column], y[column]))
  return differentColumn === undefined ? undefined : `closed windows: ${differentColumn}`
}

function rowsOf(closed: ClosedWindows): RefWindow[] {
  return closed.seriesKeys.map((key, i) => ({
    key,
    start: closed.windowStart[i] as number,
    end: closed.windowEnd[i] as number,
    count: closed.count[i] as number,
    sum: closed.sum[i] as number,
    mean: closed.mean[i] as number,
    min: closed.min[i] as number,
    max: closed.max[i] as number,
  }))
}

/** Differences between native closed windows and the reference's (empty when they agree). */
function closedProblems(native: RefWindow[], expected: RefWindow[], exactSums: boolean): string[] {
  const problems: string[] = []
  for (let i = 1; i < native.length; i++) {
    const [a, b] = [native[i - 1] as RefWindow, native[i] as RefWindow]
    if (compareWindows(a, b) >= 0) problems.push(`out of order at row ${i}: ${show(a)} ${show(b)}`)
  }
  const byId = new Map(expected.map((w) => [windowId(w.key, w.start), w]))
  const seen = new Set<string>()
  for (const w of native) {
    const id = windowId(w.key, w.start)
    const ref = byId.get(id)
    if (seen.has(id)) problems.push(`closed twice in one batch: ${show(w)}`)
    seen.add(id)
    if (ref === undefined) {
      problems.push(`unexpected: ${show(w)}`)
      continue
    }
    const sumOk = exactSums ? w.sum === ref.sum : ulpDistance(w.sum, ref.sum) <= 1
    const meanOk =
      w.mean === w.sum / w.count &&
      Math.abs(w.mean - ref.mean) <= 1e-9 * Math.max(Math.abs(ref.mean), Number.MIN_VALUE)
    const ok =
      w.end === ref.end &&
      w.count === ref.count &&
      w.min === ref.min &&
      w.max === ref.max &&
      sumOk &&
      meanOk
    if (!ok) problems.push(`differs: native ${show(w)} reference ${show(ref)}`)
  }
  for (const w of expected) {
    if (!seen.has(windowId(w.key, w.start))) problems.push(`missing: ${show(w)}`)
  }
  return problems.slice(0, 10)
}

const show = (w: RefWindow): string => JSON.stringify(w)

function expectSameOutcome(
  context: string,
  native: IngestResult,
  ref: RefIngestResult,
  exactSums: boolean,
): void {
  expect(
    {
      aggregated: native.aggregated,
      late: native.late,
      rejected: native.rejected,
      lateIdx: Array.from(native.lateIndexes),
      rejectedIdx: Array.from(native.rejectedIndexes),
      reasons: Array.from(native.rejectedReasons),
    },
    context,
  ).toEqual({
    aggregated: ref.aggregated,
    late: ref.late,
    rejected: ref.rejected,
    lateIdx: ref.lateIdx,
    rejectedIdx: ref.rejectedIdx,
    reasons: ref.reasons,
  })
  expect(closedProblems(rowsOf(native.closed), ref.closed, exactSums), context).toEqual([])
}

// ---------------------------------------------------------------------------------------------
// Native vs reference on random runs
// ---------------------------------------------------------------------------------------------

const base = 1_700_000_000_000
const runs: (DataSpec & { name: string })[] = [
  {
    name: 'tumbling 60s, grace 0',
    seed: 0x1001,
    sizeMs: 60_000,
    advanceMs: 60_000,
    graceMs: 0,
    keys: 6000,
    samples: 100_000,
    spanWindows: 30,
    base,
    outOfOrder: 0.1,
    invalid: 0.01,
    values: 'mixed',
  },
  {
    name: 'tumbling 10s, grace 4s',
    seed: 0x1002,
    sizeMs: 10_000,
    advanceMs: 10_000,
    graceMs: 4_000,
    keys: 5000,
    samples: 80_000,
    spanWindows: 60,
    base: base + 1234,
    outOfOrder: 0.1,
    invalid: 0.01,
    values: 'mixed',
  },
  {
    name: 'hopping 60s/15s, grace 0',
    seed: 0x1003,
    sizeMs: 60_000,
    advanceMs: 15_000,
    graceMs: 0,
    keys: 6000,
    samples: 80_000,
    spanWindows: 25,
    base,
    outOfOrder: 0.1,
    invalid: 0.01,
    values: 'mixed',
  },
  {
    name: 'hopping 60s/15s, grace 20s',
    seed: 0x1004,
    sizeMs: 60_000,
    advanceMs: 15_000,
    graceMs: 20_000,
    keys: 5000,
    samples: 80_000,
    spanWindows: 25,
    base: base + 7,
    outOfOrder: 0.1,
    invalid: 0.01,
    values: 'mixed',
  },
  {
    name: 'hopping 60s/20s, grace 10s, dyadic values (exact sums)',
    seed: 0x1005,
    sizeMs: 60_000,
    advanceMs: 20_000,
    graceMs: 10_000,
    keys: 5000,
    samples: 80_000,
    spanWindows: 25,
    base,
    outOfOrder: 0.1,
    invalid: 0.01,
    values: 'dyadic',
  },
  {
    name: 'hopping 1s/250ms from the epoch (negative window starts), grace 300ms',
    seed: 0x1006,
    sizeMs: 1000,
    advanceMs: 250,
    graceMs: 300,
    keys: 500,
    samples: 30_000,
    spanWindows: 40,
    base: 0,
    outOfOrder: 0.1,
    invalid: 0.01,
    values: 'mixed',
  },
  {
    // Tiny windows and dense integer timestamps: many samples exactly on window starts, ends
    // and close times, to catch off-by-one errors.
    name: 'boundary-dense: size 6, advance 2, grace 3',
    seed: 0x1007,
    sizeMs: 6,
    advanceMs: 2,
    graceMs: 3,
    keys: 20,
    samples: 30_000,
    spanWindows: 10_000, // about 2 ms between samples
    base: 0,
    outOfOrder: 0.2,
    invalid: 0.02,
    values: 'dyadic',
  },
  {
    name: 'boundary-dense: tumbling size 5, grace 0',
    seed: 0x1008,
    sizeMs: 5,
    advanceMs: 5,
    graceMs: 0,
    keys: 20,
    samples: 30_000,
    spanWindows: 12_000, // about 2 ms between samples
    base: 0,
    outOfOrder: 0.2,
    invalid: 0.02,
    values: 'mixed',
  },
]

describe('PartitionAggregator against the TS reference', () => {
  it('agrees with a hand-worked hopping example (size 10, advance 5, grace 2)', () => {
    const config = { sizeMs: 10, advanceMs: 5, graceMs: 2 }
    const first: RefSample[] = [
      { key: 'a', ts: 7, value: 1, offset: 0 }, // [0,10) [5,15); closeTime 5: aggregated
      { key: 'a', ts: 13, value: 2, offset: 1 }, // [5,15) [10,20); closeTime 11: aggregated
      { key: 'a', ts: 4, value: 4, offset: 2 }, // [-5,5) [0,10) both end <= 11: late
      { key: 'a', ts: 9, value: 8, offset: 3 }, // [0,10) is late, [5,15) takes it: aggregated
    ]
    const second: RefSample[] = [
      { key: 'b', ts: 1000, value: Number.NaN, offset: 4 }, // rejected: stream time stays 13
      { key: 'b', ts: 17, value: 0.5, offset: 4 }, // closeTime 15: [10,20) [15,25)
    ]
    const window = (start: number, values: number[]) => {
      const sum = values.reduce((x, y) => x + y, 0)
      const [min, max] = [Math.min(...values), Math.max(...values)]
      return {
        key: 'a',
        start,
        end: start + 10,
        count: values.length,
        sum,
        mean: sum / values.length,
        min,
        max,
      }
    }
    const expected = [
      { aggregated: 3, late: 1, rejected: 0, lateIdx: [2], rejectedIdx: [], reasons: [] },
      { aggregated: 1, late: 0, rejected: 1, lateIdx: [], rejectedIdx: [0], reasons: [1] },
    ]
    const closed = [[window(0, [1])], [window(5, [1, 2, 8])]]
    const native = new PartitionAggregator(config)
    const ref = new ReferenceAggregator(config)
    ;[first, second].forEach((batch, b) => {
      const got = ingest(native, batch)
      const want = ref.ingest(batch)
      expect(want).toEqual({ ...expected[b], closed: closed[b] })
      expectSameOutcome(`batch ${b}`, got, want, true)
    })
    expect([native.streamTime, ref.streamTime]).toEqual([17, 17])
    // Open: a@10 (first sample at offset 1), b@10 and b@15 (offset 4).
    expect([native.lowWatermark, ref.lowWatermark]).toEqual([1, 1])
    expect([native.stats.openWindows, ref.openCount]).toEqual([3, 3])
    native.free()
  })

  it.each(runs)('$name', (spec) => {
    const data = generate(spec)
    const batches = batchesOf(data, spec.seed, false)
    const config = { sizeMs: spec.sizeMs, advanceMs: spec.advanceMs, graceMs: spec.graceMs }
    const native = new PartitionAggregator(config)
    const ref = new ReferenceAggregator(config)
    const emitted = new Set<string>()
    const totals = { aggregated: 0, late: 0, rejected: 0, closed: 0 }
    const reasonsSeen = new Set<number>()
    let maxOpen = 0
    try {
      batches.forEach((batch, b) => {
        const context = `seed=0x${spec.seed.toString(16)} batch=${b}/${batches.length} (${batch.length} samples)`
        const got = ingest(native, batch)
        const want = ref.ingest(batch)
        expectSameOutcome(context, got, want, spec.values === 'dyadic')
        const again = want.closed
          .map((w) => windowId(w.key, w.start))
          .filter((id) => emitted.has(id))
        expect(again, `${context}: windows emitted twice`).toEqual([])
        for (const w of want.closed) emitted.add(windowId(w.key, w.start))
        expect(native.streamTime, context).toBe(ref.streamTime)
        expect(native.lowWatermark, context).toBe(ref.lowWatermark)
        const stats = native.stats
        expect(stats.openWindows, context).toBe(ref.openCount)
        expect(stats.streamTime, context).toBe(ref.streamTime)
        totals.aggregated += want.aggregated
        totals.late += want.late
        totals.rejected += want.rejected
        totals.closed += want.closed.length
        for (const r of want.reasons) reasonsSeen.add(r)
        maxOpen = Math.max(maxOpen, ref.openCount)
      })
      const stats = native.stats
      expect(stats).toMatchObject({
        aggregatedTotal: totals.aggregated,
        lateTotal: totals.late,
        rejectedTotal: totals.rejected,
      })
      expect(stats.bytesHeld).toBeGreaterThan(0)
      // Interned keys: at least those of open windows, at most every valid key seen.
      const openKeys = new Set(ref.openWindows().map((w) => w.key))
      const validKeys = new Set(data.samples.map((s) => s.key).filter((k) => k !== null))
      expect(stats.seriesKeys).toBeGreaterThanOrEqual(openKeys.size)
      expect(stats.seriesKeys).toBeLessThanOrEqual(validKeys.size)
      expect(validKeys.size).toBeGreaterThan(0.9 * spec.keys)
    } finally {
      native.free()
    }
    // The data exercised what it is meant to.
    expect(batches.length).toBeGreaterThan(20)
    expect(totals.late).toBeGreaterThan(0)
    expect(totals.closed).toBeGreaterThan(spec.keys)
    expect([...reasonsSeen].sort()).toEqual([1, 2, 3])
    expect(Math.min(...batches.map((b) => b.length))).toBeLessThan(20)
    expect(Math.max(...batches.map((b) => b.length))).toBeGreaterThan(2000)
  })
})

// ---------------------------------------------------------------------------------------------
// Hostile input: input bounds (reasons 2, 4-6) and the window limit (reason 7)
// ---------------------------------------------------------------------------------------------

/** 2000-01-01T00:00:00Z: earlier event times are treated as absurd. */
const YEAR_2000 = 946_684_800_000

interface HostileSpec extends DataSpec {
  name: string
  minEventTimeMs: number
  maxKeyBytes: number
  maxOpenWindows: number | null
  /** Allowed clock skew: a batch's maxEventTime is its wall clock plus this. */
  skewMs: number
  /** Fraction of samples given one of the defects of `sabotage`. */
  hostile: number
}

/** A series key of exactly `bytes` UTF-8 bytes (2-byte 'é's and an ASCII tail), distinct per n. */
function keyOfBytes(bytes: number, n: number): string {
  const tail = `-${n}`
  const body = bytes - tail.length
  return 'é'.repeat(Math.floor(body / 2)) + 'x'.repeat(body % 2) + tail
}

/**
 * Gives a sample one of the defects of reasons 2 and 4-6, or several (the lowest code must win),
 * or puts it exactly on a bound (still valid). Without a maxEventTime nothing is from the future,
 * so a sample is not sent there: it would rightly move stream time.
 */
function sabotage(
  sample: RefSample,
  rand: () => number,
  spec: HostileSpec,
  maxEventTime: number | null,
): void {
  const n = Math.floor(rand() * 50)
  const long = keyOfBytes(spec.maxKeyBytes + 1 + Math.floor(rand() * 3), n)
  const ancient = Math.max(0, spec.minEventTimeMs - 1 - Math.floor(rand() * 1e6))
  if (maxEventTime === null) {
    ;[
      () => (sample.key = ''),
      () => (sample.key = long),
      () => (sample.key = keyOfBytes(spec.maxKeyBytes, n)),
      () => (sample.ts = ancient),
      () => (sample.ts = spec.minEventTimeMs),
    ][Math.floor(rand() * 5)]?.()
    return
  }
  const future = Math.floor(maxEventTime) + 1 + Math.floor(rand() * 10 * spec.sizeMs)
  switch (Math.floor(rand() * 12)) {
    case 0:
      sample.key = '' // 4
      break
    case 1:
      sample.key = long // 5
      break
    case 2:
      sample.key = keyOfBytes(spec.maxKeyBytes, n) // valid: on the bound
      break
    case 3:
      sample.ts = ancient // 2
      break
    case 4:
      sample.ts = spec.minEventTimeMs // valid (and probably late)
      break
    case 5:
      sample.ts = future // 6
      break
    case 6: // valid: on the bound (rarely: it moves stream time well ahead of the batch)
      sample.ts = rand() < 0.1 ? Math.floor(maxEventTime) : future
      break
    case 7:
      sample.key = '' // 4 over 6
      sample.ts = future
      break
    case 8:
      sample.key = long // 1 over 5
      sample.value = Number.NaN
      break
    case 9:
      sample.key = null // 3 over 6
      sample.ts = future
      break
    case 10:
      sample.key = '' // 2 over 4
      sample.ts = ancient
      break
    default:
      sample.key = long // 5 over 6
      sample.ts = future
  }
}

interface HostileBatch {
  batch: RefSample[]
  /** The newest valid timestamp generated so far. */
  wall: number
  /** wall + skew (sometimes + 0.5), or (1 in 10) null for no bound. */
  maxEventTime: number | null
}

/** Sabotaged batches with their wall clock and maxEventTime. */
function hostileBatches(spec: HostileSpec): HostileBatch[] {
  const batches = batchesOf(generate(spec), spec.seed, false)
  const rand = mulberry32(spec.seed ^ 0x4057)
  let wall = 0
  return batches.map((batch) => {
    // The wall clock is at least the newest valid timestamp generated so far.
    for (const s of batch) if (Number.isSafeInteger(s.ts)) wall = Math.max(wall, s.ts)
    const r = rand()
    const maxEventTime = r < 0.1 ? null : wall + spec.skewMs + (r < 0.2 ? 0.5 : 0)
    for (const sample of batch)
      if (rand() < spec.hostile) sabotage(sample, rand, spec, maxEventTime)
    return { batch, wall, maxEventTime }
  })
}

const hostileRuns: HostileSpec[] = [
  {
    name: 'tumbling 10s, grace 2s, at most 400 open windows',
    seed: 0x4001,
    sizeMs: 10_000,
    advanceMs: 10_000,
    graceMs: 2_000,
    keys: 600,
    samples: 30_000,
    spanWindows: 40,
    base,
    outOfOrder: 0.1,
    invalid: 0.01,
    values: 'mixed',
    minEventTimeMs: YEAR_2000,
    maxKeyBytes: 24,
    maxOpenWindows: 400,
    skewMs: 5_000,
    hostile: 0.03,
  },
  {
    name: 'hopping 60s/15s, grace 20s, at most 500 open windows',
    seed: 0x4002,
    sizeMs: 60_000,
    advanceMs: 15_000,
    graceMs: 20_000,
    keys: 300,
    samples: 30_000,
    spanWindows: 25,
    base: base + 7,
    outOfOrder: 0.1,
    invalid: 0.01,
    values: 'dyadic',
    minEventTimeMs: YEAR_2000,
    maxKeyBytes: 20,
    maxOpenWindows: 500,
    skewMs: 30_000,
    hostile: 0.03,
  },
  {
    name: 'boundary-dense: size 6, advance 2, grace 3, at most 12 open windows',
    seed: 0x4003,
    sizeMs: 6,
    advanceMs: 2,
    graceMs: 3,
    keys: 20,
    samples: 20_000,
    spanWindows: 7_000,
    base: 0,
    outOfOrder: 0.2,
    invalid: 0.02,
    values: 'dyadic',
    minEventTimeMs: 50,
    maxKeyBytes: 16,
    maxOpenWindows: 12,
    skewMs: 2,
    hostile: 0.05,
  },
  {
    name: 'hopping 1s/250ms from the epoch, no window limit',
    seed: 0x4004,
    sizeMs: 1000,
    advanceMs: 250,
    graceMs: 300,
    keys: 500,
    samples: 20_000,
    spanWindows: 40,
    base: 0,
    outOfOrder: 0.1,
    invalid: 0.01,
    values: 'mixed',
    minEventTimeMs: 1000,
    maxKeyBytes: 18,
    maxOpenWindows: null,
    skewMs: 100,
    hostile: 0.03,
  },
]

const limitsOf = (spec: HostileSpec) => ({
  sizeMs: spec.sizeMs,
  advanceMs: spec.advanceMs,
  graceMs: spec.graceMs,
  minEventTimeMs: spec.minEventTimeMs,
  maxKeyBytes: spec.maxKeyBytes,
  maxOpenWindows: spec.maxOpenWindows,
})

const reasonsOf = (out: IngestResult): number[] => Array.from(out.rejectedReasons)

describe('hostile input', () => {
  it('reports each reason, the lowest applicable one first, as the reference does', () => {
    const config = { sizeMs: 10, minEventTimeMs: 10, maxKeyBytes: 4, maxOpenWindows: 1 }
    const sample = (key: string | null, ts: number, value = 1): RefSample => ({
      key,
      ts,
      value,
      offset: 0,
    })
    const batch: RefSample[] = [
      sample('ok', 10), // aggregated: opens ok@10, the only window allowed
      sample(null, 10, Number.NaN), // 1 over 3
      sample('', 5), // 2 (before minEventTimeMs) over 4
      sample(null, 10.5), // 2 over 3
      sample(null, 99), // 3 over 6
      sample('', 99), // 4 over 6
      sample('toolong', 99), // 5 over 6
      sample('\u00e9\u{1F600}', 12), // 5: 2 characters but 6 bytes
      sample('ok', 51), // 6: after maxEventTime
      sample('ab', 12), // 7: ab@10 would be a second open window
      sample('ok', 12), // aggregated: ok@10 exists
      sample('ok', 50), // aggregated: ok@10 is due (closes), so ok@50 fits
    ]
    const native = new PartitionAggregator(config)
    const ref = new ReferenceAggregator(config)
    const got = ingest(native, batch, 50)
    const want = ref.ingest(batch, 50)
    expect(want).toMatchObject({
      aggregated: 3,
      late: 0,
      rejectedIdx: [1, 2, 3, 4, 5, 6, 7, 8, 9],
      reasons: [1, 2, 2, 3, 4, 5, 5, 6, 7],
    })
    expect(want.closed.map((w) => [w.key, w.start, w.count])).toEqual([['ok', 10, 2]])
    expectSameOutcome('hand-worked', got, want, true)
    expect(Array.from(native.stats.rejectedByReason)).toEqual([0, 1, 2, 1, 1, 2, 1, 1])
    expect(ref.rejectedByReason).toEqual([0, 1, 2, 1, 1, 2, 1, 1])
    expect([native.streamTime, native.stats.openWindows, native.stats.seriesKeys]).toEqual([
      50, 1, 1,
    ])
    native.free()
  })

  it('future samples are rejected and do not move stream time', () => {
    const native = new PartitionAggregator({ sizeMs: 10 })
    const ref = new ReferenceAggregator({ sizeMs: 10 })
    const batch: RefSample[] = [
      { key: 'a', ts: 100, value: 1, offset: 0 },
      { key: 'a', ts: 4_102_444_800_000, value: 1, offset: 1 }, // year 2100
      { key: 'a', ts: 105, value: 2, offset: 2 }, // would be late after the one above
      { key: 'a', ts: 120, value: 4, offset: 3 }, // on the bound: accepted
    ]
    const got = ingest(native, batch, 120)
    const want = ref.ingest(batch, 120)
    expect(want).toMatchObject({ aggregated: 3, late: 0, rejectedIdx: [1], reasons: [6] })
    expectSameOutcome('future', got, want, true)
    expect([native.streamTime, ref.streamTime]).toEqual([120, 120])
    native.free()
  })

  it('maxEventTime omitted, undefined or null sets no bound; NaN throws InvalidArg', () => {
    const far = [{ key: 'a', ts: 1e15, value: 1, offset: 0 }]
    const c = columnsOf(far)
    const calls = [
      (a: PartitionAggregator) => a.ingest(c.keys, c.keyIndex, c.timestamps, c.values, c.offsets),
      (a: PartitionAggregator) => ingest(a, far, undefined),
      (a: PartitionAggregator) => ingest(a, far, null),
    ]
    for (const call of calls) {
      const aggregator = new PartitionAggregator({ sizeMs: 10 })
      expect(call(aggregator).aggregated).toBe(1)
      aggregator.free()
    }
    const aggregator = new PartitionAggregator({ sizeMs: 10 })
    const nan = () => ingest(aggregator, far, Number.NaN)
    expect(nan).toThrow('maxEventTime must be null or a number, not NaN')
    expect(nan).toThrow(expect.objectContaining({ code: 'InvalidArg' }))
    expect(aggregator.stats).toMatchObject({ rejectedTotal: 0, streamTime: null })
    // -Infinity refuses everything; a fractional bound compares as a number.
    expect(reasonsOf(ingest(aggregator, far, -Infinity))).toEqual([6])
    const two = [
      { key: 'a', ts: 10, value: 1, offset: 1 },
      { key: 'a', ts: 11, value: 1, offset: 2 },
    ]
    expect(Array.from(ingest(aggregator, two, 10.5).rejectedIndexes)).toEqual([1])
    aggregator.free()
  })

  it('the window limit refuses new windows, not stream time: a full table still drains', () => {
    // Room for one aggregate; grace 5 keeps a@0 open until stream time 15.
    const config = { sizeMs: 10, graceMs: 5, maxOpenWindows: 1 }
    const native = new PartitionAggregator(config)
    const ref = new ReferenceAggregator(config)
    const batch: RefSample[] = [
      { key: 'a', ts: 1, value: 1, offset: 0 }, // opens a@0
      { key: 'b', ts: 12, value: 1, offset: 1 }, // b@10 does not fit: 7, stream time 12
      { key: 'a', ts: 9, value: 2, offset: 2 }, // a@0 still aggregates
      { key: 'b', ts: 15, value: 4, offset: 3 }, // close time 10: a@0 is due, b@10 fits
      { key: 'a', ts: 16, value: 1, offset: 4 }, // a@10 would be a second aggregate: 7
    ]
    const got = ingest(native, batch)
    const want = ref.ingest(batch)
    expect(want).toMatchObject({ aggregated: 3, rejectedIdx: [1, 4], reasons: [7, 7] })
    expect(want.closed.map((w) => [w.key, w.start, w.sum])).toEqual([['a', 0, 3]])
    expectSameOutcome('window limit', got, want, true)
    expect([native.streamTime, native.stats.openWindows, native.lowWatermark]).toEqual([16, 1, 3])
    expect(native.stats.rejectedByReason[7]).toBe(2)
    native.free()
  })

  it('stats.rejectedByReason is indexed by code and adds up to rejectedTotal', () => {
    const aggregator = new PartitionAggregator({ sizeMs: 10 })
    const empty = aggregator.stats.rejectedByReason
    expect(empty).toBeInstanceOf(Float64Array)
    expect(Array.from(empty)).toEqual([0, 0, 0, 0, 0, 0, 0, 0])
    ingest(aggregator, [
      { key: 'a', ts: 5, value: Infinity, offset: 0 },
      { key: '', ts: 5, value: 1, offset: 1 },
      { key: '', ts: 5, value: 1, offset: 2 },
    ])
    const stats = aggregator.stats
    expect(Array.from(stats.rejectedByReason)).toEqual([0, 1, 0, 0, 2, 0, 0, 0])
    expect(stats.rejectedTotal).toBe(3)
    aggregator.free()
  })

  it.each(hostileRuns)('$name: native agrees with the reference', (spec) => {
    const batches = hostileBatches(spec)
    const native = new PartitionAggregator(limitsOf(spec))
    const ref = new ReferenceAggregator(limitsOf(spec))
    const reasonsSeen = new Set<number>()
    let bound = -Infinity
    /** Samples aggregated after a sample of the same batch was refused by the window limit. */
    let aggregatedAfterLimit = 0
    try {
      batches.forEach(({ batch, wall, maxEventTime }, b) => {
        const context = `seed=0x${spec.seed.toString(16)} batch=${b}/${batches.length} (${batch.length} samples, maxEventTime ${maxEventTime})`
        const got = ingest(native, batch, maxEventTime)
        const want = ref.ingest(batch, maxEventTime)
        expectSameOutcome(context, got, want, spec.values === 'dyadic')
        expect(native.streamTime, context).toBe(ref.streamTime)
        expect(native.lowWatermark, context).toBe(ref.lowWatermark)
        const stats = native.stats
        expect(stats.openWindows, context).toBe(ref.openCount)
        if (spec.maxOpenWindows !== null) {
          expect(stats.openWindows, context).toBeLessThanOrEqual(spec.maxOpenWindows)
        }
        // Samples from the future did not move stream time: it stays within the bounds given.
        bound = Math.max(bound, maxEventTime ?? wall)
        expect(native.streamTime ?? -Infinity, context).toBeLessThanOrEqual(bound)
        for (const r of want.reasons) reasonsSeen.add(r)
        const first = want.rejectedIdx[want.reasons.indexOf(7)]
        if (first !== undefined) {
          const dropped = new Set([...want.lateIdx, ...want.rejectedIdx])
          for (let i = first + 1; i < batch.length; i++) if (!dropped.has(i)) aggregatedAfterLimit++
        }
      })
      const stats = native.stats
      expect(Array.from(stats.rejectedByReason)).toEqual(ref.rejectedByReason)
      expect(stats.rejectedTotal).toBe(ref.rejectedByReason.reduce((x, y) => x + y, 0))
    } finally {
      native.free()
    }
    // The data exercised what it is meant to.
    const expected = spec.maxOpenWindows === null ? [1, 2, 3, 4, 5, 6] : [1, 2, 3, 4, 5, 6, 7]
    expect([...reasonsSeen].sort()).toEqual(expected)
    if (spec.maxOpenWindows !== null) {
      expect(ref.rejectedByReason[7]).toBeGreaterThan(50)
      expect(aggregatedAfterLimit).toBeGreaterThan(50)
    }
    expect(batches.some((b) => b.maxEventTime === null)).toBe(true)
  })
})

// ---------------------------------------------------------------------------------------------
// Recovery: restore from (streamTime, lowWatermark) and replay
// ---------------------------------------------------------------------------------------------

const recoveryRuns: (DataSpec & { name: string })[] = [
  { ...(runs[0] as DataSpec), name: 'tumbling 60s, grace 0', seed: 0x2001, samples: 40_000 },
  { ...(runs[1] as DataSpec), name: 'tumbling 10s, grace 4s', seed: 0x2002, samples: 40_000 },
  { ...(runs[2] as DataSpec), name: 'hopping 60s/15s, grace 0', seed: 0x2003, samples: 40_000 },
  {
    ...(runs[3] as DataSpec),
    name: 'hopping 60s/15s, grace 20s',
    seed: 0x2004,
    samples: 40_000,
  },
  { ...(runs[6] as DataSpec), name: 'boundary-dense hopping', seed: 0x2005, samples: 20_000 },
]

describe('recovery from streamTime + lowWatermark', () => {
  it.each(recoveryRuns)('$name: a restored aggregator continues identically', (spec) => {
    const data = generate(spec)
    const batches = batchesOf(data, spec.seed, true)
    const config = { sizeMs: spec.sizeMs, advanceMs: spec.advanceMs, graceMs: spec.graceMs }
    const rand = mulberry32(spec.seed ^ 0xbeef)
    const restorePoints = new Set<number>()
    while (restorePoints.size < 5) restorePoints.add(1 + Math.floor(rand() * (batches.length - 2)))

    const original = new PartitionAggregator(config)
    const restored: { from: number; aggregator: PartitionAggregator }[] = []
    const processed: RefSample[] = []
    let replayedTotal = 0
    try {
      batches.forEach((batch, b) => {
        const context = `seed=0x${spec.seed.toString(16)} batch=${b}/${batches.length}`
        if (restorePoints.has(b)) {
          const low = original.lowWatermark
          const streamTime = original.streamTime
          const aggregator = new PartitionAggregator({
            ...config,
            streamTime: streamTime ?? undefined,
          })
          restored.push({ from: b, aggregator })
          const replay = low === null ? [] : processed.filter((s) => s.offset >= low)
          replayedTotal += replay.length
          const out = ingest(aggregator, replay)
          // Replayed samples were all seen before: stream time stays, nothing closes again.
          expect(out.closed.seriesKeys, context).toEqual([])
          expect(aggregator.streamTime, context).toBe(streamTime)
          expect(aggregator.lowWatermark, context).toBe(low)
          expect(aggregator.stats.openWindows, context).toBe(original.stats.openWindows)
        }
        const columns = columnsOf(batch)
        const expected = ingestColumns(original, columns)
        for (const r of restored) {
          const difference = outcomeDifference(ingestColumns(r.aggregator, columns), expected)
          expect(difference, `${context}, restored at batch ${r.from}`).toBeUndefined()
        }
        processed.push(...batch)
      })
    } finally {
      original.free()
      for (const r of restored) r.aggregator.free()
    }
    expect(restored.length).toBe(5)
    expect(replayedTotal).toBeGreaterThan(0)
  })

  it('replaying from just above the low watermark would lose data (the check has teeth)', () => {
    const spec = recoveryRuns[2] as DataSpec
    const data = generate(spec)
    const batches = batchesOf(data, spec.seed, true)
    const config = { sizeMs: spec.sizeMs, advanceMs: spec.advanceMs, graceMs: spec.graceMs }
    const cut = Math.floor(batches.length / 2)
    const original = new PartitionAggregator(config)
    const processed = batches.slice(0, cut).flat()
    for (const batch of batches.slice(0, cut)) ingest(original, batch)
    const low = original.lowWatermark as number
    const restored = new PartitionAggregator({
      ...config,
      streamTime: original.streamTime as number,
    })
    ingest(
      restored,
      processed.filter((s) => s.offset > low),
    )
    const differences = batches
      .slice(cut)
      .map((batch) => outcomeDifference(ingest(restored, batch), ingest(original, batch)))
    expect(differences.some((d) => d?.startsWith('closed windows') === true)).toBe(true)
    original.free()
    restored.free()
  })
})

// ---------------------------------------------------------------------------------------------
// Changelog: change tracking, snapshot and restore
// ---------------------------------------------------------------------------------------------

type WindowStates = ReturnType<PartitionAggregator['snapshot']>

/** One row of `WindowStates`. */
interface StateRow {
  key: string
  start: number
  count: number
  sum: number
  compensation: number
  min: number
  max: number
  firstOffset: number
}

const stateColumns = [
  'windowStart',
  'count',
  'sum',
  'compensation',
  'min',
  'max',
  'firstOffset',
] as const

function stateRows(states: WindowStates): StateRow[] {
  return states.seriesKeys.map((key, i) => ({
    key,
    start: states.windowStart[i] as number,
    count: states.count[i] as number,
    sum: states.sum[i] as number,
    compensation: states.compensation[i] as number,
    min: states.min[i] as number,
    max: states.max[i] as number,
    firstOffset: states.firstOffset[i] as number,
  }))
}

/** Rows as columns, in the given order. */
function statesOf(rows: readonly StateRow[]): WindowStates {
  const column = (f: (r: StateRow) => number) => Float64Array.from(rows, f)
  return {
    seriesKeys: rows.map((r) => r.key),
    windowStart: column((r) => r.start),
    count: column((r) => r.count),
    sum: column((r) => r.sum),
    compensation: column((r) => r.compensation),
    min: column((r) => r.min),
    max: column((r) => r.max),
    firstOffset: column((r) => r.firstOffset),
  }
}

/** The documented order of window states: start, then series key in code point order. */
const inStateOrder = (rows: Iterable<StateRow>): StateRow[] =>
  [...rows].sort((a, b) => a.start - b.start || compareCodePoints(a.key, b.key))

/** The first difference between two sets of window states (bytewise), or undefined. */
function statesDifference(a: WindowStates, b: WindowStates): string | undefined {
  if (a.seriesKeys.length !== b.seriesKeys.length) {
    return `rows: ${a.seriesKeys.length} vs ${b.seriesKeys.length}`
  }
  const differentKey = a.seriesKeys.findIndex((key, i) => key !== b.seriesKeys[i])
  if (differentKey >= 0) return `row ${differentKey}: series key`
  return stateColumns.find((column) => !sameBytes(a[column], b[column]))
}

/**
 * A compacted changelog, keyed like a Kafka compacted topic by (series key, window start):
 * `changes` are upserts, `closed` windows are tombstones.
 */
class MirrorLog {
  readonly rows = new Map<string, StateRow>()

  /**
   * Applies one batch's outcome; fails the test if a window is reported twice in it. Returns how
   * many closed windows were deleted from the log (the others opened and closed in the batch).
   */
  apply(out: IngestResult, context: string): number {
    expect(out.changes, context).toBeDefined()
    const changed = new Set<string>()
    for (const row of stateRows(out.changes as WindowStates)) {
      const id = windowId(row.key, row.start)
      expect(changed.has(id), `${context}: ${id} changed twice in one batch`).toBe(false)
      changed.add(id)
      this.rows.set(id, row)
    }
    let deleted = 0
    out.closed.seriesKeys.forEach((key, i) => {
      const id = windowId(key, out.closed.windowStart[i] as number)
      expect(changed.has(id), `${context}: ${id} both changed and closed`).toBe(false)
      if (this.rows.delete(id)) deleted++
    })
    return deleted
  }

  /** The log's rows as restore() input, in map order (not the output order). */
  columns(): WindowStates {
    return statesOf([...this.rows.values()])
  }
}

const changelogRuns: (DataSpec & { name: string })[] = [
  { ...(runs[1] as DataSpec), name: 'tumbling 10s, grace 4s', seed: 0x3001, samples: 40_000 },
  {
    ...(runs[3] as DataSpec),
    name: 'hopping 60s/15s, grace 20s',
    seed: 0x3002,
    samples: 40_000,
  },
  {
    ...(runs[5] as DataSpec),
    name: 'hopping 1s/250ms from the epoch, grace 300ms',
    seed: 0x3003,
    samples: 20_000,
  },
  { ...(runs[6] as DataSpec), name: 'boundary-dense hopping', seed: 0x3004, samples: 20_000 },
]

const configOf = (spec: DataSpec) => ({
  sizeMs: spec.sizeMs,
  advanceMs: spec.advanceMs,
  graceMs: spec.graceMs,
  trackChanges: true,
})

describe('change tracking', () => {
  it('changes is undefined unless trackChanges is set', () => {
    const batch = at(5, [1, 2])
    for (const config of [{ sizeMs: 10 }, { sizeMs: 10, trackChanges: false }]) {
      const aggregator = new PartitionAggregator(config)
      const out = ingest(aggregator, batch)
      expect(out.aggregated).toBe(2)
      expect(out.changes).toBeUndefined()
      expect('changes' in out).toBe(false)
      aggregator.free()
    }
    const aggregator = new PartitionAggregator({ sizeMs: 10, trackChanges: true })
    expect(stateRows(ingest(aggregator, batch).changes as WindowStates)).toHaveLength(1)
    // A batch that touches no window reports no change, but still an (empty) changes.
    expect(ingest(aggregator, []).changes?.seriesKeys).toEqual([])
    aggregator.free()
  })

  it('reports each touched open window once, with its full state', () => {
    const aggregator = new PartitionAggregator({
      sizeMs: 10,
      advanceMs: 5,
      graceMs: 2,
      trackChanges: true,
    })
    const out = ingest(aggregator, [
      { key: 'b', ts: 7, value: 1e16, offset: 3 }, // [0,10) [5,15); closeTime 5
      { key: 'a', ts: 4, value: 2, offset: 4 }, // [-5,5) is late, [0,10) takes it
      { key: 'b', ts: 8, value: 1, offset: 5 }, // [0,10) [5,15) again
      { key: 'b', ts: 9, value: -1e16, offset: 5 }, // and again
      { key: 'a', ts: 12, value: 4, offset: 6 }, // [5,15) [10,20); closeTime 10
    ])
    // [0,10) opened and closed within the batch: only in closed.
    expect(rowsOf(out.closed).map((w) => [w.key, w.start, w.sum])).toEqual([
      ['a', 0, 2],
      ['b', 0, 1],
    ])
    // b@5 once, with its raw sum: the 1 was lost by the running sum and kept by the compensation.
    const b5 = { count: 3, sum: 0, compensation: 1, min: -1e16, max: 1e16, firstOffset: 3 }
    const a = { count: 1, sum: 4, compensation: 0, min: 4, max: 4, firstOffset: 6 }
    expect(stateRows(out.changes as WindowStates)).toEqual([
      { key: 'a', start: 5, ...a },
      { key: 'b', start: 5, ...b5 },
      { key: 'a', start: 10, ...a },
    ])
    expect(statesDifference(out.changes as WindowStates, aggregator.snapshot())).toBeUndefined()
    // A closing window reports the compensated sum; untouched windows are not in changes.
    const next = ingest(aggregator, [{ key: 'c', ts: 17, value: 0, offset: 7 }])
    expect(rowsOf(next.closed).map((w) => [w.key, w.start, w.sum])).toEqual([
      ['a', 5, 4],
      ['b', 5, 1],
    ])
    expect(stateRows(next.changes as WindowStates).map((r) => [r.key, r.start])).toEqual([
      ['c', 10],
      ['c', 15],
    ])
    expect(stateRows(aggregator.snapshot()).map((r) => [r.key, r.start])).toEqual([
      ['a', 10],
      ['c', 10],
      ['c', 15],
    ])
    aggregator.free()
  })

  it.each(changelogRuns)(
    '$name: changes upserted and closed windows deleted equal snapshot() after every batch',
    (spec) => {
      const batches = batchesOf(generate(spec), spec.seed, false)
      const aggregator = new PartitionAggregator(configOf(spec))
      const log = new MirrorLog()
      const seen = { deleted: 0, closed: 0, repeatedTouches: 0, compensated: 0, maxOpen: 0 }
      try {
        batches.forEach((batch, b) => {
          const context = `seed=0x${spec.seed.toString(16)} batch=${b}/${batches.length}`
          const out = ingest(aggregator, batch)
          seen.deleted += log.apply(out, context)
          const snapshot = aggregator.snapshot()
          const expected = statesOf(inStateOrder(log.rows.values()))
          expect(statesDifference(snapshot, expected), context).toBeUndefined()
          expect(snapshot.seriesKeys.length, context).toBe(aggregator.stats.openWindows)
          const changes = out.changes as WindowStates
          seen.closed += out.closed.seriesKeys.length
          seen.repeatedTouches += changes.count.filter((c) => c > 1).length
          seen.compensated += changes.compensation.filter((c) => c !== 0).length
          seen.maxOpen = Math.max(seen.maxOpen, snapshot.seriesKeys.length)
        })
      } finally {
        aggregator.free()
      }
      // The data exercised what it is meant to.
      expect(batches.length).toBeGreaterThan(20)
      expect(seen.closed).toBeGreaterThan(spec.keys / 2)
      // Closed windows both had been logged by earlier batches, and opened and closed in one.
      expect(seen.deleted).toBeGreaterThan(0)
      expect(seen.deleted).toBeLessThan(seen.closed)
      expect(seen.repeatedTouches).toBeGreaterThan(0)
      expect(seen.maxOpen).toBeGreaterThan(Math.min(500, spec.keys / 2))
      if (spec.values === 'mixed') expect(seen.compensated).toBeGreaterThan(0)
    },
  )
})

describe('restore from a compacted changelog', () => {
  it.each(changelogRuns)(
    '$name: a restored aggregator continues bit-for-bit identically',
    (spec) => {
      const batches = batchesOf(generate(spec), spec.seed ^ 0x77, false)
      const config = configOf(spec)
      const rand = mulberry32(spec.seed ^ 0xc0ffee)
      const restorePoints = new Set<number>()
      while (restorePoints.size < 5) {
        restorePoints.add(1 + Math.floor(rand() * (batches.length - 2)))
      }
      const original = new PartitionAggregator(config)
      const log = new MirrorLog()
      const restored: { from: number; aggregator: PartitionAggregator }[] = []
      let restoredWindows = 0
      try {
        batches.forEach((batch, b) => {
          const context = `seed=0x${spec.seed.toString(16)} batch=${b}/${batches.length}`
          if (restorePoints.has(b)) {
            const aggregator = new PartitionAggregator(config)
            restored.push({ from: b, aggregator })
            aggregator.restore(log.columns(), original.streamTime)
            restoredWindows += log.rows.size
            expect(statesDifference(aggregator.snapshot(), original.snapshot()), context).toBe(
              undefined,
            )
            expect(aggregator.streamTime, context).toBe(original.streamTime)
            expect(aggregator.lowWatermark, context).toBe(original.lowWatermark)
            expect(aggregator.stats.openWindows, context).toBe(original.stats.openWindows)
          }
          const columns = columnsOf(batch)
          const expected = ingestColumns(original, columns)
          log.apply(expected, context)
          for (const r of restored) {
            const where = `${context}, restored at batch ${r.from}`
            const got = ingestColumns(r.aggregator, columns)
            expect(outcomeDifference(got, expected), where).toBeUndefined()
            expect(
              statesDifference(got.changes as WindowStates, expected.changes as WindowStates),
              where,
            ).toBeUndefined()
            expect(r.aggregator.lowWatermark, where).toBe(original.lowWatermark)
            expect(r.aggregator.streamTime, where).toBe(original.streamTime)
            expect(r.aggregator.stats.openWindows, where).toBe(original.stats.openWindows)
          }
        })
        for (const r of restored) {
          expect(statesDifference(r.aggregator.snapshot(), original.snapshot())).toBeUndefined()
        }
      } finally {
        original.free()
        for (const r of restored) r.aggregator.free()
      }
      expect(restored.length).toBe(5)
      expect(restoredWindows).toBeGreaterThan(0)
    },
  )

  it('dropping the compensation terms would change closed sums (the check has teeth)', () => {
    const spec = changelogRuns[1] as DataSpec
    const batches = batchesOf(generate(spec), spec.seed ^ 0x77, false)
    const cut = Math.floor(batches.length / 2)
    const original = new PartitionAggregator(configOf(spec))
    const log = new MirrorLog()
    for (const batch of batches.slice(0, cut)) log.apply(ingest(original, batch), 'prefix')
    const states = log.columns()
    states.compensation.fill(0)
    const restored = new PartitionAggregator(configOf(spec))
    restored.restore(states, original.streamTime)
    const differences = batches
      .slice(cut)
      .map((batch) => outcomeDifference(ingest(restored, batch), ingest(original, batch)))
    expect(differences).toContain('closed windows: sum')
    original.free()
    restored.free()
  })

  /** A valid state (size 10, advance 5, grace 2): a@10 with two samples, at streamTime 20. */
  const valid = (): StateRow => ({
    key: 'a',
    start: 10,
    count: 2,
    sum: 3,
    compensation: 0,
    min: 1,
    max: 2,
    firstOffset: 7,
  })
  const geometry = { sizeMs: 10, advanceMs: 5, graceMs: 2 }

  it('restores an empty changelog and sets stream time', () => {
    const aggregator = new PartitionAggregator({ ...geometry, streamTime: 50 })
    aggregator.restore(statesOf([]), 30)
    expect(aggregator.streamTime).toBe(30)
    // Close time 28: [15,25) is late, [20,30) takes the sample.
    const out = ingest(aggregator, [{ key: 'a', ts: 24, value: 1, offset: 0 }])
    expect([out.aggregated, aggregator.stats.openWindows]).toEqual([1, 1])
    aggregator.free()
  })

  const badStates: { name: string; states: () => WindowStates; streamTime: number | null }[] = [
    {
      name: 'columns of unequal length',
      states: () => ({ ...statesOf([valid()]), max: new Float64Array(2) }),
      streamTime: 20,
    },
    { name: 'windows without a stream time', states: () => statesOf([valid()]), streamTime: null },
    { name: 'a fractional stream time', states: () => statesOf([valid()]), streamTime: 20.5 },
    {
      name: 'a start that is not a multiple of advanceMs',
      states: () => statesOf([{ ...valid(), start: 12 }]),
      streamTime: 20,
    },
    {
      name: 'a start after streamTime',
      states: () => statesOf([{ ...valid(), start: 25 }]),
      streamTime: 20,
    },
    { name: 'an already closed window', states: () => statesOf([valid()]), streamTime: 22 },
    { name: 'count 0', states: () => statesOf([{ ...valid(), count: 0 }]), streamTime: 20 },
    { name: 'count 1.5', states: () => statesOf([{ ...valid(), count: 1.5 }]), streamTime: 20 },
    {
      name: 'a negative firstOffset',
      states: () => statesOf([{ ...valid(), firstOffset: -1 }]),
      streamTime: 20,
    },
    {
      name: 'an unsafe firstOffset',
      states: () => statesOf([{ ...valid(), firstOffset: 2 ** 53 }]),
      streamTime: 20,
    },
    { name: 'min > max', states: () => statesOf([{ ...valid(), min: 3 }]), streamTime: 20 },
    { name: 'a duplicate window', states: () => statesOf([valid(), valid()]), streamTime: 20 },
  ]

  it.each(badStates)('rejects $name with InvalidArg, loading nothing', ({ states, streamTime }) => {
    const aggregator = new PartitionAggregator(geometry)
    const call = () => aggregator.restore(states(), streamTime)
    expect(call).toThrow(/^cannot restore: /)
    expect(call).toThrow(expect.objectContaining({ code: 'InvalidArg' }))
    expect(aggregator.stats.openWindows).toBe(0)
    expect(aggregator.streamTime).toBeNull()
    // Still fresh: a valid restore works.
    aggregator.restore(statesOf([valid()]), 20)
    expect(aggregator.lowWatermark).toBe(7)
    aggregator.free()
  })

  it('names the problem and the row', () => {
    const aggregator = new PartitionAggregator(geometry)
    const restore = (rows: StateRow[], streamTime: number | null) => () =>
      aggregator.restore(statesOf(rows), streamTime)
    expect(restore([valid()], 22)).toThrow(
      'cannot restore: row 0 (key "a"): window [10, 20) had already closed at streamTime 22 ' +
        '(end <= streamTime - graceMs = 20); a changelog never holds closed windows',
    )
    expect(restore([valid(), { ...valid(), key: 'b', count: 0 }], 20)).toThrow(
      'cannot restore: row 1 (key "b"): count must be an integer in [1, 2^53) (got 0)',
    )
    aggregator.free()
  })

  it('needs a fresh aggregator', () => {
    const withWindows = new PartitionAggregator(geometry)
    withWindows.restore(statesOf([valid()]), 20)
    const again = () => withWindows.restore(statesOf([valid()]), 20)
    expect(again).toThrow('the aggregator must be fresh')
    expect(again).toThrow(expect.objectContaining({ code: 'InvalidArg' }))
    // Samples count even if none opened a window.
    const afterSamples = new PartitionAggregator(geometry)
    ingest(afterSamples, [{ key: 'a', ts: 5, value: Number.NaN, offset: 0 }])
    expect(() => afterSamples.restore(statesOf([]), 20)).toThrow('has ingested 1 samples')
    withWindows.free()
    afterSamples.free()
    expect(() => withWindows.restore(statesOf([]), 20)).toThrow('aggregator has been freed')
    expect(() => withWindows.snapshot()).toThrow('aggregator has been freed')
  })

  it('takes Float64Array columns only', () => {
    const aggregator = new PartitionAggregator(geometry)
    const asArray = { ...statesOf([valid()]), count: [2] } as unknown as WindowStates
    expect(() => aggregator.restore(asArray, 20)).toThrow()
    const missing = { ...statesOf([valid()]) } as Partial<WindowStates>
    delete missing.firstOffset
    expect(() => aggregator.restore(missing as WindowStates, 20)).toThrow('firstOffset')
    expect(aggregator.stats.openWindows).toBe(0)
    aggregator.free()
  })
})

// ---------------------------------------------------------------------------------------------
// Precision, stats, lifecycle and errors
// ---------------------------------------------------------------------------------------------

/** Samples at one timestamp, so they all land in the same windows. */
const at = (ts: number, values: readonly number[]): RefSample[] =>
  values.map((value, i) => ({ key: 'k', ts, value, offset: i }))

describe('compensated summation', () => {
  const cases: number[][] = [
    [1e16, 1, -1e16],
    [1e16, 1, -1e16, 1, 1e16, 1, -1e16, 1],
    [1, 1e100, 1, -1e100],
    [0.1, 0.2, 0.3, -0.6, 1e20, 3.5, -1e20],
    // Large values cancelling in groups of three, with small non-integers in between.
    Array.from({ length: 999 }, (_, i) =>
      i % 3 === 0 ? 1e16 * (1 + (i % 7)) : i % 3 === 1 ? 0.5 + i / 7 : -1e16 * (1 + ((i - 2) % 7)),
    ),
    Array.from({ length: 10_000 }, () => 0.1),
  ]

  it.each(cases.map((values, i) => ({ i, values })))(
    'case $i: the native sum is the exact sum, where naive summation is not',
    ({ values }) => {
      const naive = values.reduce((a, b) => a + b, 0)
      const exact = exactSum(values)
      expect(naive).not.toBe(exact) // the data is meaningful
      for (const advanceMs of [10, 5]) {
        const aggregator = new PartitionAggregator({ sizeMs: 10, advanceMs })
        ingest(aggregator, at(100, values))
        const out = ingest(aggregator, [{ key: 'k', ts: 1000, value: 0, offset: values.length }])
        const rows = rowsOf(out.closed)
        expect(rows.length).toBe(10 / advanceMs)
        for (const row of rows) {
          expect(row.sum).toBe(exact)
          expect(row.mean).toBe(exact / values.length)
          expect(row.count).toBe(values.length)
        }
        aggregator.free()
      }
    },
  )
})

describe('stats', () => {
  it('counts open windows, keys and totals as the reference does', () => {
    const config = { sizeMs: 100, advanceMs: 25, graceMs: 10 }
    const aggregator = new PartitionAggregator(config)
    const ref = new ReferenceAggregator(config)
    expect(aggregator.stats).toMatchObject({
      openWindows: 0,
      seriesKeys: 0,
      aggregatedTotal: 0,
      lateTotal: 0,
      rejectedTotal: 0,
      streamTime: null,
    })
    expect(aggregator.streamTime).toBeNull()
    expect(aggregator.lowWatermark).toBeNull()
    const rand = mulberry32(7)
    const totals = { aggregatedTotal: 0, lateTotal: 0, rejectedTotal: 0 }
    for (let b = 0; b < 50; b++) {
      const batch: RefSample[] = Array.from({ length: 40 }, (_, i) => ({
        key: rand() < 0.02 ? null : `k${Math.floor(rand() * 30)}`,
        ts: 10 * b + Math.floor(rand() * 200) - 100 + 100,
        value: rand() < 0.02 ? Number.NaN : rand(),
        offset: 40 * b + i,
      }))
      ingest(aggregator, batch)
      const want = ref.ingest(batch)
      totals.aggregatedTotal += want.aggregated
      totals.lateTotal += want.late
      totals.rejectedTotal += want.rejected
      expect(aggregator.stats).toMatchObject({
        ...totals,
        openWindows: ref.openCount,
        streamTime: ref.streamTime,
      })
    }
    expect(totals.lateTotal).toBeGreaterThan(0)
    expect(totals.rejectedTotal).toBeGreaterThan(0)
    expect(aggregator.stats.seriesKeys).toBeGreaterThan(0)
    expect(aggregator.stats.seriesKeys).toBeLessThanOrEqual(30)
    aggregator.free()
  })

  it('an empty batch changes nothing', () => {
    const aggregator = new PartitionAggregator({ sizeMs: 10 })
    ingest(aggregator, at(5, [1]))
    const before = aggregator.stats
    const out = ingest(aggregator, [])
    expect(out.aggregated + out.late + out.rejected).toBe(0)
    expect(out.closed.seriesKeys).toEqual([])
    expect(aggregator.stats).toEqual(before)
    aggregator.free()
  })
})

describe('lifecycle and errors', () => {
  const one = [{ key: 'k', ts: 5, value: 1, offset: 0 }]

  it('free() releases the state: later calls throw clearly, a second free is a no-op', () => {
    const aggregator = new PartitionAggregator({ sizeMs: 10 })
    ingest(aggregator, one)
    aggregator.free()
    expect(() => aggregator.free()).not.toThrow()
    expect(() => ingest(aggregator, one)).toThrow('aggregator has been freed')
    expect(() => aggregator.stats).toThrow('aggregator has been freed')
    expect(() => aggregator.streamTime).toThrow('aggregator has been freed')
    expect(() => aggregator.lowWatermark).toThrow('aggregator has been freed')
  })

  it('a batch with nothing to report gets a shared empty result; the binding builds the others', () => {
    const aggregator = new PartitionAggregator({ sizeMs: 10 })
    const [a, b] = aggregator.pinKeys(['a', 'b'])
    const batch = (ids: number[], ts: number[], first: number) =>
      aggregator.ingestIds(
        Uint32Array.from(ids),
        Float64Array.from(ts),
        Float64Array.from(ts, (t) => t / 2),
        Float64Array.from(ts, (_, i) => first + i),
      )
    const plain = batch([a!, b!, a!], [1, 2, 3], 0)
    expect(plain).toMatchObject({
      aggregated: 3,
      late: 0,
      rejected: 0,
      lateIndexes: new Uint32Array(0),
      rejectedIndexes: new Uint32Array(0),
      rejectedReasons: new Uint8Array(0),
      closed: { seriesKeys: [], count: new Float64Array(0), quantiles: new Float64Array(0) },
    })
    expect(plain.changes).toBeUndefined()
    expect(Object.isFrozen(plain.closed) && Object.isFrozen(plain.closed.seriesKeys)).toBe(true)
    // Closing windows (and a late sample) makes the binding build the result.
    const closing = batch([b!, a!], [25, 4], 3)
    expect(closing.late).toBe(1)
    expect(closing.lateIndexes).toEqual(Uint32Array.from([1]))
    expect(closing.closed.seriesKeys).toEqual(['a', 'b'])
    expect(Array.from(closing.closed.count)).toEqual([2, 1])
    expect(Array.from(closing.closed.sum)).toEqual([2, 1])
    // Nothing is left to take once ingestIds has returned it.
    expect(() => aggregator.takeResult()).toThrow('no result to take')
    aggregator.free()
  })

  it('columns of unequal length throw InvalidArg', () => {
    const aggregator = new PartitionAggregator({ sizeMs: 10 })
    const f = (n: number) => new Float64Array(n)
    const calls = [
      () => aggregator.ingest(['k'], new Uint32Array(2), f(1), f(1), f(1)),
      () => aggregator.ingest(['k'], new Uint32Array(1), f(2), f(1), f(1)),
      () => aggregator.ingest(['k'], new Uint32Array(1), f(1), f(0), f(1)),
      () => aggregator.ingest(['k'], new Uint32Array(1), f(1), f(1), f(3)),
    ]
    for (const call of calls) {
      expect(call).toThrow(/equal length/)
      expect(call).toThrow(expect.objectContaining({ code: 'InvalidArg' }))
    }
    // The failed calls changed nothing.
    expect(aggregator.stats).toMatchObject({ aggregatedTotal: 0, streamTime: null })
    aggregator.free()
  })

  it('offsets must be whole numbers in [0, 2^53)', () => {
    const aggregator = new PartitionAggregator({ sizeMs: 10 })
    for (const offset of [-1, 0.5, Number.NaN, 2 ** 53]) {
      const call = () => ingest(aggregator, [{ key: 'k', ts: 5, value: 1, offset }])
      expect(call).toThrow(/offsets/)
      expect(call).toThrow(expect.objectContaining({ code: 'InvalidArg' }))
    }
    aggregator.free()
  })

  const badConfigs: { config: Record<string, number>; field: string }[] = [
    ...[0, -5, 1.5, Number.NaN, Infinity, 2 ** 53].map((sizeMs) => ({
      config: { sizeMs },
      field: 'sizeMs',
    })),
    ...[0, -1, 2.5, Number.NaN, 20, 3].map((advanceMs) => ({
      config: { sizeMs: 10, advanceMs },
      field: 'advanceMs',
    })),
    ...[-1, 0.5, Number.NaN, Infinity].map((graceMs) => ({
      config: { sizeMs: 10, graceMs },
      field: 'graceMs',
    })),
    ...[-1, 0.5, Number.NaN, 2 ** 53].map((streamTime) => ({
      config: { sizeMs: 10, streamTime },
      field: 'streamTime',
    })),
  ]

  it.each(badConfigs)('config $config throws InvalidArg naming $field', ({ config, field }) => {
    const make = () => new PartitionAggregator(config as { sizeMs: number })
    expect(make).toThrow(field)
    expect(make).toThrow(expect.objectContaining({ code: 'InvalidArg' }))
  })

  const badLimits: { config: Record<string, number>; field: string }[] = [
    ...[-1, 0.5, Number.NaN, -Infinity, 2 ** 53].map((minEventTimeMs) => ({
      config: { sizeMs: 10, minEventTimeMs },
      field: 'minEventTimeMs',
    })),
    ...[0, -1, 1.5, Number.NaN, Infinity].map((maxKeyBytes) => ({
      config: { sizeMs: 10, maxKeyBytes },
      field: 'maxKeyBytes',
    })),
    ...[0, -1, 1.5, Number.NaN, Infinity, 2 ** 53].map((maxOpenWindows) => ({
      config: { sizeMs: 10, maxOpenWindows },
      field: 'maxOpenWindows',
    })),
    // A hopping sample may need sizeMs / advanceMs = 4 new windows.
    { config: { sizeMs: 60, advanceMs: 15, maxOpenWindows: 3 }, field: 'maxOpenWindows' },
  ]

  it.each(badLimits)(
    'limit $config throws InvalidArg naming $field (and the reference refuses it)',
    ({ config, field }) => {
      const make = () => new PartitionAggregator(config as { sizeMs: number })
      expect(make).toThrow(field)
      expect(make).toThrow(expect.objectContaining({ code: 'InvalidArg' }))
      expect(() => new ReferenceAggregator(config as { sizeMs: number })).toThrow(field)
    },
  )

  it('limits accept their documented values', () => {
    const valid = [
      { sizeMs: 60, advanceMs: 15, maxOpenWindows: 4, minEventTimeMs: 0, maxKeyBytes: 1 },
      { sizeMs: 60, maxOpenWindows: null, minEventTimeMs: YEAR_2000, maxKeyBytes: 2 ** 53 - 1 },
      { sizeMs: 60, maxOpenWindows: undefined, minEventTimeMs: undefined, maxKeyBytes: undefined },
    ]
    for (const config of valid) {
      const aggregator = new PartitionAggregator(config)
      expect(() => new ReferenceAggregator(config)).not.toThrow()
      aggregator.free()
    }
    const message = () => new PartitionAggregator({ sizeMs: 60, advanceMs: 15, maxOpenWindows: 3 })
    expect(message).toThrow(
      'invalid window config: maxOpenWindows (3) must be at least sizeMs / advanceMs (4), ' +
        'the windows one sample can open',
    )
  })

  it('a missing sizeMs is rejected', () => {
    const make = () => new PartitionAggregator({} as { sizeMs: number })
    expect(make).toThrow('sizeMs')
  })
})

describe('pinned keys', () => {
  it('ingestIds agrees with the TS reference, and unpinned ids are unknown keys', () => {
    const keys = Array.from({ length: 200 }, (_, i) => `host-${i}/cpu`)
    const native = new PartitionAggregator({ sizeMs: 1_000, advanceMs: 500, graceMs: 100 })
    const reference = new ReferenceAggregator({ sizeMs: 1_000, advanceMs: 500, graceMs: 100 })
    const ids = native.pinKeys(keys)
    const random = mulberry32(5)
    const closed: RefWindow[] = []
    const expected: RefWindow[] = []
    for (let batch = 0; batch < 40; batch++) {
      const n = 500
      const keyNumbers = Array.from({ length: n }, () => Math.floor(random() * keys.length))
      const timestamps = Float64Array.from({ length: n }, (_, i) =>
        Math.max(0, batch * 100 + Math.floor(i / 5) - Math.floor(random() * 150)),
      )
      const values = Float64Array.from({ length: n }, () => Math.round(random() * 1e4) / 100)
      const offsets = new Float64Array(n).fill(batch)
      const got = native.ingestIds(
        Uint32Array.from(keyNumbers, (k) => ids[k] as number),
        timestamps,
        values,
        offsets,
      )
      const samples: RefSample[] = keyNumbers.map((k, i) => ({
        key: keys[k] as string,
        ts: timestamps[i] as number,
        value: values[i] as number,
        offset: batch,
      }))
      const want = reference.ingest(samples)
      expect(got.aggregated).toBe(want.aggregated)
      expect(Array.from(got.lateIndexes)).toEqual(want.lateIdx)
      closed.push(...rowsOf(got.closed))
      expected.push(...want.closed)
    }
    expect(closed.length).toBeGreaterThan(100)
    expect(closedProblems(closed, expected, false)).toEqual([])
    native.unpinKeys(ids)
    const out = native.ingestIds(
      ids.subarray(0, 1),
      new Float64Array([1e6]),
      new Float64Array([1]),
      new Float64Array([0]),
    )
    expect(Array.from(out.rejectedReasons)).toEqual([3])
    expect(() => native.unpinKeys(ids.subarray(0, 1))).toThrow(/pinned 0 times/)
    expect(() => native.pinKeys([''])).toThrow(/keys\[0\] cannot be pinned/)
    native.free()
  })
})
