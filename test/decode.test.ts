import { SchemaRegistry } from '@kafkajs/confluent-schema-registry'
import avro from 'avsc'
import { describe, expect, it } from 'vitest'
import {
  decodeWindowAggregate,
  encodeTelemetryBatch,
  encodeWindowAggregate,
  telemetryBatchSchema,
  type TelemetryBatch,
  type WindowAggregate,
} from '../consumer/codec'
import {
  ConfluentSchemaRegistrySource,
  DecodeFailure,
  LocalSchemaRegistry,
  TelemetryDecoder,
  UnusableWriterSchemaError,
  type DecodeFailureKind,
  type DecodeResult,
  type SchemaRegistryClient,
  type WriterSchemaSource,
} from '../consumer/decode'
import { telemetryBatchType } from '../consumer/schemas'

const NS = 'io.kwa.telemetry.v1'
const T0 = 1_700_000_000_000

const batch: TelemetryBatch = {
  sourceId: 'device-1',
  samples: [
    { seriesKey: 'host-a/cpu', eventTime: T0, value: 1.5 },
    { seriesKey: 'host-b/cpu', eventTime: T0 + 250, value: -2 },
    { seriesKey: 'hôte-ç/温度', eventTime: T0 + 999, value: 1e300 },
  ],
}

type Field = { name: string; type: avro.Schema; default?: unknown }

/** A TelemetryBatch writer schema with some fields changed, added or removed. */
function writerSchema(
  opts: {
    sourceId?: avro.Schema | null
    seriesKey?: avro.Schema | null
    eventTime?: avro.Schema | null
    value?: avro.Schema | null
    sampleExtra?: Field[]
    batchExtra?: Field[]
    namespace?: string
    reverse?: boolean
  } = {},
): avro.Schema {
  const field = (name: string, type: avro.Schema | null | undefined, fallback: avro.Schema) =>
    type === null ? [] : [{ name, type: type ?? fallback }]
  const sampleFields = [
    ...field('seriesKey', opts.seriesKey, 'string'),
    ...field('eventTime', opts.eventTime, { type: 'long', logicalType: 'timestamp-millis' }),
    ...field('value', opts.value, 'double'),
    ...(opts.sampleExtra ?? []),
  ]
  const fields = [
    ...field('sourceId', opts.sourceId, 'string'),
    {
      name: 'samples',
      type: { type: 'array', items: { type: 'record', name: 'Sample', fields: sampleFields } },
    },
    ...(opts.batchExtra ?? []),
  ]
  if (opts.reverse === true) {
    fields.reverse()
    sampleFields.reverse()
  }
  return {
    type: 'record',
    name: 'TelemetryBatch',
    namespace: opts.namespace ?? NS,
    fields,
  } as avro.Schema
}

/** A newer writer: extra fields of every Avro type, on the batch and on each sample. */
const newerWriter = writerSchema({
  sampleExtra: [
    { name: 'unit', type: 'string', default: '' },
    { name: 'quality', type: { type: 'enum', name: 'Quality', symbols: ['GOOD', 'BAD'] } },
    { name: 'tags', type: { type: 'map', values: 'string' } },
  ],
  batchExtra: [
    { name: 'producerVersion', type: 'string', default: 'unknown' },
    { name: 'flags', type: { type: 'array', items: 'boolean' } },
    { name: 'checksum', type: { type: 'fixed', name: 'Checksum', size: 4 } },
    { name: 'ratio', type: 'float' },
    { name: 'retries', type: 'int' },
    { name: 'blob', type: 'bytes' },
    { name: 'nothing', type: 'null' },
    {
      name: 'meta',
      type: [
        'null',
        { type: 'record', name: 'Meta', fields: [{ name: 'seq', type: 'long' }] },
        'string',
      ],
      default: null,
    },
    {
      name: 'chain',
      type: [
        'null',
        {
          type: 'record',
          name: 'Link',
          fields: [{ name: 'next', type: ['null', 'Link'] }],
        },
      ],
      default: null,
    },
  ],
})

const newerValue = {
  sourceId: batch.sourceId,
  samples: batch.samples.map((s, i) => ({
    ...s,
    unit: 'ms',
    quality: i % 2 === 0 ? 'GOOD' : 'BAD',
    tags: { rack: 'r1', zone: 'z' },
  })),
  producerVersion: '2.0.0',
  flags: [true, false, true],
  checksum: Buffer.from([1, 2, 3, 4]),
  ratio: 0.5,
  retries: -3,
  blob: Buffer.from([0xff, 0x00]),
  nothing: null,
  meta: { seq: 42 },
  chain: { next: { next: null } },
}

const frame = (id: number, body: Buffer): Buffer => {
  const header = Buffer.alloc(5)
  header.writeInt32BE(id, 1)
  return Buffer.concat([header, body])
}

/** A zig-zag varint, for any 64-bit value (avsc only encodes safe integers). */
function longBytes(n: number | bigint): Buffer {
  const value = BigInt(n)
  let zigzag = BigInt.asUintN(64, (value << 1n) ^ (value >> 63n))
  const bytes: number[] = []
  do {
    const low = Number(zigzag & 0x7fn)
    zigzag >>= 7n
    bytes.push(zigzag > 0n ? low | 0x80 : low)
  } while (zigzag > 0n)
  return Buffer.from(bytes)
}
const stringBytes = (s: string): Buffer => avro.Type.forSchema('string').toBuffer(s)
const sampleType = (telemetryBatchType as avro.types.RecordType).field('samples')
  .type as avro.types.ArrayType

function expectOk(result: DecodeResult): TelemetryBatch {
  if (!result.ok)
    throw new Error(`expected a batch, got ${result.failure.kind}: ${result.failure.message}`)
  return result.batch
}

function expectFailure(result: DecodeResult, kind: DecodeFailureKind): DecodeFailure {
  if (result.ok) throw new Error(`expected ${kind}, got a batch`)
  expect(result.failure).toBeInstanceOf(DecodeFailure)
  expect(result.failure.kind, result.failure.message).toBe(kind)
  return result.failure
}

/** A writer-schema source that counts its look-ups and can be slowed down or made to fail. */
class CountingSource implements WriterSchemaSource {
  readonly calls: number[] = []
  delayMs = 0
  failNext: Error | undefined = undefined

  constructor(readonly inner: WriterSchemaSource) {}

  async schema(id: number): Promise<avro.Schema | undefined> {
    this.calls.push(id)
    if (this.delayMs > 0) await new Promise((resolve) => setTimeout(resolve, this.delayMs))
    if (this.failNext !== undefined) {
      const error = this.failNext
      this.failNext = undefined
      throw error
    }
    return this.inner.schema(id)
  }
}

async function confluent(
  entries: [number, avro.Schema][],
  values: Buffer[],
): Promise<DecodeResult[]> {
  const decoder = new TelemetryDecoder({
    wireFormat: 'confluent',
    schemas: new LocalSchemaRegistry(entries),
  })
  await decoder.prepare(values)
  return values.map((v) => decoder.decode(v))
}

describe('TelemetryDecoder: plain', () => {
  const decoder = new TelemetryDecoder()

  it('decodes a batch written with the current schema', () => {
    expect(expectOk(decoder.decode(encodeTelemetryBatch(batch)))).toEqual(batch)
  })

  it('decodes an empty batch and samples in several blocks, with and without sizes', () => {
    expect(expectOk(decoder.decode(encodeTelemetryBatch({ sourceId: 'x', samples: [] })))).toEqual({
      sourceId: 'x',
      samples: [],
    })
    const items = batch.samples.map((s) => sampleType.itemsType.toBuffer(s))
    const blocked = (sizeError: number) =>
      Buffer.concat([
        stringBytes(batch.sourceId),
        longBytes(2),
        ...items.slice(0, 2),
        longBytes(-1),
        longBytes((items[2] as Buffer).length + sizeError),
        ...items.slice(2),
        longBytes(0),
      ])
    expect(expectOk(decoder.decode(blocked(0)))).toEqual(batch)
    // A block whose byte size does not match its items.
    expect(expectFailure(decoder.decode(blocked(-1)), 'malformed').message).toMatch(/block size/)
  })

  it.each([
    [null, /null/],
    [Buffer.alloc(0), /empty/],
  ])('an empty value (%j) is empty', (value, message) => {
    expect(expectFailure(decoder.decode(value), 'empty').message).toMatch(message)
  })

  it('a value longer than maxMessageBytes is too-large, and is not read', () => {
    const bytes = encodeTelemetryBatch(batch)
    const exact = new TelemetryDecoder({ maxMessageBytes: bytes.length })
    expectOk(exact.decode(bytes))
    const small = new TelemetryDecoder({ maxMessageBytes: bytes.length - 1 })
    const failure = expectFailure(small.decode(bytes), 'too-large')
    expect(failure.message).toBe(
      `message value is ${bytes.length} bytes, more than maxMessageBytes (${bytes.length - 1})`,
    )
    // Size is checked first: garbage that is too large is too-large, not malformed.
    expectFailure(small.decode(Buffer.alloc(bytes.length, 0xff)), 'too-large')
  })

  it('every strict prefix of a valid message is malformed', () => {
    const bytes = encodeTelemetryBatch(batch)
    for (let n = 1; n < bytes.length; n++) {
      expectFailure(decoder.decode(bytes.subarray(0, n)), 'malformed')
    }
  })

  it.each<[string, Buffer, RegExp]>([
    [
      'trailing bytes',
      Buffer.concat([encodeTelemetryBatch(batch), Buffer.from([0])]),
      /1 trailing bytes/,
    ],
    [
      'a varint beyond 64 bits',
      Buffer.from([...Array<number>(10).fill(0xff), 0x01]),
      /varint overflows a long/,
    ],
    ['a truncated varint', Buffer.from([0x80]), /byte 0 of 1: truncated varint/],
    ['a negative string length', Buffer.from([0x01, 0x00]), /negative string length -1/],
    [
      'a string longer than the message',
      Buffer.from([0x20, 0x61, 0x00]),
      /string needs 16 bytes, 2 left/,
    ],
    ['invalid UTF-8 in sourceId', Buffer.from([0x04, 0xc3, 0x28, 0x00]), /not valid UTF-8/],
    [
      'an eventTime beyond 2^53',
      Buffer.concat([
        stringBytes('s'),
        longBytes(1),
        stringBytes('k'),
        Buffer.from([0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]),
        Buffer.alloc(8),
        longBytes(0),
      ]),
      /precision loss/,
    ],
    [
      'a negative block with a negative size',
      Buffer.concat([stringBytes('s'), longBytes(-1), longBytes(-5)]),
      /negative array block length/,
    ],
  ])('%s is malformed', (_, bytes, message) => {
    const failure = expectFailure(decoder.decode(bytes), 'malformed')
    expect(failure.message).toMatch(/^not a valid io\.kwa\.telemetry\.v1\.TelemetryBatch \(plain\)/)
    expect(failure.message).toMatch(message)
  })

  it('invalid UTF-8 in a series key is malformed', () => {
    const bytes = encodeTelemetryBatch({
      sourceId: 's',
      samples: [{ seriesKey: 'ab', eventTime: T0, value: 1 }],
    })
    const at = bytes.indexOf('ab')
    bytes[at] = 0xff
    expect(expectFailure(decoder.decode(bytes), 'malformed').message).toMatch(
      `byte ${at} of ${bytes.length}: string is not valid UTF-8`,
    )
  })

  it.each([2n ** 31n - 1n, 2n ** 40n, 2n ** 53n, 2n ** 63n - 1n, -(2n ** 62n)])(
    'a declared sample count of %d in a small message is malformed, at once',
    (count) => {
      const size = count < 0n ? longBytes(64) : Buffer.alloc(0)
      const bytes = Buffer.concat([stringBytes('s'), longBytes(count), size, Buffer.alloc(64, 2)])
      const started = performance.now()
      const failure = expectFailure(decoder.decode(bytes), 'malformed')
      expect(failure.message).toMatch(/array block of \d+ items cannot fit in 64 bytes/)
      expect(performance.now() - started).toBeLessThan(100)
    },
  )

  it('more samples than maxSamplesPerBatch is too-many-samples, counted across blocks', () => {
    const limited = new TelemetryDecoder({ maxSamplesPerBatch: 3 })
    expectOk(limited.decode(encodeTelemetryBatch(batch)))
    const four = { ...batch, samples: [...batch.samples, ...batch.samples.slice(0, 1)] }
    expect(
      expectFailure(limited.decode(encodeTelemetryBatch(four)), 'too-many-samples').message,
    ).toBe('batch has at least 4 samples, more than maxSamplesPerBatch (3)')
    const items = four.samples.map((s) => sampleType.itemsType.toBuffer(s))
    const blocked = Buffer.concat([
      stringBytes('s'),
      longBytes(2),
      ...items.slice(0, 2),
      longBytes(2),
      ...items.slice(2),
      longBytes(0),
    ])
    expectFailure(limited.decode(blocked), 'too-many-samples')
    // A count that cannot fit the message is malformed before it is too many.
    expectFailure(
      limited.decode(Buffer.concat([stringBytes('s'), longBytes(1000), longBytes(0)])),
      'malformed',
    )
  })

  it('the default limits are 1 MiB and 100,000 samples', () => {
    expect(decoder.maxMessageBytes).toBe(1 << 20)
    expect(decoder.maxSamplesPerBatch).toBe(100_000)
    expect(decoder.wireFormat).toBe('plain')
  })

  it('a plain decoder needs no prepare and reads framed bytes as (bad) plain Avro', async () => {
    await decoder.prepare([frame(1, encodeTelemetryBatch(batch))])
    expectFailure(decoder.decode(frame(1, encodeTelemetryBatch(batch))), 'malformed')
  })

  it('rejects bad options', () => {
    expect(() => new TelemetryDecoder({ wireFormat: 'confluent' })).toThrow(/needs a schema source/)
    expect(() => new TelemetryDecoder({ wireFormat: 'auto' })).toThrow(/needs a schema source/)
    expect(() => new TelemetryDecoder({ maxMessageBytes: 0 })).toThrow(/maxMessageBytes/)
    expect(() => new TelemetryDecoder({ maxSamplesPerBatch: 1.5 })).toThrow(/maxSamplesPerBatch/)
    expect(() => new TelemetryDecoder({ unknownSchemaRetryMs: -1 })).toThrow(/unknownSchemaRetryMs/)
  })
})

describe('TelemetryDecoder: Confluent wire format', () => {
  const body = encodeTelemetryBatch(batch)

  it('decodes a framed batch written with the current schema', async () => {
    const [result] = await confluent([[7, telemetryBatchSchema]], [frame(7, body)])
    expect(expectOk(result as DecodeResult)).toEqual(batch)
  })

  it.each<[string, Buffer, RegExp]>([
    ['a plain value', body, /got first byte 0x10$/],
    ['a JSON value', Buffer.from('{"sourceId":"x"}'), /got first byte 0x7b$/],
    ['a magic byte and 3 bytes', Buffer.from([0, 0, 0, 7]), /got only 4 bytes$/],
  ])('%s is bad-wire-format', async (_, value, message) => {
    const [result] = await confluent([[7, telemetryBatchSchema]], [value])
    const failure = expectFailure(result as DecodeResult, 'bad-wire-format')
    expect(failure.message).toMatch(
      /^expected the Confluent wire format \(magic byte 0x00, 4-byte schema id, Avro\), got/,
    )
    expect(failure.message).toMatch(message)
  })

  it('an id that is not registered is unknown-schema', async () => {
    const [result] = await confluent([[7, telemetryBatchSchema]], [frame(42, body)])
    const failure = expectFailure(result as DecodeResult, 'unknown-schema')
    expect(failure.message).toBe('schema id 42 is not registered')
    expect(failure.schemaId).toBe(42)
  })

  it('a negative id is unknown-schema without asking the source', async () => {
    const source = new CountingSource(new LocalSchemaRegistry())
    const decoder = new TelemetryDecoder({ wireFormat: 'confluent', schemas: source })
    const value = frame(-2, body)
    await decoder.prepare([value])
    expect(expectFailure(decoder.decode(value), 'unknown-schema').message).toBe(
      'schema id -2 is not registered',
    )
    expect(source.calls).toEqual([])
  })

  it('malformed Avro after the header says which writer schema and where', async () => {
    const [result] = await confluent([[7, telemetryBatchSchema]], [frame(7, body.subarray(0, 3))])
    expect(expectFailure(result as DecodeResult, 'malformed').message).toBe(
      'not a valid io.kwa.telemetry.v1.TelemetryBatch (writer schema 7): byte 6 of 8: string needs 8 bytes, 2 left',
    )
  })

  it('too-large and empty are decided before the header', async () => {
    const decoder = new TelemetryDecoder({
      wireFormat: 'confluent',
      schemas: new LocalSchemaRegistry(),
      maxMessageBytes: 10,
    })
    const big = frame(3, Buffer.alloc(100))
    await decoder.prepare([big, null])
    expectFailure(decoder.decode(big), 'too-large')
    expectFailure(decoder.decode(null), 'empty')
  })

  it('decode throws (a caller bug, not a bad message) for an id that was not prepared', async () => {
    const decoder = new TelemetryDecoder({
      wireFormat: 'confluent',
      schemas: new LocalSchemaRegistry([[7, telemetryBatchSchema]]),
    })
    expect(() => decoder.decode(frame(7, body))).toThrow(/schema id 7 was not prepared/)
    await decoder.prepare([frame(7, body)])
    expectOk(decoder.decode(frame(7, body)))
  })
})

describe('TelemetryDecoder: auto wire format', () => {
  const registry = new LocalSchemaRegistry([[5, telemetryBatchSchema]])
  const decoder = new TelemetryDecoder({ wireFormat: 'auto', schemas: registry })

  it('reads magic byte 0 plus 4 bytes as Confluent, anything else as plain', async () => {
    const plain = encodeTelemetryBatch(batch)
    const framed = encodeTelemetryBatch(batch, { wireFormat: 'confluent', schemaId: 5 })
    await decoder.prepare([plain, framed])
    expect(expectOk(decoder.decode(plain))).toEqual(batch)
    expect(expectOk(decoder.decode(framed))).toEqual(batch)
    // 0x00 then only 3 bytes: plain (an empty sourceId, no samples, trailing bytes).
    expectFailure(decoder.decode(Buffer.from([0, 0, 0, 0])), 'malformed')
    expectOk(decoder.decode(Buffer.from([0, 0])))
  })

  it('the documented ambiguity: a plain batch with an empty sourceId reads as Confluent', async () => {
    const ambiguous = encodeTelemetryBatch({ ...batch, sourceId: '' })
    await decoder.prepare([ambiguous])
    const failure = expectFailure(decoder.decode(ambiguous), 'unknown-schema')
    expect(failure.schemaId).toBe(ambiguous.readInt32BE(1))
  })
})

describe('TelemetryDecoder: schema evolution', () => {
  it('a newer writer with extra fields of every type decodes; the extra fields are dropped', async () => {
    const writer = avro.Type.forSchema(newerWriter)
    const [result] = await confluent([[9, newerWriter]], [frame(9, writer.toBuffer(newerValue))])
    const decoded = expectOk(result as DecodeResult)
    expect(decoded).toEqual(batch)
    expect(Object.keys(decoded)).toEqual(['sourceId', 'samples'])
    expect(Object.keys(decoded.samples[0] ?? {})).toEqual(['seriesKey', 'eventTime', 'value'])
  })

  it('fields in another order decode (matched by name)', async () => {
    const reordered = writerSchema({ reverse: true })
    const bytes = avro.Type.forSchema(reordered).toBuffer(batch)
    const [result] = await confluent([[3, reordered]], [frame(3, bytes)])
    expect(expectOk(result as DecodeResult)).toEqual(batch)
  })

  it.each<[string, Parameters<typeof writerSchema>[0]]>([
    ['value: int', { value: 'int' }],
    ['value: long', { value: 'long' }],
    ['value: float', { value: 'float' }],
    ['eventTime: int', { eventTime: 'int' }],
    ['sourceId: bytes', { sourceId: 'bytes' }],
    ['seriesKey: bytes', { seriesKey: 'bytes' }],
  ])('an older writer with %s is promoted', async (_, change) => {
    const schema = writerSchema(change)
    const small: TelemetryBatch = {
      sourceId: 'dev',
      samples: [
        { seriesKey: 'k', eventTime: 1_000_000, value: 3 },
        { seriesKey: 'ключ', eventTime: -7, value: -0.5 },
      ],
    }
    const written = {
      sourceId: change?.sourceId === 'bytes' ? Buffer.from(small.sourceId) : small.sourceId,
      samples: small.samples.map((s) => ({
        seriesKey: change?.seriesKey === 'bytes' ? Buffer.from(s.seriesKey) : s.seriesKey,
        eventTime: s.eventTime,
        value: change?.value === 'int' || change?.value === 'long' ? Math.trunc(s.value) : s.value,
      })),
    }
    const bytes = avro.Type.forSchema(schema).toBuffer(written)
    const [result] = await confluent([[4, schema]], [frame(4, bytes)])
    const decoded = expectOk(result as DecodeResult)
    const expected = change?.value === 'int' || change?.value === 'long' ? [3, 0] : [3, -0.5]
    expect(decoded.samples.map((s) => s.value)).toEqual(expected)
    expect(decoded.samples.map((s) => s.seriesKey)).toEqual(['k', 'ключ'])
    expect(decoded.sourceId).toBe('dev')
    for (const sample of decoded.samples) expect(typeof sample.value).toBe('number')
  })

  it('bytes read as a string must be UTF-8; skipped strings need not be', async () => {
    const bytesKey = writerSchema({ seriesKey: 'bytes' })
    const badKey = avro.Type.forSchema(bytesKey).toBuffer({
      sourceId: 's',
      samples: [{ seriesKey: Buffer.from([0xc0, 0x80]), eventTime: 1, value: 1 }],
    })
    const extra = writerSchema({ batchExtra: [{ name: 'note', type: 'string' }] })
    const badNote = Buffer.concat([encodeTelemetryBatch(batch), Buffer.from([0x04, 0xff, 0xfe])])
    const results = await confluent(
      [
        [1, bytesKey],
        [2, extra],
      ],
      [frame(1, badKey), frame(2, badNote)],
    )
    expect(expectFailure(results[0] as DecodeResult, 'malformed').message).toMatch(/UTF-8/)
    expect(expectOk(results[1] as DecodeResult)).toEqual(batch)
  })

  it('bad bytes in fields only the writer has are malformed too', async () => {
    const writer = avro.Type.forSchema(newerWriter)
    const good = writer.toBuffer(newerValue)
    const ok = expectOk((await confluent([[9, newerWriter]], [frame(9, good)]))[0] as DecodeResult)
    expect(ok).toEqual(batch)
    // The last field is the `chain` union: index 7 does not exist.
    const badUnion = Buffer.concat([good.subarray(0, good.length - 3), longBytes(7)])
    // The `quality` enum of the first sample: index 5 does not exist.
    const badEnum = Buffer.from(good)
    const unit = badEnum.indexOf('ms')
    badEnum[unit + 2] = longBytes(5)[0] as number
    // The `flags` booleans must be 0 or 1.
    const badBoolean = Buffer.from(good)
    badBoolean[badBoolean.indexOf('2.0.0') + 6] = 2
    const results = await confluent(
      [[9, newerWriter]],
      [frame(9, badUnion), frame(9, badEnum), frame(9, badBoolean)],
    )
    expect(expectFailure(results[0] as DecodeResult, 'malformed').message).toMatch(
      /union index 7 not in \[0, 2\)/,
    )
    expect(expectFailure(results[1] as DecodeResult, 'malformed').message).toMatch(
      /enum index 5 not in \[0, 2\)/,
    )
    expect(expectFailure(results[2] as DecodeResult, 'malformed').message).toMatch(
      /boolean byte 0x2/,
    )
  })

  it('deep nesting in a recursive writer-only field is malformed, not a crash', async () => {
    const chain = writerSchema({
      batchExtra: [
        {
          name: 'chain',
          type: [
            'null',
            { type: 'record', name: 'Link', fields: [{ name: 'next', type: ['null', 'Link'] }] },
          ],
        },
      ],
    })
    const depth = 500_000
    const deep = Buffer.concat([
      encodeTelemetryBatch(batch),
      Buffer.alloc(depth, 0x02),
      Buffer.from([0]),
    ])
    const shallow = Buffer.concat([
      encodeTelemetryBatch(batch),
      Buffer.alloc(50, 0x02),
      Buffer.from([0]),
    ])
    const results = await confluent([[6, chain]], [frame(6, deep), frame(6, shallow)])
    expect(expectFailure(results[0] as DecodeResult, 'malformed').message).toMatch(
      /nested too deeply/,
    )
    expect(expectOk(results[1] as DecodeResult)).toEqual(batch)
  })

  it.each<[string, avro.Schema, RegExp]>([
    ['value: string', writerSchema({ value: 'string' }), /cannot read "string" as "double"/],
    ['no eventTime (the reader has no default)', writerSchema({ eventTime: null }), /eventTime/],
    ['no sourceId (the reader has no default)', writerSchema({ sourceId: null }), /sourceId/],
    ['sourceId: [null, string]', writerSchema({ sourceId: ['null', 'string'] }), /"null"/],
    ['another namespace', writerSchema({ namespace: 'io.kwa.telemetry.v2' }), /TelemetryBatch/],
    ['another record altogether', { type: 'record', name: 'Other', fields: [] }, /Other/],
  ])('a writer with %s is incompatible-schema', async (_, schema, reason) => {
    const [result] = await confluent([[11, schema]], [frame(11, Buffer.from([0]))])
    const failure = expectFailure(result as DecodeResult, 'incompatible-schema')
    expect(failure.message).toMatch(
      /^writer schema 11 cannot be read as io\.kwa\.telemetry\.v1\.TelemetryBatch: /,
    )
    expect(failure.message).toMatch(reason)
    expect(failure.schemaId).toBe(11)
  })

  it('a schema that is not valid Avro is incompatible-schema', async () => {
    const source: WriterSchemaSource = {
      schema: () => Promise.resolve({ type: 'recrod', name: 'X' } as unknown as avro.Schema),
    }
    const decoder = new TelemetryDecoder({ wireFormat: 'confluent', schemas: source })
    const value = frame(12, Buffer.from([0]))
    await decoder.prepare([value])
    expect(expectFailure(decoder.decode(value), 'incompatible-schema').message).toMatch(
      /^writer schema 12 is not a valid Avro schema: /,
    )
  })
})

describe('TelemetryDecoder: writer schema cache', () => {
  const body = encodeTelemetryBatch(batch)

  it('looks each id up once, caching resolvers and failures', async () => {
    const source = new CountingSource(
      new LocalSchemaRegistry([
        [1, telemetryBatchSchema],
        [2, newerWriter],
        [3, writerSchema({ value: 'string' })],
      ]),
    )
    const decoder = new TelemetryDecoder({ wireFormat: 'confluent', schemas: source })
    const newer = avro.Type.forSchema(newerWriter).toBuffer(newerValue)
    const values = [frame(1, body), frame(2, newer), frame(3, body), frame(1, body), frame(3, body)]
    for (let round = 0; round < 3; round++) {
      await decoder.prepare(values)
      const results = values.map((v) => decoder.decode(v))
      expect(results.map((r) => (r.ok ? 'ok' : r.failure.kind))).toEqual([
        'ok',
        'ok',
        'incompatible-schema',
        'ok',
        'incompatible-schema',
      ])
    }
    expect([...source.calls].sort()).toEqual([1, 2, 3])
  })

  it('asks again about an unknown id after unknownSchemaRetryMs, not before', async () => {
    const registry = new LocalSchemaRegistry()
    const source = new CountingSource(registry)
    let now = 0
    const decoder = new TelemetryDecoder({
      wireFormat: 'confluent',
      schemas: source,
      unknownSchemaRetryMs: 1000,
      now: () => now,
    })
    const value = frame(1, body)
    await decoder.prepare([value])
    expectFailure(decoder.decode(value), 'unknown-schema')
    now = 999
    await decoder.prepare([value])
    expectFailure(decoder.decode(value), 'unknown-schema')
    expect(source.calls).toEqual([1])
    expect(registry.register(telemetryBatchSchema)).toBe(1)
    now = 1000
    await decoder.prepare([value])
    expect(expectOk(decoder.decode(value))).toEqual(batch)
    expect(source.calls).toEqual([1, 1])
  })

  it('prepare with a slow async source: one look-up per id, even for concurrent prepares', async () => {
    const source = new CountingSource(
      new LocalSchemaRegistry([
        [1, telemetryBatchSchema],
        [2, newerWriter],
      ]),
    )
    source.delayMs = 20
    const decoder = new TelemetryDecoder({
      wireFormat: 'confluent',
      schemas: source,
      prepareConcurrency: 1,
    })
    const newer = avro.Type.forSchema(newerWriter).toBuffer(newerValue)
    const values = [frame(1, body), frame(2, newer), frame(1, body), null]
    await Promise.all([decoder.prepare(values), decoder.prepare(values.slice(0, 1))])
    expect(values.map((v) => decoder.decode(v).ok)).toEqual([true, true, true, false])
    expect([...source.calls].sort()).toEqual([1, 2])
  })

  it('a transient source error rejects prepare and caches nothing for that id', async () => {
    const source = new CountingSource(new LocalSchemaRegistry([[1, telemetryBatchSchema]]))
    const decoder = new TelemetryDecoder({ wireFormat: 'confluent', schemas: source })
    source.failNext = new Error('registry unavailable')
    const value = frame(1, body)
    await expect(decoder.prepare([value])).rejects.toThrow('registry unavailable')
    expect(() => decoder.decode(value)).toThrow(/not prepared/)
    await decoder.prepare([value])
    expectOk(decoder.decode(value))
    expect(source.calls).toEqual([1, 1])
  })

  it('an UnusableWriterSchemaError from the source is cached as incompatible-schema', async () => {
    const source = new CountingSource(new LocalSchemaRegistry())
    source.failNext = new UnusableWriterSchemaError('schema id 1 is a Protobuf schema')
    const decoder = new TelemetryDecoder({ wireFormat: 'confluent', schemas: source })
    const value = frame(1, body)
    await decoder.prepare([value])
    await decoder.prepare([value])
    expect(expectFailure(decoder.decode(value), 'incompatible-schema').message).toBe(
      'schema id 1 is a Protobuf schema',
    )
    expect(source.calls).toEqual([1])
  })
})

describe('LocalSchemaRegistry', () => {
  it('registers schemas under new ids, and an identical schema under its existing id', async () => {
    const registry = new LocalSchemaRegistry([[10, telemetryBatchSchema]])
    expect(registry.register(telemetryBatchType)).toBe(10)
    expect(registry.register(newerWriter)).toBe(11)
    expect(registry.register(JSON.parse(JSON.stringify(newerWriter)) as avro.Schema)).toBe(11)
    expect(registry.register(writerSchema({ value: 'float' }))).toBe(12)
    expect(await registry.schema(11)).toBeInstanceOf(avro.Type)
    expect(await registry.schema(13)).toBeUndefined()
  })

  it('rejects ids that Confluent framing cannot carry, and invalid schemas', () => {
    expect(() => new LocalSchemaRegistry([[-1, telemetryBatchSchema]])).toThrow(RangeError)
    expect(() => new LocalSchemaRegistry([[2 ** 31, telemetryBatchSchema]])).toThrow(RangeError)
    expect(() =>
      new LocalSchemaRegistry().register({ type: 'nope' } as unknown as avro.Schema),
    ).toThrow()
  })
})

describe('ConfluentSchemaRegistrySource', () => {
  /** A stand-in for `SchemaRegistry`: getSchema(id) as the client answers it. */
  function fakeClient(
    answers: Record<number, () => unknown>,
  ): SchemaRegistryClient & { calls: number[] } {
    const calls: number[] = []
    return {
      calls,
      getSchema(id: number): Promise<unknown> {
        calls.push(id)
        const answer = answers[id]
        if (answer === undefined) {
          // What the client throws for a 404 (error code 40403).
          return Promise.reject(
            Object.assign(new Error('Confluent_Schema_Registry - Schema not found'), {
              name: 'ResponseError',
              status: 404,
            }),
          )
        }
        return new Promise((resolve) => resolve(answer()))
      },
    }
  }

  it('maps the client answers to schemas, unknown ids, unusable schemas and transient errors', async () => {
    const client = fakeClient({
      // The client returns an avsc Type for an Avro schema...
      1: () => avro.Type.forSchema(newerWriter),
      // ...and other objects for JSON Schema and Protobuf ones.
      2: () => ({ toBuffer: () => Buffer.alloc(0), fromBuffer: () => ({}), isValid: () => true }),
      3: () => {
        throw Object.assign(new Error('Confluent_Schema_Registry - Error, status 503'), {
          status: 503,
        })
      },
    })
    const decoder = new TelemetryDecoder({
      wireFormat: 'confluent',
      schemas: new ConfluentSchemaRegistrySource(client),
    })
    const values = [1, 2, 4].map((id) =>
      frame(id, avro.Type.forSchema(newerWriter).toBuffer(newerValue)),
    )
    await decoder.prepare(values)
    const [one, two, four] = values.map((v) => decoder.decode(v))
    expect(expectOk(one as DecodeResult)).toEqual(batch)
    expect(expectFailure(two as DecodeResult, 'incompatible-schema').message).toBe(
      'schema id 2 in the registry is not an Avro schema',
    )
    expect(expectFailure(four as DecodeResult, 'unknown-schema').message).toBe(
      'schema id 4 is not registered',
    )
    await expect(decoder.prepare([frame(3, Buffer.from([0]))])).rejects.toThrow(/status 503/)
    expect(client.calls.sort()).toEqual([1, 2, 3, 4])
  })

  it('wraps the real client: an unreachable registry is a transient error', async () => {
    const client: SchemaRegistryClient = new SchemaRegistry({
      host: 'http://127.0.0.1:9',
      retry: { retries: 0 },
    })
    const source = new ConfluentSchemaRegistrySource(client)
    await expect(source.schema(1)).rejects.toThrow()
  })
})

describe('codec', () => {
  const aggregate: WindowAggregate = {
    seriesKey: 'host-a/cpu',
    windowStart: T0,
    windowEnd: T0 + 10_000,
    count: 3,
    sum: 6,
    mean: 2,
    min: 1,
    max: 3,
  }

  it('encodes a batch plain or Confluent-framed', () => {
    const plain = encodeTelemetryBatch(batch)
    expect(plain).toEqual(telemetryBatchType.toBuffer(batch))
    const framed = encodeTelemetryBatch(batch, { wireFormat: 'confluent', schemaId: 258 })
    expect([...framed.subarray(0, 5)]).toEqual([0, 0, 0, 1, 2])
    expect(framed.subarray(5)).toEqual(plain)
  })

  it('checks the schema id and names the first invalid field', () => {
    expect(() => encodeTelemetryBatch(batch, { wireFormat: 'confluent' })).toThrow(
      /needs a schemaId/,
    )
    expect(() =>
      encodeTelemetryBatch(batch, { wireFormat: 'confluent', schemaId: 2 ** 31 }),
    ).toThrow(RangeError)
    expect(() => encodeTelemetryBatch(batch, { schemaId: 1 })).toThrow(/only used with/)
    const bad = {
      sourceId: 's',
      samples: [batch.samples[0], { seriesKey: 'k', eventTime: T0, value: '1' }],
    } as unknown as TelemetryBatch
    expect(() => encodeTelemetryBatch(bad)).toThrow(
      'invalid TelemetryBatch: samples.1.value must be a double, got "1"',
    )
    const fractional = { sourceId: 's', samples: [{ seriesKey: 'k', eventTime: 1.5, value: 1 }] }
    expect(() => encodeTelemetryBatch(fractional)).toThrow(
      'invalid TelemetryBatch: samples.0.eventTime must be a long, got 1.5',
    )
  })

  it.each(['plain', 'confluent'] as const)('round-trips a WindowAggregate (%s)', (wireFormat) => {
    const bytes = encodeWindowAggregate(
      aggregate,
      wireFormat === 'confluent' ? { wireFormat, schemaId: 3 } : {},
    )
    expect(decodeWindowAggregate(bytes)).toEqual(aggregate)
    expect(decodeWindowAggregate(bytes, { wireFormat })).toEqual(aggregate)
  })

  it('decodeWindowAggregate throws on bytes that are not one', () => {
    const bytes = encodeWindowAggregate(aggregate)
    expect(() => decodeWindowAggregate(bytes.subarray(0, 10))).toThrow(
      /^not a valid WindowAggregate: truncated buffer/,
    )
    expect(() => decodeWindowAggregate(bytes, { wireFormat: 'confluent' })).toThrow(
      /not a Confluent-framed WindowAggregate/,
    )
  })
})
