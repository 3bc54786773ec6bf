import avro from 'avsc'
import fc from 'fast-check'
import type { KafkaMessage } from 'kafkajs'
import { readFileSync } from 'node:fs'
import pino from 'pino'
import { describe, expect, it } from 'vitest'
import { ChangelogState, positionRecord } from '../consumer/changelog'
import {
  decodeWindowAggregate,
  encodeWindowAggregate,
  windowAggregateQuantilesType,
  windowAggregateType,
  type WindowAggregate,
} from '../consumer/codec'
import { schemaPath } from '../consumer/paths'
import { PartitionPipeline, type BatchOutcome } from '../consumer/pipeline'
import { encodeTelemetryBatch, type Sample } from '../consumer/schemas'
import { formatAggregate } from '../consumer/tail'
import { mulberry32 } from './reference'
import { outputRecords, readBack } from './helpers/records'

/**
 * Per-window quantiles (--quantiles) end to end through the pipeline: estimates against exact
 * quantiles computed here from the input, across hopping windows, a changelog restore, and the
 * output codec.
 */

const window = { sizeMs: 10_000, advanceMs: 5_000, graceMs: 1_000 }
const quantiles = [0, 0.01, 0.25, 0.5, 0.9, 0.99, 0.999, 1]
const t0 = Date.UTC(2024, 0, 1)
const silent = pino({ level: 'silent' })
const kinds = ['uniform', 'lognormal', 'bimodal', 'constant', 'mixed-signs', 'single'] as const
type Kind = (typeof kinds)[number]

/** One series' samples over one tumbling stretch of event time, from a distribution. */
function seriesSamples(kind: Kind, n: number, rand: () => number, key: string, from: number) {
  const normal = () => Math.sqrt(-2 * Math.log(1 - rand())) * Math.cos(2 * Math.PI * rand())
  const value = (): number => {
    switch (kind) {
      case 'uniform':
        return 100 * rand()
      case 'lognormal': // heavy tail: about four decades
        return Math.exp(3 + 1.5 * normal())
      case 'bimodal':
        return rand() < 0.7 ? 5 + normal() : 5_000 + 100 * normal()
      case 'constant':
        return 42.5
      case 'mixed-signs':
        return rand() < 0.1 ? 0 : 1_000 * normal()
      case 'single':
        return -3.25
    }
  }
  const count = kind === 'single' ? 1 : n
  return Array.from({ length: count }, () => ({
    seriesKey: key,
    eventTime: from + Math.floor(rand() * 20_000),
    value: value(),
  }))
}

const positionValue = (streamTime: number, nextOffset: number): Buffer =>
  positionRecord(streamTime, 0, nextOffset, null).value as Buffer

const message = (offset: number, samples: Sample[]): KafkaMessage => ({
  offset: String(offset),
  value: encodeTelemetryBatch({ sourceId: 'quantiles-test', samples }),
  key: null,
  timestamp: String(t0),
  headers: {},
  attributes: 0,
})

/** The exact values of every (series, window start), by the window rules, for in-order input. */
function exactWindows(samples: readonly Sample[]): Map<string, number[]> {
  const windows = new Map<string, number[]>()
  for (const s of samples) {
    const newest = s.eventTime - (s.eventTime % window.advanceMs)
    for (let start = newest; start > s.eventTime - window.sizeMs; start -= window.advanceMs) {
      const id = `${s.seriesKey}@${start}`
      const values = windows.get(id) ?? []
      values.push(s.value)
      windows.set(id, values)
    }
  }
  return windows
}

/** Each estimate against the value of rank floor(q (n - 1)), within the relative accuracy. */
function checkAccuracy(
  results: readonly WindowAggregate[],
  exact: Map<string, number[]>,
  accuracy: number,
) {
  for (const w of results) {
    const values = exact.get(`${w.seriesKey}@${w.windowStart}`)
    expect(values, `${w.seriesKey}@${w.windowStart}`).toBeDefined()
    const sorted = Float64Array.from(values ?? []).sort()
    expect(w.count).toBe(sorted.length)
    expect(w.quantiles?.map((q) => q.q)).toEqual(quantiles)
    for (const { q, value } of w.quantiles ?? []) {
      const truth = sorted[Math.floor(q * (sorted.length - 1))] as number
      const error = Math.abs(value - truth)
      const bound = accuracy * Math.abs(truth) * (1 + 1e-12)
      if (error > bound) {
        throw new Error(
          `${w.seriesKey}@${w.windowStart} q=${q}: estimate ${value}, exact ${truth} ` +
            `(n=${sorted.length}, relative error ${error / Math.abs(truth)} > ${accuracy})`,
        )
      }
    }
  }
}

const results = (outcomes: readonly (BatchOutcome | undefined)[]): WindowAggregate[] =>
  outcomes.flatMap((o) =>
    o === undefined ? [] : outputRecords(o.results).map((r) => decodeWindowAggregate(r.value)),
  )

const pipelineWith = (
  accuracy: number,
  start: ConstructorParameters<typeof PartitionPipeline>[3],
) =>
  new PartitionPipeline(
    'telemetry',
    0,
    { window, quantiles: { quantiles, accuracy } },
    start,
    silent,
  )

/** Restores a pipeline from a changelog snapshot of `source`, as a new owner would. */
function restoredCopy(source: PartitionPipeline, accuracy: number, nextOffset: number) {
  const log = new ChangelogState()
  const { windows, position } = source.takeChangelog(true)
  for (const r of [...readBack(windows), position(null)]) log.fold(r.key, r.value)
  return pipelineWith(accuracy, {
    restored: log.toRestoredState(window),
    resumeAt: String(nextOffset),
  })
}

describe('--quantiles', () => {
  it('every quantile of every window is within the relative accuracy, across a restore', () => {
    fc.assert(
      fc.property(
        fc.record({
          seed: fc.integer(),
          accuracy: fc.constantFrom(0.005, 0.01, 0.05),
          series: fc.array(
            fc.record({ kind: fc.constantFrom(...kinds), n: fc.integer({ min: 1, max: 400 }) }),
            { minLength: 1, maxLength: 6 },
          ),
          cut: fc.double({ min: 0, max: 1, noNaN: true }),
        }),
        ({ seed, accuracy, series, cut }) => {
          const rand = mulberry32(seed)
          // Series over three stretches of event time; samples in event-time order (none late).
          const samples = series
            .flatMap(({ kind, n }, i) =>
              [0, 1, 2].flatMap((stretch) =>
                seriesSamples(kind, n, rand, `${kind}-${i}`, t0 + stretch * 20_000),
              ),
            )
            .sort((a, b) => a.eventTime - b.eventTime)
          const messages: KafkaMessage[] = []
          for (let i = 0; i < samples.length; i += 64)
            messages.push(message(messages.length, samples.slice(i, i + 64)))
          const exact = exactWindows(samples)
          const at = Math.floor(cut * messages.length)

          const original = pipelineWith(accuracy, { checkpoint: null })
          let copy: PartitionPipeline | undefined
          try {
            const before = messages.slice(0, at).map((m) => original.process([m]))
            copy = restoredCopy(original, accuracy, at)
            const after = messages.slice(at).map((m) => original.process([m]))
            const afterCopy = messages.slice(at).map((m) => copy?.process([m]))
            const end = t0 + 200_000
            after.push(original.advanceIdle(end) as BatchOutcome)
            afterCopy.push(copy.advanceIdle(end))
            // The restored pipeline publishes the same bytes: the sketches came back exactly.
            const bytes = (o: BatchOutcome | undefined) => o && outputRecords(o.results)
            expect(afterCopy.map(bytes)).toEqual(after.map(bytes))
            const all = results([...before, ...after])
            expect(all.length).toBe(exact.size)
            checkAccuracy(all, exact, accuracy)
          } finally {
            original.free()
            copy?.free()
          }
        },
      ),
      { numRuns: 60 },
    )
  })

  it('a window restored from a changelog written without quantiles publishes none', () => {
    const plain = new PartitionPipeline('telemetry', 0, { window }, { checkpoint: null }, silent)
    const sketched = pipelineWith(0.01, { checkpoint: null })
    try {
      plain.process([message(0, [{ seriesKey: 'a', eventTime: t0 + 1, value: 1 }])])
      // Written by a replica without --quantiles: version 1 window records, no sketch.
      const { windows, position } = plain.takeChangelog(true)
      const log = new ChangelogState()
      for (const r of [...readBack(windows), position(null)]) log.fold(r.key, r.value)
      const restored = pipelineWith(0.01, { restored: log.toRestoredState(window), resumeAt: '1' })
      try {
        const out = results([
          restored.process([message(1, [{ seriesKey: 'a', eventTime: t0 + 7_000, value: 2 }])]),
          restored.advanceIdle(t0 + 100_000),
        ])
        // [t0-5s, t0+5s) and [t0, t0+10s) hold the sample from before: no quantiles;
        // [t0+5s, t0+15s) only the new one.
        expect(out.map((w) => [w.windowStart - t0, w.count, w.quantiles?.length])).toEqual([
          [-5_000, 1, 0],
          [0, 2, 0],
          [5_000, 1, quantiles.length],
        ])
      } finally {
        restored.free()
      }
      // A sketched state's records are version 2 and read back bit for bit.
      sketched.process([message(0, [{ seriesKey: 'a', eventTime: t0 + 1, value: 1 }])])
      const sketchedRecords = readBack(sketched.takeChangelog(true).windows)
      expect(sketchedRecords.map((r) => r.value?.[0])).toEqual([2, 2])
      expect(readBack(windows).map((r) => r.value?.[0])).toEqual([1, 1])
      const back = new ChangelogState()
      for (const r of sketchedRecords) back.fold(r.key, r.value)
      back.fold(Buffer.from('T'), positionValue(t0 + 1, 1))
      const state = back.toRestoredState(window).states
      expect(state.sketchEnds?.length).toBe(2)
      // The sketch bytes are the records' tails, in order.
      const tails = sketchedRecords.map((r) => r.value?.subarray(49) ?? Buffer.alloc(0))
      expect(Buffer.from(state.sketchBytes ?? []).equals(Buffer.concat(tails))).toBe(true)
    } finally {
      plain.free()
      sketched.free()
    }
  })
})

/** One output record without quantiles. */
const aggregate: WindowAggregate = {
  seriesKey: 'host-1/cpu',
  windowStart: t0,
  windowEnd: t0 + 10_000,
  count: 3,
  sum: 6,
  mean: 2,
  min: 1,
  max: 3,
}

describe('output contract with --quantiles', () => {
  const withQuantiles: WindowAggregate = {
    ...aggregate,
    quantiles: [
      { q: 0.5, value: 2 },
      { q: 0.99, value: 3 },
    ],
  }

  it('without --quantiles the output bytes are exactly those of window-aggregate.avsc', () => {
    const bytes = encodeWindowAggregate(aggregate)
    expect(bytes.equals(windowAggregateType.toBuffer(aggregate))).toBe(true)
    expect(decodeWindowAggregate(bytes)).toEqual(aggregate)
  })

  it('is an evolution readers resolve both ways, and the decoder tells the writer by the bytes', () => {
    const v2 = encodeWindowAggregate(withQuantiles)
    const v1 = encodeWindowAggregate(aggregate)
    expect(decodeWindowAggregate(v2)).toEqual(withQuantiles)
    // An old reader (window-aggregate.avsc) reads the new records: the new field is skipped.
    const oldReader = windowAggregateType.createResolver(windowAggregateQuantilesType)
    expect(windowAggregateType.fromBuffer(v2, oldReader)).toEqual(aggregate)
    // A new reader reads the old records: quantiles take the default, [].
    const newReader = windowAggregateQuantilesType.createResolver(windowAggregateType)
    expect(windowAggregateQuantilesType.fromBuffer(v1, newReader)).toEqual({
      ...aggregate,
      quantiles: [],
    })
    // Confluent framing works the same way.
    const framed = encodeWindowAggregate(withQuantiles, { wireFormat: 'confluent', schemaId: 7 })
    expect(decodeWindowAggregate(framed)).toEqual(withQuantiles)
    // Truncated or trailing bytes are still refused.
    expect(() => decodeWindowAggregate(v2.subarray(0, v2.length - 1))).toThrow(/not a valid/)
    expect(() => decodeWindowAggregate(Buffer.concat([v2, Buffer.from([0])]))).toThrow(
      /not a valid/,
    )
  })

  it('the schema files are a compatible evolution (new field last, with a default)', () => {
    const file = (name: string) =>
      JSON.parse(readFileSync(schemaPath(name), 'utf8')) as avro.schema.RecordType
    const v1 = file('window-aggregate.avsc')
    const v2 = file('window-aggregate-quantiles.avsc')
    expect(v2.name).toBe(v1.name)
    expect(v2.fields.slice(0, -1)).toEqual(v1.fields)
    const added = v2.fields.at(-1) as { name: string; default?: unknown }
    expect(added.name).toBe('quantiles')
    expect(added.default).toEqual([])
    expect(v2.namespace).toBe(v1.namespace)
  })
})

describe('kwa tail', () => {
  it('prints the quantiles of a window that has them', () => {
    const base = aggregate
    const line = formatAggregate(
      {
        ...base,
        quantiles: [
          { q: 0.5, value: 2 },
          { q: 0.999, value: 2.9876 },
        ],
      },
      'text',
    )
    expect(line).toMatch(/n=3 mean=2\.000 min=1\.000 max=3\.000 p50=2\.000 p99\.9=2\.988$/)
    expect(formatAggregate(base, 'text')).toMatch(/max=3\.000$/)
  })
})
