import avro from 'avsc'
import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { telemetryBatchSchema, type TelemetryBatch } from '../consumer/codec'
import { LocalSchemaRegistry, TelemetryDecoder, type DecodeResult } from '../consumer/decode'
import { PartitionAggregator } from '../consumer/native'
import type { Sample } from '../consumer/schemas'

/**
 * Differential test of the native decoder (Rust, `ingestAvro`) against avsc, the reference:
 * on random batches written with the current schema and with evolved writer schemas, and on
 * mutated bytes, both accept the same messages, with the same source id and the same samples
 * bit for bit, and refuse the others with the same kind.
 */

const NS = 'io.kwa.telemetry.v1'
const MAX_SAMPLES = 40

/** Sample fields in another order, promoted types, and extra fields of most Avro types. */
const evolved = (value: string, eventTime: avro.Schema, seriesKey: string): avro.Schema => ({
  type: 'record',
  name: 'TelemetryBatch',
  namespace: NS,
  fields: [
    {
      name: 'chain',
      type: [
        'null',
        { type: 'record', name: 'Link', fields: [{ name: 'next', type: ['null', 'Link'] }] },
      ],
    },
    {
      name: 'samples',
      type: {
        type: 'array',
        items: {
          type: 'record',
          name: 'Sample',
          fields: [
            { name: 'unit', type: ['null', 'string'], default: null },
            { name: 'value', type: value },
            { name: 'tags', type: { type: 'map', values: 'long' } },
            { name: 'seriesKey', type: seriesKey },
            { name: 'q', type: { type: 'enum', name: 'Q', symbols: ['A', 'B', 'C'] } },
            { name: 'eventTime', type: eventTime },
            { name: 'ok', type: 'boolean' },
          ],
        },
      },
    },
    { name: 'crc', type: { type: 'fixed', name: 'Crc', size: 4 } },
    { name: 'sourceId', type: seriesKey },
    { name: 'blob', type: 'bytes' },
  ],
})

const writers: [number, avro.Schema][] = [
  [1, telemetryBatchSchema],
  [2, evolved('float', 'int', 'string')],
  [3, evolved('long', { type: 'long', logicalType: 'timestamp-micros' }, 'bytes')],
  [4, evolved('int', 'long', 'string')],
  [5, evolved('double', 'long', 'bytes')],
]
const registry = new LocalSchemaRegistry(writers)
const writerTypes = new Map(writers.map(([id, s]) => [id, avro.Type.forSchema(s)]))

const options = {
  wireFormat: 'confluent',
  schemas: registry,
  maxSamplesPerBatch: MAX_SAMPLES,
} as const
const reference = new TelemetryDecoder({ ...options, engine: 'avsc' })
const native = new TelemetryDecoder({ ...options, engine: 'native' })

type Outcome = { ok: true; sourceId: string; samples: Sample[] } | { ok: false; kind: string }

const referenceOutcome = (r: DecodeResult): Outcome =>
  r.ok
    ? { ok: true, sourceId: r.batch.sourceId, samples: r.batch.samples }
    : { ok: false, kind: r.failure.kind }

/**
 * Decodes natively through ingestAvro. With maxEventTime -1 every sample is rejected (invalid
 * ones for their own reason, valid ones as from the future), so `rejectedSamples` holds every
 * decoded sample in order: the decoder's output, observed without changing the API.
 */
function nativeOutcomes(values: Buffer[]): Outcome[] {
  const aggregator = new PartitionAggregator({ sizeMs: 1_000 })
  try {
    const outcomes: (Outcome | undefined)[] = values.map(() => undefined)
    const located: { index: number; value: Buffer; body: number; root: number }[] = []
    values.forEach((value, index) => {
      const where = native.locate(value)
      if (where.ok) located.push({ index, value, body: where.body, root: where.root })
      else outcomes[index] = { ok: false, kind: where.failure.kind }
    })
    const bounds = new Uint32Array(located.length + 1)
    located.forEach((m, i) => (bounds[i + 1] = (bounds[i] as number) + m.value.length))
    const out = aggregator.ingestAvro(
      native.program.words,
      Buffer.concat(located.map((m) => m.value)),
      bounds,
      Uint32Array.from(located, (m) => m.body),
      Uint32Array.from(located, (m) => m.root),
      Float64Array.from(located, (_, i) => i),
      MAX_SAMPLES,
      -1,
    )
    expect(out.result.rejected).toBe(out.rejectedSamples.seriesKeys.length)
    expect(out.result.aggregated + out.result.late).toBe(0)
    const failed = new Map(Array.from(out.failedMessages, (m, n) => [m, out.failureKinds[n]]))
    let next = 0
    located.forEach((m, i) => {
      const count = out.samplesPerMessage[i] as number
      const kind = failed.get(i)
      if (kind !== undefined) {
        outcomes[m.index] = { ok: false, kind }
        return
      }
      const samples: Sample[] = []
      for (let j = next; j < next + count; j++) {
        samples.push({
          seriesKey: out.rejectedSamples.seriesKeys[j] as string,
          eventTime: out.rejectedSamples.eventTimes[j] as number,
          value: out.rejectedSamples.values[j] as number,
        })
      }
      next += count
      outcomes[m.index] = { ok: true, sourceId: out.sourceIds[i] as string, samples }
    })
    return outcomes as Outcome[]
  } finally {
    aggregator.free()
  }
}

async function expectAgreement(values: Buffer[]): Promise<void> {
  await reference.prepare(values)
  await native.prepare(values)
  const want = values.map((v) => referenceOutcome(reference.decode(v)))
  const got = nativeOutcomes(values)
  for (let i = 0; i < values.length; i++) {
    const [w, g] = [want[i] as Outcome, got[i] as Outcome]
    expect(g.ok, `message ${i}: ${JSON.stringify(w).slice(0, 200)}`).toBe(w.ok)
    if (!w.ok || !g.ok) {
      expect(g).toEqual(w)
      continue
    }
    expect(g.sourceId).toBe(w.sourceId)
    expect(g.samples.length).toBe(w.samples.length)
    g.samples.forEach((s, j) => {
      const r = w.samples[j] as Sample
      expect(s.seriesKey).toBe(r.seriesKey)
      // Object.is: NaN equals NaN, 0 differs from -0.
      expect(Object.is(s.eventTime, r.eventTime), `${s.eventTime} vs ${r.eventTime}`).toBe(true)
      expect(Object.is(s.value, r.value), `${s.value} vs ${r.value}`).toBe(true)
    })
  }
}

const frame = (id: number, body: Buffer): Buffer => {
  const header = Buffer.alloc(5)
  header.writeInt32BE(id, 1)
  return Buffer.concat([header, body])
}

const sampleArb = fc.record({
  seriesKey: fc.string({ unit: 'binary', maxLength: 12 }),
  eventTime: fc.oneof(
    fc.integer({ min: -(2 ** 31), max: 2 ** 31 - 1 }),
    fc.integer({ min: 1_600_000_000_000, max: 1_900_000_000_000 }),
  ),
  value: fc.oneof(fc.double(), fc.integer({ min: -(2 ** 31), max: 2 ** 31 - 1 }), fc.float()),
})
const batchArb: fc.Arbitrary<TelemetryBatch> = fc.record({
  sourceId: fc.string({ unit: 'binary', maxLength: 8 }),
  samples: fc.array(sampleArb, { maxLength: MAX_SAMPLES + 5, size: 'max' }),
})

/** The batch written with writer `id`: values coerced to the writer's types, extras filled. */
function encode(id: number, batch: TelemetryBatch): Buffer {
  const type = writerTypes.get(id) as avro.Type
  if (id === 1) return frame(id, type.toBuffer(batch))
  const fields = (type as avro.types.RecordType).fields
  const sampleType = ((fields[1] as avro.types.Field).type as avro.types.ArrayType)
    .itemsType as avro.types.RecordType
  const typeOf = (name: string) =>
    (sampleType.fields.find((f) => f.name === name) as avro.types.Field).type.typeName
  const valueType = typeOf('value')
  const timeType = typeOf('eventTime')
  const asValue = (v: number): number =>
    valueType === 'int'
      ? Math.trunc(v) | 0
      : valueType === 'long'
        ? Number.isSafeInteger(Math.trunc(v))
          ? Math.trunc(v)
          : 0
        : valueType === 'float'
          ? Math.fround(v)
          : v
  const asKey = (k: string) => (typeOf('seriesKey') === 'bytes' ? Buffer.from(k) : k)
  const record = {
    chain: { next: { next: null } },
    samples: batch.samples.map((s, i) => ({
      unit: i % 2 === 0 ? null : 'C',
      value: asValue(s.value),
      tags: i % 3 === 0 ? {} : { a: i, b: -i },
      seriesKey: asKey(s.seriesKey),
      q: ['A', 'B', 'C'][i % 3],
      eventTime: timeType === 'int' ? s.eventTime | 0 : s.eventTime,
      ok: i % 2 === 0,
    })),
    crc: Buffer.from([1, 2, 3, 4]),
    sourceId: asKey(batch.sourceId),
    blob: Buffer.from('xyz'),
  }
  return frame(id, type.toBuffer(record))
}

const ids = writers.map(([id]) => id)

/** Zig-zag varint bytes of a long. */
function zigzag(n: bigint): number[] {
  let z = n < 0n ? -2n * n - 1n : 2n * n
  const out: number[] = []
  do {
    const b = Number(z & 0x7fn)
    z >>= 7n
    out.push(z === 0n ? b : b | 0x80)
  } while (z !== 0n)
  return out
}

describe('native decoder agrees with avsc', () => {
  it('on valid batches of every writer schema', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.tuple(fc.constantFrom(...ids), batchArb), { minLength: 1, maxLength: 8 }),
        async (batches) => {
          await expectAgreement(batches.map(([id, b]) => encode(id, b)))
        },
      ),
      { numRuns: 300 },
    )
  })

  it('on mutated bytes (flipped, truncated, inserted, wrong framing)', async () => {
    const mutation = fc.oneof(
      fc.record({
        op: fc.constant('flip' as const),
        at: fc.nat(),
        byte: fc.integer({ min: 0, max: 255 }),
      }),
      fc.record({ op: fc.constant('truncate' as const), at: fc.nat(), byte: fc.constant(0) }),
      fc.record({
        op: fc.constant('insert' as const),
        at: fc.nat(),
        byte: fc.integer({ min: 0, max: 255 }),
      }),
    )
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom(...ids),
        batchArb,
        fc.array(mutation, { minLength: 1, maxLength: 4 }),
        async (id, batch, mutations) => {
          let bytes = encode(id, batch)
          for (const m of mutations) {
            // Mutate the Avro body only: framing failures are shared code, not the decoder.
            const at = 5 + (m.at % Math.max(1, bytes.length - 5))
            if (m.op === 'flip') {
              bytes = Buffer.from(bytes)
              bytes[Math.min(at, bytes.length - 1)] = m.byte
            } else if (m.op === 'truncate') bytes = bytes.subarray(0, at)
            else
              bytes = Buffer.concat([
                bytes.subarray(0, at),
                Buffer.from([m.byte]),
                bytes.subarray(at),
              ])
          }
          await expectAgreement([bytes, encode(1, batch)])
        },
      ),
      { numRuns: 1_000 },
    )
  })

  it('on hand-picked edge cases', async () => {
    const current = writerTypes.get(1) as avro.Type
    const cases = [
      // Longs beyond 2^53: avsc rounds with float arithmetic (value) or refuses (event time).
      encode(3, { sourceId: 's', samples: [{ seriesKey: 'k', eventTime: 5, value: 0 }] }),
      // Written by hand: avsc does not write longs it cannot hold exactly.
      frame(
        3,
        Buffer.from([
          ...[0, 4], // chain: null; 2 samples
          ...[0, ...zigzag(2n ** 60n + 513n), 0, 2, 0x6b, 0, 14, 1],
          ...[0, ...zigzag(-(2n ** 53n) - 3n), 0, 2, 0x6b, 0, 14, 1],
          ...[0, 1, 2, 3, 4, 2, 0x73, 0], // end of samples, crc, sourceId "s", blob
        ]),
      ),
      frame(
        1,
        current.toBuffer({
          sourceId: 'é',
          samples: [{ seriesKey: '😀', eventTime: 9007199254740990, value: -0 }],
        }),
      ),
      frame(
        1,
        Buffer.from([
          2, 0x41, 2, 2, 0x41, 0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, 0, 0, 0, 0, 0,
          0, 0, 0, 0,
        ]),
      ),
      // Bad UTF-8 in a series key; a negative block count with a byte size; an empty message body.
      frame(1, Buffer.from([2, 0x41, 2, 2, 0xc3, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0])),
      frame(1, Buffer.from([2, 0x41, 1, 24, 2, 0x41, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0])),
      frame(1, Buffer.alloc(0)),
    ]
    await expectAgreement(cases)
  })
})
