/**
 * Records encoded natively (consumer/results.ts and ChangelogRecords → native/src/records.rs)
 * against the JS path they replace: for results avsc values (encodeClosedWindows), keys as UTF-8,
 * partitions by kafkajs' DefaultPartitioner; for the changelog windowRecords. Records are read back
 * with kafkajs' own decoders, also through the patched produce request.
 */
import { createRequire } from 'node:module'
import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { ChangelogRecords, positionRecord, windowRecords } from '../consumer/changelog'
import type { ClosedWindows, WindowStates } from '../consumer/native'
import { encodeClosedWindows } from '../consumer/pipeline'
import { isGroupMessage, recordCount, type RecordGroup } from '../consumer/encoded-records'
import { ResultRecords } from '../consumer/results'
import { crc32c, produceRoundTrip } from './helpers/kafkajs-internals'
import { decodeRuns, readBack } from './helpers/records'

const require = createRequire(__filename)
const murmur2 = require('kafkajs/src/producer/partitioners/default/murmur2.js') as (
  key: string | Buffer,
) => number
const groupMessagesPerPartition =
  require('kafkajs/src/producer/groupMessagesPerPartition.js') as (args: {
    topic: string
    partitionMetadata: unknown[]
    messages: unknown[]
    partitioner: () => number
  }) => Record<string, unknown[]>
const partitionOf = (key: string, partitions: number) => (murmur2(key) & 0x7fffffff) % partitions

const asked = [0.5, 0.9, 0.99]

/** Closed windows as the aggregator reports them (any row order: encoding keeps it). */
const closedWindows = (withQuantiles: boolean) =>
  fc
    .array(
      fc.record({
        key: fc.oneof(fc.string({ maxLength: 40 }), fc.string({ unit: 'grapheme', maxLength: 8 })),
        start: fc.integer({ min: 0, max: 2 ** 42 }),
        size: fc.integer({ min: 1, max: 10 ** 9 }),
        count: fc.integer({ min: 1, max: 2 ** 40 }),
        values: fc.array(fc.double(), { minLength: 4, maxLength: 4 }),
        quantiles: fc.oneof(
          fc.array(fc.double({ noNaN: true }), { minLength: 3, maxLength: 3 }),
          fc.constant([1, Number.NaN, 2]),
        ),
      }),
      { maxLength: 40 },
    )
    .map((rows): ClosedWindows => ({
      seriesKeys: rows.map((r) => r.key),
      windowStart: Float64Array.from(rows, (r) => r.start),
      windowEnd: Float64Array.from(rows, (r) => r.start + r.size),
      count: Float64Array.from(rows, (r) => r.count),
      sum: Float64Array.from(rows, (r) => r.values[0] as number),
      mean: Float64Array.from(rows, (r) => r.values[1] as number),
      min: Float64Array.from(rows, (r) => r.values[2] as number),
      max: Float64Array.from(rows, (r) => r.values[3] as number),
      quantiles: withQuantiles
        ? Float64Array.from(rows.flatMap((r) => r.quantiles))
        : new Float64Array(0),
    }))

const parts = (withQuantiles: boolean) =>
  fc.array(closedWindows(withQuantiles), { minLength: 1, maxLength: 3 })

/** What kafkajs would publish from the JS path: per partition, key and value in row order. */
function jsPath(closed: ClosedWindows[], partitions: number, quantiles?: number[]) {
  const byPartition = new Map<number, { key: Buffer; value: Buffer }[]>()
  for (const c of closed) {
    for (const r of encodeClosedWindows(c, quantiles)) {
      const p = partitionOf(r.key, partitions)
      const list = byPartition.get(p) ?? []
      list.push({ key: Buffer.from(r.key), value: r.value })
      byPartition.set(p, list)
    }
  }
  return [...byPartition].sort(([a], [b]) => a - b)
}

describe('results encoded natively', () => {
  it.each([false, true])(
    'are the records the JS path would publish, on the same partitions (quantiles %s)',
    (withQuantiles) => {
      fc.assert(
        fc.property(parts(withQuantiles), fc.integer({ min: 1, max: 9 }), (closed, partitions) => {
          const quantiles = withQuantiles ? asked : undefined
          const results = new ResultRecords(quantiles, closed)
          const runs = results.encode(partitions)
          const got = new Map<number, { key: Buffer; value: Buffer }[]>()
          for (const r of decodeRuns(runs)) {
            const list = got.get(r.partition) ?? []
            expect(r.offset).toBe(list.length)
            expect(r.timestampDelta).toBe(0)
            expect(r.headers).toEqual({})
            list.push({ key: r.key as Buffer, value: r.value as Buffer })
            got.set(r.partition, list)
          }
          expect([...got]).toEqual(jsPath(closed, partitions, quantiles))
          expect(runs.map((r) => r.partition)).toEqual([...got.keys()])
          expect(recordCount(results.messages())).toBe(results.count)
          expect(results.count).toBe(closed.reduce((n, c) => n + c.seriesKeys.length, 0))
        }),
        { numRuns: 300 },
      )
    },
  )

  it('refuses columns of unequal lengths and a topic without partitions', () => {
    const [one] = fc.sample(
      closedWindows(false).filter((c) => c.seriesKeys.length > 0),
      1,
    )
    const c = one as ClosedWindows
    expect(() => new ResultRecords(undefined, [c]).encode(0)).toThrow(/at least one partition/)
    const short = { ...c, max: c.max.subarray(1) }
    expect(() => new ResultRecords(undefined, [short]).encode(3)).toThrow(/columns/)
  })

  it('split into pieces within the bound, in order, no two consecutive ones fitting together', () => {
    fc.assert(
      fc.property(parts(true), fc.integer({ min: 150, max: 4_000 }), (closed, maxBytes) => {
        const results = new ResultRecords(asked, closed)
        const pieces = results.split(maxBytes)
        const all = (r: RecordGroup<ClosedWindows>) => decodeRuns(r.encode(1)).map((d) => d.value)
        expect(pieces.flatMap(all)).toEqual(all(results))
        for (const [i, piece] of pieces.entries()) {
          expect(piece.count).toBeGreaterThan(0)
          if (piece.count > 1) expect(piece.bytes).toBeLessThanOrEqual(maxBytes)
          const next = pieces[i + 1]
          if (next !== undefined) expect(piece.bytes + next.bytes).toBeGreaterThan(maxBytes)
          // The bound holds the real record bytes.
          expect(piece.encode(1)[0]?.encodedRecords.length).toBeLessThanOrEqual(piece.bytes)
        }
      }),
      { numRuns: 200 },
    )
  })

  it('go through the patched kafkajs as one record batch per partition, with a valid CRC', async () => {
    const [closed] = fc.sample(parts(false), { seed: 42, numRuns: 1 })
    const results = new ResultRecords(undefined, closed)
    const [message] = results.messages()
    expect(message !== undefined && isGroupMessage(message)).toBe(true)
    const perPartition = groupMessagesPerPartition({
      topic: 'out',
      partitionMetadata: [{}, {}, {}, {}],
      messages: [message],
      partitioner: () => {
        throw new Error('a results message is not partitioned by kafkajs')
      },
    })
    const { transactionalId, batches } = await produceRoundTrip(
      'out',
      Object.entries(perPartition).map(([partition, messages]) => ({
        partition: Number(partition),
        firstSequence: 5,
        messages,
      })),
      'tx',
    )
    expect(transactionalId).toBe('tx')
    const want = jsPath(closed as ClosedWindows[], 4)
    expect(batches.map((b) => b.partition)).toEqual(want.map(([partition]) => partition))
    for (const [i, [, records]] of want.entries()) {
      const { raw, decoded } = batches[i] as (typeof batches)[number]
      expect(raw.readUInt32BE(17)).toBe(crc32c(raw.subarray(21)))
      expect(decoded.inTransaction).toBe(true)
      expect(decoded.firstSequence).toBe(5)
      expect(decoded.lastOffsetDelta).toBe(records.length - 1)
      expect(decoded.records.map((r) => ({ key: r.key, value: r.value }))).toEqual(records)
      expect(decoded.records.map((r) => r.offset)).toEqual(records.map((_, i) => String(i)))
    }
  })

  it('may not share a partition of a request with other messages', async () => {
    const closed: ClosedWindows = {
      seriesKeys: ['a'],
      windowStart: Float64Array.of(0),
      windowEnd: Float64Array.of(1),
      count: Float64Array.of(1),
      sum: Float64Array.of(1),
      mean: Float64Array.of(1),
      min: Float64Array.of(1),
      max: Float64Array.of(1),
      quantiles: new Float64Array(0),
    }
    const [run] = new ResultRecords(undefined, [closed]).encode(1)
    await expect(produceRoundTrip('out', [{ partition: 0, messages: [run, run] }])).rejects.toThrow(
      /cannot share a request/,
    )
  })
})

/** Open windows' states as the aggregator reports them, with sketches or without. */
const windowStates = fc
  .tuple(
    fc.array(
      fc.record({
        key: fc.oneof(fc.string({ maxLength: 30 }), fc.string({ unit: 'grapheme', maxLength: 6 })),
        start: fc.integer({ min: -(2 ** 45), max: 2 ** 45 }),
        values: fc.array(fc.double({ noNaN: true }), { minLength: 6, maxLength: 6 }),
        sketch: fc.uint8Array({ maxLength: 40 }),
      }),
      { maxLength: 30 },
    ),
    fc.boolean(),
  )
  .map(([rows, sketched]): WindowStates => {
    const column = (j: number) => Float64Array.from(rows, (r) => r.values[j] as number)
    const states: WindowStates = {
      seriesKeys: rows.map((r) => r.key),
      windowStart: Float64Array.from(rows, (r) => r.start),
      count: column(0),
      sum: column(1),
      compensation: column(2),
      min: column(3),
      max: column(4),
      firstOffset: column(5),
    }
    if (sketched) {
      let end = 0
      states.sketchEnds = Uint32Array.from(rows, (r) => (end += r.sketch.length))
      states.sketchBytes = Uint8Array.from(rows.flatMap((r) => [...r.sketch]))
    }
    return states
  })

const closedKeys = fc
  .array(fc.tuple(fc.string({ maxLength: 20 }), fc.integer({ min: 0, max: 2 ** 45 })), {
    maxLength: 20,
  })
  .map((rows) => ({
    seriesKeys: rows.map(([key]) => key),
    windowStart: Float64Array.from(rows, ([, start]) => start),
  }))

describe('changelog records encoded natively', () => {
  it('are the records windowRecords builds, in the input partition, and split in order', () => {
    fc.assert(
      fc.property(
        fc.option(windowStates, { nil: null }),
        fc.array(closedKeys, { maxLength: 2 }),
        fc.integer({ min: 0, max: 63 }),
        fc.integer({ min: 100, max: 3_000 }),
        (changes, closed, partition, maxBytes) => {
          const group = new ChangelogRecords(partition, changes, closed)
          const runs = group.encode()
          const want = windowRecords(changes, closed, partition)
          expect(group.count).toBe(want.length)
          const got = decodeRuns(runs)
          expect(got.map((r) => r.partition)).toEqual(want.map(() => partition))
          expect(got.map((r) => r.offset)).toEqual(want.map((_, i) => i))
          expect(got.map(({ key, value }) => ({ key, value }))).toEqual(
            want.map(({ key, value }) => ({ key, value })),
          )
          const pieces = group.split(maxBytes)
          expect(pieces.flatMap(readBack)).toEqual(readBack(group))
          for (const [i, piece] of pieces.entries()) {
            expect(decodeRuns(piece.encode(1)).length).toBe(piece.count)
            if (piece.count > 1) expect(piece.bytes).toBeLessThanOrEqual(maxBytes)
            const next = pieces[i + 1]
            if (next !== undefined) expect(piece.bytes + next.bytes).toBeGreaterThan(maxBytes)
            const [run] = piece.encode(1)
            expect(run?.encodedRecords.length).toBeLessThanOrEqual(piece.bytes)
          }
        },
      ),
      { numRuns: 300 },
    )
  })

  it('are followed by the position record in one record batch, offsets running on', async () => {
    const [changes] = fc.sample(
      windowStates.filter((s) => s.seriesKeys.length > 0),
      { seed: 7, numRuns: 1 },
    )
    const group = new ChangelogRecords(2, changes)
    const position = positionRecord(1_000, 2, 42, null)
    const [run] = group.encode()
    const { batches } = await produceRoundTrip('changelog', [
      { partition: 2, messages: [run, position] },
    ])
    expect(batches.map((b) => b.partition)).toEqual([2])
    const { raw, decoded } = batches[0] as (typeof batches)[number]
    expect(raw.readUInt32BE(17)).toBe(crc32c(raw.subarray(21)))
    const want = [...windowRecords(changes as WindowStates, null, 2), position]
    expect(decoded.lastOffsetDelta).toBe(want.length - 1)
    expect(decoded.records.map((r) => ({ key: r.key, value: r.value }))).toEqual(
      want.map(({ key, value }) => ({ key, value })),
    )
    expect(decoded.records.map((r) => r.offset)).toEqual(want.map((_, i) => String(i)))
  })
})
