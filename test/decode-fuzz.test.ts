import avro from 'avsc'
import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { encodeTelemetryBatch, telemetryBatchSchema, type TelemetryBatch } from '../consumer/codec'
import {
  decodeFailureKinds,
  LocalSchemaRegistry,
  TelemetryDecoder,
  type DecodeResult,
  type WireFormat,
} from '../consumer/decode'

/**
 * Fuzzing `TelemetryDecoder.decode` with random and mutated bytes: it returns a batch or a
 * failure of a known kind, never throws, never hangs, and a batch only holds values of the
 * contract's types. Sizes are bounded so that the whole file runs in a few seconds.
 */

const NS = 'io.kwa.telemetry.v1'
const MAX_BYTES = 4096
const MAX_SAMPLES = 20

/** A newer writer: extra fields of most Avro types, on the batch and on each sample. */
const newerWriter: avro.Schema = {
  type: 'record',
  name: 'TelemetryBatch',
  namespace: NS,
  fields: [
    { name: 'sourceId', type: 'string' },
    {
      name: 'samples',
      type: {
        type: 'array',
        items: {
          type: 'record',
          name: 'Sample',
          fields: [
            { name: 'unit', type: ['null', 'string'], default: null },
            { name: 'value', type: 'float' },
            { name: 'seriesKey', type: 'string' },
            { name: 'eventTime', type: 'int' },
            { name: 'tags', type: { type: 'map', values: 'long' } },
            { name: 'q', type: { type: 'enum', name: 'Q', symbols: ['A', 'B', 'C'] } },
          ],
        },
      },
    },
    { name: 'flags', type: { type: 'array', items: 'boolean' } },
    { name: 'crc', type: { type: 'fixed', name: 'Crc', size: 4 } },
    { name: 'blob', type: 'bytes' },
    {
      name: 'chain',
      type: [
        'null',
        { type: 'record', name: 'Link', fields: [{ name: 'next', type: ['null', 'Link'] }] },
      ],
    },
  ],
}
const newerType = avro.Type.forSchema(newerWriter)
const incompatible: avro.Schema = {
  type: 'record',
  name: 'TelemetryBatch',
  namespace: NS,
  fields: [{ name: 'sourceId', type: 'long' }],
}

const registry = new LocalSchemaRegistry([
  [1, telemetryBatchSchema],
  [2, newerWriter],
  [3, incompatible],
])

const decoders = (['plain', 'confluent', 'auto'] as WireFormat[]).map(
  (wireFormat) =>
    new TelemetryDecoder({
      wireFormat,
      schemas: registry,
      maxMessageBytes: MAX_BYTES,
      maxSamplesPerBatch: MAX_SAMPLES,
    }),
)

const kinds = new Set<string>(decodeFailureKinds)

/** The decoder's contract for any input. */
function checkResult(result: DecodeResult): void {
  if (!result.ok) {
    expect(kinds.has(result.failure.kind), result.failure.kind).toBe(true)
    expect(typeof result.failure.message).toBe('string')
    expect(result.failure.message.length).toBeGreaterThan(0)
    return
  }
  const { batch } = result
  expect(typeof batch.sourceId).toBe('string')
  expect(Array.isArray(batch.samples)).toBe(true)
  expect(batch.samples.length).toBeLessThanOrEqual(MAX_SAMPLES)
  for (const sample of batch.samples) {
    expect(typeof sample.seriesKey).toBe('string')
    // A long read as a JS number: avsc refuses those that would lose precision.
    expect(Number.isSafeInteger(sample.eventTime)).toBe(true)
    // Any double, NaN and infinities included: the aggregator rejects those.
    expect(typeof sample.value).toBe('number')
  }
}

async function decodeAll(values: Buffer[]): Promise<DecodeResult[][]> {
  const results: DecodeResult[][] = []
  for (const decoder of decoders) {
    await decoder.prepare(values)
    results.push(values.map((value) => decoder.decode(value)))
  }
  return results
}

const frame = (id: number, body: Buffer): Buffer => {
  const header = Buffer.alloc(5)
  header.writeInt32BE(id, 1)
  return Buffer.concat([header, body])
}

const sampleArb = fc.record({
  seriesKey: fc.string({ unit: 'binary', maxLength: 12 }),
  eventTime: fc.integer({ min: -(2 ** 31), max: 2 ** 31 - 1 }),
  value: fc.double(),
})
const batchArb: fc.Arbitrary<TelemetryBatch> = fc.record({
  sourceId: fc.string({ unit: 'binary', maxLength: 8 }),
  samples: fc.array(sampleArb, { maxLength: 30, size: 'max' }),
})

/** Valid encodings: plain, framed with the current schema, framed with the newer writer. */
/** Strings as they come back from UTF-8 (a lone surrogate becomes U+FFFD). */
const utf8 = (s: string): string => Buffer.from(s).toString()

interface Encoded {
  bytes: Buffer
  /** Which decoders (plain, confluent, auto) can read it. */
  readableBy: [boolean, boolean, boolean]
  /** What they must read. */
  expected: TelemetryBatch
}

/** Valid encodings: plain, framed with the current schema, framed with the newer writer. */
const encodedArb: fc.Arbitrary<Encoded> = fc
  .tuple(batchArb, fc.constantFrom('plain', 'current', 'newer'))
  .map(([batch, how]) => {
    const expected = {
      sourceId: utf8(batch.sourceId),
      samples: batch.samples.map((s) => ({
        ...s,
        seriesKey: utf8(s.seriesKey),
        value: how === 'newer' ? Math.fround(s.value) : s.value,
      })),
    }
    if (how === 'plain') {
      const bytes = encodeTelemetryBatch(batch)
      // `auto` reads a plain batch with an empty sourceId as Confluent (documented).
      const auto = bytes[0] !== 0 || bytes.length < 5
      return { bytes, readableBy: [true, false, auto], expected }
    }
    if (how === 'current') {
      const bytes = encodeTelemetryBatch(batch, { wireFormat: 'confluent', schemaId: 1 })
      return { bytes, readableBy: [false, true, true], expected }
    }
    const newer = {
      ...batch,
      samples: batch.samples.map((s, i) => ({
        ...s,
        value: Math.fround(s.value),
        unit: i % 2 === 0 ? null : 'ms',
        tags: i % 3 === 0 ? {} : { a: i, b: -i },
        q: ['A', 'B', 'C'][i % 3],
      })),
      flags: batch.samples.map((_, i) => i % 2 === 0),
      crc: Buffer.from([1, 2, 3, 4]),
      blob: Buffer.from(batch.sourceId),
      chain: batch.samples.length % 2 === 0 ? null : { next: { next: null } },
    }
    return { bytes: frame(2, newerType.toBuffer(newer)), readableBy: [false, true, true], expected }
  })

type Mutation = (bytes: Buffer) => Buffer

const mutationArb: fc.Arbitrary<Mutation> = fc.oneof(
  fc.tuple(fc.nat(), fc.integer({ min: 0, max: 7 })).map(([at, bit]): Mutation => (bytes) => {
    const copy = Buffer.from(bytes)
    if (copy.length > 0) copy[at % copy.length] = (copy[at % copy.length] as number) ^ (1 << bit)
    return copy
  }),
  fc.nat().map(
    (at): Mutation =>
      (bytes) =>
        bytes.subarray(0, at % (bytes.length + 1)),
  ),
  fc.uint8Array({ minLength: 1, maxLength: 16 }).map(
    (tail): Mutation =>
      (bytes) =>
        Buffer.concat([bytes, tail]),
  ),
  fc
    .tuple(fc.nat(), fc.nat({ max: 8 }), fc.uint8Array({ maxLength: 12 }))
    .map(([at, remove, insert]): Mutation => (bytes) => {
      const start = at % (bytes.length + 1)
      return Buffer.concat([bytes.subarray(0, start), insert, bytes.subarray(start + remove)])
    }),
  // A varint-looking run: huge counts and lengths.
  fc.tuple(fc.nat(), fc.integer({ min: 1, max: 10 })).map(([at, n]): Mutation => (bytes) => {
    const start = at % (bytes.length + 1)
    const run = Buffer.alloc(n, 0xff)
    run[n - 1] = 0x01
    return Buffer.concat([bytes.subarray(0, start), run, bytes.subarray(start)])
  }),
)

const params = { numRuns: 800 }

describe('TelemetryDecoder fuzzing', () => {
  it('random bytes: a batch or a known failure, in every wire format', async () => {
    const valueArb = fc.oneof(
      { arbitrary: fc.uint8Array({ maxLength: 256 }), weight: 10 },
      // Confluent-looking: magic byte, one of the known ids (or not), random body.
      {
        arbitrary: fc
          .tuple(fc.integer({ min: 0, max: 4 }), fc.uint8Array({ maxLength: 256 }))
          .map(([id, body]) => frame(id, Buffer.from(body))),
        weight: 10,
      },
      // Just too large, whatever is in it.
      {
        arbitrary: fc.uint8Array({ minLength: MAX_BYTES + 1, maxLength: MAX_BYTES + 4 }),
        weight: 1,
      },
    )
    await fc.assert(
      fc.asyncProperty(fc.array(valueArb, { minLength: 1, maxLength: 4 }), async (values) => {
        const results = await decodeAll(values.map((v) => Buffer.from(v)))
        for (const row of results) row.forEach(checkResult)
      }),
      params,
    )
  })

  it('valid encodings decode, and to what was encoded', async () => {
    await fc.assert(
      fc.asyncProperty(encodedArb, async ({ bytes, readableBy, expected }) => {
        const results = (await decodeAll([bytes])).map((row) => row[0] as DecodeResult)
        results.forEach(checkResult)
        results.forEach((result, i) => {
          if (!readableBy[i]) expect(result.ok).toBe(false)
          else if (expected.samples.length > MAX_SAMPLES) {
            expect(result.ok ? 'ok' : result.failure.kind).toBe('too-many-samples')
          } else expect(result).toEqual({ ok: true, batch: expected })
        })
      }),
      params,
    )
  })

  it('mutated valid encodings: a batch or a known failure, never a throw', async () => {
    await fc.assert(
      fc.asyncProperty(
        encodedArb,
        encodedArb,
        fc.array(mutationArb, { minLength: 1, maxLength: 3 }),
        fc.nat(),
        async ({ bytes: a }, { bytes: b }, mutations, cut) => {
          // Splicing: the head of one valid encoding and the tail of another.
          const spliced = Buffer.concat([
            a.subarray(0, cut % (a.length + 1)),
            b.subarray(cut % (b.length + 1)),
          ])
          const mutated = mutations.reduce((bytes, mutate) => mutate(bytes), a)
          const results = await decodeAll([mutated, spliced, a])
          for (const row of results) row.forEach(checkResult)
        },
      ),
      params,
    )
  })

  it('hostile counts and lengths after a valid prefix fail fast', async () => {
    await fc.assert(
      fc.asyncProperty(
        encodedArb,
        fc.nat(),
        fc.bigInt({ min: -(2n ** 63n), max: 2n ** 63n - 1n }),
        fc.uint8Array({ maxLength: 64 }),
        async ({ bytes: valid }, at, count, tail) => {
          const start = at % (valid.length + 1)
          const hostile = Buffer.concat([valid.subarray(0, start), zigzag(count), tail])
          const started = performance.now()
          const results = await decodeAll([hostile])
          for (const row of results) row.forEach(checkResult)
          expect(performance.now() - started).toBeLessThan(250)
        },
      ),
      { ...params, numRuns: 400 },
    )
  })
})

function zigzag(n: bigint): Buffer {
  let value = BigInt.asUintN(64, (n << 1n) ^ (n >> 63n))
  const bytes: number[] = []
  do {
    const low = Number(value & 0x7fn)
    value >>= 7n
    bytes.push(value > 0n ? low | 0x80 : low)
  } while (value > 0n)
  return Buffer.from(bytes)
}
