import { isUtf8 } from 'node:buffer'
import avro from 'avsc'
import { baseTypeName, matches, minBytes } from './avro-types'
import { DecodeProgram } from './decode-program'
import { telemetryBatchType, type TelemetryBatch } from './schemas'

/**
 * Decoding of input messages: one Kafka message value → a `TelemetryBatch` or a typed failure.
 *
 * Wire formats:
 * - `plain`: the value is Avro binary written with the current `schemas/telemetry-batch.avsc`.
 * - `confluent`: byte 0 = 0x00 (magic), bytes 1-4 = big-endian schema id, then Avro binary
 *   written with that (writer) schema; it is resolved against the current (reader) schema.
 * - `auto`: a value whose first byte is 0x00 and that has at least 4 more bytes is taken as
 *   Confluent, anything else as plain. This is ambiguous for one case: a plain batch whose
 *   `sourceId` is the empty string also starts with 0x00 (the string's length), and is then read
 *   as Confluent with a schema id made of its next 4 bytes (most likely `unknown-schema`). In
 *   `auto` mode plain producers must therefore use a non-empty `sourceId`.
 *
 * Schema evolution (Confluent format; Avro resolution rules, as implemented by avsc's
 * `createResolver`):
 * - fields only the writer has (any type, with or without a default) are skipped;
 * - fields may come in any order (matched by name);
 * - `int`, `long` and `float` writer values are promoted to the reader's `double`, `int` to its
 *   `long`, and `bytes` to its `string` (the bytes must then be valid UTF-8);
 * - record names must match the reader's fully qualified names (`io.kwa.telemetry.v1.*`);
 * - a reader field missing from the writer needs a default in the reader; none of the current
 *   reader's fields has one, so a writer lacking `sourceId`, `seriesKey`, `eventTime` or `value`
 *   is incompatible (a field added to the reader later with a default makes old writers work);
 * - anything else (a `string` value, another record name, a union such as `["null", "string"]`
 *   for a reader `string`, which avsc refuses up front even if no `null` is ever written...) is
 *   an `incompatible-schema` failure for every message with that schema id.
 *
 * Before avsc decodes a message, it is walked once against its writer schema with a bound on
 * every length, count and varint (see `compileScanner`). avsc reads arrays eagerly and does not
 * bound a declared item count by the bytes that remain: on mutated messages it loops for minutes
 * (seen while fuzzing). The walk is also stricter than avsc, which the aggregator relies on:
 * strings the reader reads must be valid UTF-8 (avsc would substitute U+FFFD and so merge
 * distinct series keys), booleans 0 or 1, ints 32-bit, varints at most 10 bytes, and a block's
 * byte size must match its items. It costs about half as much as avsc's own decode.
 */

export type WireFormat = 'plain' | 'confluent' | 'auto'

export const decodeFailureKinds = [
  /** Null (tombstone) or zero-length value. */
  'empty',
  /** Longer than `maxMessageBytes`; not looked at further. */
  'too-large',
  /** Not Avro for its writer schema: truncated, trailing bytes, bad varint, bad UTF-8... */
  'malformed',
  /** Confluent framing with a schema id that the schema source does not know. */
  'unknown-schema',
  /** The writer schema cannot be read as the current `TelemetryBatch` schema. */
  'incompatible-schema',
  /** More samples than `maxSamplesPerBatch`. */
  'too-many-samples',
  /** Confluent framing expected, but no magic byte or fewer than 5 bytes. */
  'bad-wire-format',
] as const

export type DecodeFailureKind = (typeof decodeFailureKinds)[number]

/** Why a message value is not a usable batch. A value, never thrown. */
export class DecodeFailure {
  constructor(
    readonly kind: DecodeFailureKind,
    readonly message: string,
    /** The Confluent schema id of the message, when it had one. */
    readonly schemaId?: number,
  ) {}
}

export type DecodeResult =
  { ok: true; batch: TelemetryBatch } | { ok: false; failure: DecodeFailure }

/**
 * Where writer schemas come from, by Confluent schema id. Resolve `undefined` for an id that is
 * not registered. Reject with `UnusableWriterSchemaError` for an id whose schema can never be
 * used (e.g. a Protobuf schema); it is then cached as `incompatible-schema`. Any other rejection
 * is taken as transient: `prepare` rejects and nothing is cached, so the next `prepare` asks again.
 */
export interface WriterSchemaSource {
  schema(id: number): Promise<avro.Schema | undefined>
}

/** See `WriterSchemaSource`: the schema under this id can never be read as Avro. */
export class UnusableWriterSchemaError extends Error {
  constructor(message: string) {
    super(message)
    this.name = new.target.name
  }
}

/** An in-memory id → schema map, for tests and for deployments without a registry. */
export class LocalSchemaRegistry implements WriterSchemaSource {
  private readonly types = new Map<number, avro.Type>()

  constructor(entries: Iterable<readonly [number, avro.Schema]> = []) {
    for (const [id, schema] of entries) {
      checkSchemaId(id)
      this.types.set(id, toType(schema))
    }
  }

  /**
   * Registers a schema and returns its id: the id it already has if an identical schema
   * (same Avro parsing canonical form) is registered, else one more than the largest id.
   */
  register(schema: avro.Schema): number {
    const type = toType(schema)
    const fingerprint = type.fingerprint('sha256').toString('hex')
    let max = 0
    for (const [id, known] of this.types) {
      if (known.fingerprint('sha256').toString('hex') === fingerprint) return id
      max = Math.max(max, id)
    }
    const id = max + 1
    checkSchemaId(id)
    this.types.set(id, type)
    return id
  }

  schema(id: number): Promise<avro.Schema | undefined> {
    return Promise.resolve(this.types.get(id))
  }
}

/**
 * The subset of `@kafkajs/confluent-schema-registry`'s `SchemaRegistry` used here, so that this
 * module loads the registry client (~100 ms of requires) only where it is used. Pass
 * `new SchemaRegistry({ host })`, or a fake in tests.
 */
export interface SchemaRegistryClient {
  getSchema(registryId: number): Promise<unknown>
}

/**
 * Writer schemas from a Confluent Schema Registry. A 404 (`40403 Schema not found`) resolves
 * `undefined`; a schema that is not Avro (JSON Schema, Protobuf) is unusable; any other error
 * (network, 5xx, auth) is transient and rejects. The client caches schemas itself.
 */
export class ConfluentSchemaRegistrySource implements WriterSchemaSource {
  constructor(private readonly client: SchemaRegistryClient) {}

  async schema(id: number): Promise<avro.Schema | undefined> {
    let schema: unknown
    try {
      schema = await this.client.getSchema(id)
    } catch (error) {
      if (isNotFound(error)) return undefined
      throw error
    }
    if (!avro.Type.isType(schema)) {
      throw new UnusableWriterSchemaError(`schema id ${id} in the registry is not an Avro schema`)
    }
    return schema as avro.Type
  }
}

const isNotFound = (error: unknown): boolean =>
  typeof error === 'object' && error !== null && (error as { status?: unknown }).status === 404

export interface TelemetryDecoderOptions {
  /** Default `plain`. `confluent` and `auto` need `schemas`. */
  wireFormat?: WireFormat
  schemas?: WriterSchemaSource
  /** Default 1 MiB. */
  maxMessageBytes?: number
  /** Default 100,000. */
  maxSamplesPerBatch?: number
  /**
   * How long an id found unregistered stays `unknown-schema` before `prepare` asks the source
   * again (default 60 s; `Infinity`: never). Incompatible schemas are cached for good: a
   * registry never changes the schema under an id.
   */
  unknownSchemaRetryMs?: number
  /** At most this many schema look-ups at once in `prepare` (default 8). */
  prepareConcurrency?: number
  /** Clock for `unknownSchemaRetryMs`, in ms (default `Date.now`). */
  now?: () => number
  /**
   * Who decodes the Avro: `native` (default) walks the bytes in Rust straight into the
   * aggregator's columns (`PartitionPipeline` with `locate` and `program`); `avsc` builds a JS
   * object per sample with avsc (`decode`), the reference decoder.
   */
  engine?: DecodeEngine
}

export const decodeEngines = ['native', 'avsc'] as const
export type DecodeEngine = (typeof decodeEngines)[number]

/** Where a message's Avro body starts and the native program node to walk it with. */
export interface Located {
  ok: true
  body: number
  root: number
}

type Resolver = ReturnType<avro.Type['createResolver']>

/** A writer schema ready to decode with, or why it cannot be. */
type WriterEntry =
  | { ok: true; resolver: Resolver | undefined; scan: Scanner; root: number }
  | { ok: false; failure: DecodeFailure; retryAt: number }

const readerName = telemetryBatchType.name ?? 'io.kwa.telemetry.v1.TelemetryBatch'
const CONFLUENT_HEADER_BYTES = 5

/**
 * Decodes input message values. With Confluent framing, call `await prepare(values)` for each
 * Kafka batch first (it fetches and resolves the writer schemas the batch needs), then
 * `decode(value)` for each value, synchronously. `decode` never throws for any message content;
 * it throws only when called for a Confluent value whose schema id was not passed to `prepare`
 * (a bug of the caller, so it must not be mistaken for a poison message).
 */
export class TelemetryDecoder {
  readonly wireFormat: WireFormat
  readonly maxMessageBytes: number
  readonly maxSamplesPerBatch: number
  private readonly schemas: WriterSchemaSource | undefined
  private readonly unknownSchemaRetryMs: number
  private readonly prepareConcurrency: number
  private readonly now: () => number
  readonly engine: DecodeEngine
  /** Native decode program for every writer schema resolved so far (see `locate`). */
  readonly program = new DecodeProgram()
  private readonly plainScan: Scanner
  private readonly plainRoot: number
  private readonly writers = new Map<number, WriterEntry>()
  private readonly inFlight = new Map<number, Promise<void>>()

  constructor(options: TelemetryDecoderOptions = {}) {
    this.wireFormat = options.wireFormat ?? 'plain'
    this.schemas = options.schemas
    if (this.wireFormat !== 'plain' && this.schemas === undefined) {
      throw new TypeError(`wireFormat '${this.wireFormat}' needs a schema source (schemas)`)
    }
    this.maxMessageBytes = positiveInteger('maxMessageBytes', options.maxMessageBytes, 1 << 20)
    this.maxSamplesPerBatch = positiveInteger(
      'maxSamplesPerBatch',
      options.maxSamplesPerBatch,
      100_000,
    )
    this.unknownSchemaRetryMs = options.unknownSchemaRetryMs ?? 60_000
    if (!(this.unknownSchemaRetryMs >= 0)) {
      throw new RangeError(`unknownSchemaRetryMs must be >= 0, got ${this.unknownSchemaRetryMs}`)
    }
    this.prepareConcurrency = positiveInteger('prepareConcurrency', options.prepareConcurrency, 8)
    this.now = options.now ?? Date.now
    this.plainScan = compileScanner(telemetryBatchType, telemetryBatchType)
    this.plainRoot = this.program.add(telemetryBatchType, telemetryBatchType)
    this.engine = options.engine ?? 'native'
  }

  /**
   * Fetches and resolves every writer schema that `values` need and that is not cached yet (or
   * whose `unknown-schema` result is older than `unknownSchemaRetryMs`). Rejects only when the
   * schema source fails transiently; the ids that did resolve stay cached.
   */
  async prepare(values: Iterable<Buffer | null>): Promise<void> {
    if (this.wireFormat === 'plain') return
    const now = this.now()
    for (const [id, entry] of this.writers) {
      if (!entry.ok && entry.retryAt <= now) this.writers.delete(id)
    }
    const ids = new Set<number>()
    for (const value of values) {
      const id = this.framing(value)
      if (typeof id === 'number' && !this.writers.has(id)) ids.add(id)
    }
    const queue = [...ids]
    const errors: unknown[] = []
    const worker = async (): Promise<void> => {
      for (let id = queue.pop(); id !== undefined; id = queue.pop()) {
        try {
          await this.load(id)
        } catch (error) {
          errors.push(error)
        }
      }
    }
    const workers = Math.min(this.prepareConcurrency, queue.length)
    await Promise.all(Array.from({ length: workers }, worker))
    if (errors.length > 0) throw errors[0]
  }

  /** One message value → a batch or a failure. An arrow, so it can be passed around unbound. */
  readonly decode = (value: Buffer | null): DecodeResult => {
    const framing = this.framing(value)
    if (framing instanceof DecodeFailure) return { ok: false, failure: framing }
    const bytes = value as Buffer
    if (framing === 'plain') return this.read(bytes, 0, this.plainScan, undefined, undefined)
    const entry = this.writers.get(framing)
    if (entry === undefined) {
      throw new Error(
        `schema id ${framing} was not prepared: await decoder.prepare(values) before decode()`,
      )
    }
    if (!entry.ok) return { ok: false, failure: entry.failure }
    return this.read(bytes, CONFLUENT_HEADER_BYTES, entry.scan, entry.resolver, framing)
  }

  /**
   * For the native decoder: where the value's Avro body starts and the `program` node to walk
   * it with, or why it cannot be read at all (the failures `decode` gives before reading Avro).
   * Like `decode`, needs `prepare` first for Confluent values.
   */
  readonly locate = (value: Buffer | null): Located | { ok: false; failure: DecodeFailure } => {
    const framing = this.framing(value)
    if (framing instanceof DecodeFailure) return { ok: false, failure: framing }
    if (framing === 'plain') return { ok: true, body: 0, root: this.plainRoot }
    const entry = this.writers.get(framing)
    if (entry === undefined) {
      throw new Error(
        `schema id ${framing} was not prepared: await decoder.prepare(values) before locate()`,
      )
    }
    if (!entry.ok) return { ok: false, failure: entry.failure }
    return { ok: true, body: CONFLUENT_HEADER_BYTES, root: entry.root }
  }

  /** Failure for a message the native decoder refused, with its kind and reason. */
  nativeFailure(kind: string, reason: string, value: Buffer): DecodeFailure {
    const framing = this.framing(value)
    const id = typeof framing === 'number' ? framing : undefined
    const writer = id === undefined ? 'plain' : `writer schema ${id}`
    if (kind === 'too-many-samples') {
      return new DecodeFailure(
        'too-many-samples',
        `${reason}, more than maxSamplesPerBatch (${this.maxSamplesPerBatch})`,
        id,
      )
    }
    return new DecodeFailure('malformed', `not a valid ${readerName} (${writer}): ${reason}`, id)
  }

  /** `plain`, the Confluent schema id, or why the value cannot be read at all. */
  private framing(value: Buffer | null): 'plain' | number | DecodeFailure {
    if (value === null) return new DecodeFailure('empty', 'message value is null (a tombstone)')
    if (value.length === 0) return new DecodeFailure('empty', 'message value is empty (0 bytes)')
    if (value.length > this.maxMessageBytes) {
      return new DecodeFailure(
        'too-large',
        `message value is ${value.length} bytes, more than maxMessageBytes (${this.maxMessageBytes})`,
      )
    }
    const framed = value[0] === 0 && value.length >= CONFLUENT_HEADER_BYTES
    if (this.wireFormat === 'plain' || (this.wireFormat === 'auto' && !framed)) return 'plain'
    if (!framed) {
      const got =
        value[0] !== 0
          ? `first byte 0x${(value[0] as number).toString(16).padStart(2, '0')}`
          : `only ${value.length} bytes`
      return new DecodeFailure(
        'bad-wire-format',
        `expected the Confluent wire format (magic byte 0x00, 4-byte schema id, Avro), got ${got}`,
      )
    }
    return value.readInt32BE(1)
  }

  private read(
    bytes: Buffer,
    start: number,
    scan: Scanner,
    resolver: Resolver | undefined,
    schemaId: number | undefined,
  ): DecodeResult {
    const writer = schemaId === undefined ? 'plain' : `writer schema ${schemaId}`
    const state: ScanState = {
      buf: bytes,
      pos: start,
      items: 0,
      samples: 0,
      maxSamples: this.maxSamplesPerBatch,
    }
    try {
      scan(state)
      if (state.pos !== bytes.length) {
        throw new ScanError(state.pos, `${bytes.length - state.pos} trailing bytes`)
      }
    } catch (error) {
      if (error instanceof TooManySamples) {
        const message = `batch has at least ${error.samples} samples, more than maxSamplesPerBatch (${this.maxSamplesPerBatch})`
        return { ok: false, failure: new DecodeFailure('too-many-samples', message, schemaId) }
      }
      const message =
        error instanceof ScanError
          ? `byte ${error.pos} of ${bytes.length}: ${error.message}`
          : error instanceof RangeError
            ? 'nested too deeply'
            : String(error)
      return malformed(`not a valid ${readerName} (${writer}): ${message}`, schemaId)
    }
    try {
      const batch = telemetryBatchType.fromBuffer(bytes.subarray(start), resolver) as TelemetryBatch
      return { ok: true, batch }
    } catch (error) {
      const reason = error instanceof Error ? error.message : String(error)
      return malformed(`not a valid ${readerName} (${writer}): ${reason}`, schemaId)
    }
  }

  private load(id: number): Promise<void> {
    if (this.writers.has(id)) return Promise.resolve()
    let pending = this.inFlight.get(id)
    if (pending === undefined) {
      pending = this.fetch(id).finally(() => this.inFlight.delete(id))
      this.inFlight.set(id, pending)
    }
    return pending
  }

  private async fetch(id: number): Promise<void> {
    const source = this.schemas as WriterSchemaSource
    let schema: avro.Schema | undefined
    try {
      // Confluent ids are positive; a negative one (bytes 1-4 >= 0x80000000) is never registered.
      schema = id < 0 ? undefined : await source.schema(id)
    } catch (error) {
      if (!(error instanceof UnusableWriterSchemaError)) throw error
      this.writers.set(id, this.failed('incompatible-schema', error.message, id, Infinity))
      return
    }
    if (schema === undefined) {
      const retryAt = this.now() + this.unknownSchemaRetryMs
      const entry = this.failed('unknown-schema', `schema id ${id} is not registered`, id, retryAt)
      this.writers.set(id, entry)
      return
    }
    this.writers.set(id, this.resolve(id, schema))
  }

  private resolve(id: number, schema: avro.Schema): WriterEntry {
    let writer: avro.Type
    try {
      writer = toType(schema)
    } catch (error) {
      const message = `writer schema ${id} is not a valid Avro schema: ${(error as Error).message}`
      return this.failed('incompatible-schema', message, id, Infinity)
    }
    try {
      const resolver = telemetryBatchType.createResolver(writer)
      const scan = compileScanner(writer, telemetryBatchType)
      return { ok: true, resolver, scan, root: this.program.add(writer, telemetryBatchType) }
    } catch (error) {
      const message = `writer schema ${id} cannot be read as ${readerName}: ${(error as Error).message}`
      return this.failed('incompatible-schema', message, id, Infinity)
    }
  }

  private failed(
    kind: DecodeFailureKind,
    message: string,
    id: number,
    retryAt: number,
  ): WriterEntry {
    return { ok: false, failure: new DecodeFailure(kind, message, id), retryAt }
  }
}

const malformed = (message: string, schemaId: number | undefined): DecodeResult => ({
  ok: false,
  failure: new DecodeFailure('malformed', message, schemaId),
})

function toType(schema: avro.Schema): avro.Type {
  return avro.Type.isType(schema) ? (schema as avro.Type) : avro.Type.forSchema(schema)
}

function checkSchemaId(id: number): void {
  if (!Number.isInteger(id) || id < 0 || id > 0x7fffffff) {
    throw new RangeError(`a schema id is an integer from 0 to 2^31-1, got ${id}`)
  }
}

function positiveInteger(name: string, value: number | undefined, fallback: number): number {
  const n = value ?? fallback
  if (!Number.isInteger(n) || n < 1) throw new RangeError(`${name} must be a positive integer`)
  return n
}

// ---------------------------------------------------------------------------------------------
// The bounded pre-scan: walks Avro binary against a writer schema without building values.
// It accepts exactly the well-formed encodings, so that avsc, which trusts lengths and counts,
// only ever reads bytes that are there.

interface ScanState {
  buf: Buffer
  pos: number
  /** Array and map items seen so far in the message (bounds zero-byte items). */
  items: number
  /** Items of the top-level `samples` array so far. */
  samples: number
  maxSamples: number
}

type Scanner = (state: ScanState) => void

class ScanError extends Error {
  constructor(
    readonly pos: number,
    message: string,
  ) {
    super(message)
  }
}

class TooManySamples extends Error {
  constructor(readonly samples: number) {
    super('too many samples')
  }
}

/** Reads a zig-zag varint of at most `maxBytes` bytes (5 for int, 10 for long). */
function readVarint(state: ScanState, maxBytes: 5 | 10): number {
  const { buf } = state
  const start = state.pos
  const first = buf[start]
  if (first !== undefined && first < 0x80) {
    state.pos = start + 1
    return first & 1 ? -((first + 1) / 2) : first / 2
  }
  let raw = 0
  let scale = 1
  for (let i = 0; ; i++) {
    const b = buf[start + i]
    if (b === undefined) throw new ScanError(start, 'truncated varint')
    if (i === maxBytes - 1 && b > (maxBytes === 5 ? 0x0f : 0x01)) {
      throw new ScanError(start, `varint overflows ${maxBytes === 5 ? 'an int' : 'a long'}`)
    }
    raw += (b & 0x7f) * scale
    if (b < 0x80) {
      state.pos = start + i + 1
      break
    }
    scale *= 128
  }
  // Exact up to 2^53; beyond, the magnitude is approximate (and far too large for a length or a
  // count) but the sign, bit 0 of the first byte, is exact.
  return (first as number) & 1 ? -(raw + 1) / 2 : raw / 2
}

function need(state: ScanState, bytes: number, what: string): void {
  if (bytes > state.buf.length - state.pos) {
    throw new ScanError(
      state.pos,
      `${what} needs ${bytes} bytes, ${state.buf.length - state.pos} left`,
    )
  }
}

function readLength(state: ScanState, what: string): number {
  const at = state.pos
  const length = readVarint(state, 10)
  if (length < 0) throw new ScanError(at, `negative ${what} length ${length}`)
  need(state, length, what)
  return length
}

const scanNull: Scanner = () => {}
const scanInt: Scanner = (s) => void readVarint(s, 5)
const scanLong: Scanner = (s) => void readVarint(s, 10)
const fixedScanner =
  (size: number, what: string): Scanner =>
  (s) => {
    need(s, size, what)
    s.pos += size
  }
const scanFloat = fixedScanner(4, 'float')
const scanDouble = fixedScanner(8, 'double')
const scanBoolean: Scanner = (s) => {
  const b = s.buf[s.pos]
  if (b === undefined) throw new ScanError(s.pos, 'truncated boolean')
  if (b > 1) throw new ScanError(s.pos, `boolean byte 0x${b.toString(16)}`)
  s.pos++
}
const scanBytes: Scanner = (s) => {
  const length = readLength(s, 'bytes') // Moves s.pos: not `s.pos += readLength(...)`.
  s.pos += length
}
/** A string, or bytes the reader reads as a string: must be UTF-8. */
const scanString: Scanner = (s) => {
  const length = readLength(s, 'string')
  const { buf, pos } = s
  const end = pos + length
  for (let i = pos; i < end; i++) {
    if ((buf[i] as number) >= 0x80) {
      if (!isUtf8(buf.subarray(pos, end))) throw new ScanError(pos, 'string is not valid UTF-8')
      break
    }
  }
  s.pos = end
}

/**
 * Compiles a scanner for Avro written with `writer`. `reader` is the type the resolver will read
 * that value as (undefined where the reader skips it): it only decides which `bytes` must be
 * UTF-8 (those read as strings) and which array is the batch's samples.
 */
function compileScanner(writer: avro.Type, reader: avro.Type | undefined): Scanner {
  /** Record scanners by writer record, then reader record: named types can recur. */
  const records = new Map<avro.Type, Map<avro.Type | undefined, Scanner>>()

  const compile = (type: avro.Type, as: avro.Type | undefined, isSamples = false): Scanner => {
    const readAs = as === undefined ? undefined : baseTypeName(as)
    switch (baseTypeName(type)) {
      case 'null':
        return scanNull
      case 'boolean':
        return scanBoolean
      case 'int':
        return scanInt
      case 'long':
        return scanLong
      case 'float':
        return scanFloat
      case 'double':
        return scanDouble
      case 'bytes':
      case 'string':
        // Validated as UTF-8 where the reader reads a string; skipped values need not be.
        return readAs === 'string' ? scanString : scanBytes
      case 'fixed': {
        const size = (type as avro.types.FixedType).size
        return fixedScanner(size, `fixed(${size})`)
      }
      case 'enum': {
        const symbols = (type as avro.types.EnumType).symbols.length
        return (s) => {
          const at = s.pos
          const index = readVarint(s, 5)
          if (index < 0 || index >= symbols) {
            throw new ScanError(at, `enum index ${index} not in [0, ${symbols})`)
          }
        }
      }
      case 'union:unwrapped':
      case 'union:wrapped': {
        const readerIsUnion = readAs?.startsWith('union') ?? false
        const branches = (type as avro.types.UnwrappedUnionType).types.map((branch) =>
          compile(branch, readerIsUnion ? undefined : as, isSamples),
        )
        return (s) => {
          const at = s.pos
          const index = readVarint(s, 5)
          const branch = branches[index]
          if (branch === undefined) {
            throw new ScanError(at, `union index ${index} not in [0, ${branches.length})`)
          }
          branch(s)
        }
      }
      case 'array': {
        const items = (type as avro.types.ArrayType).itemsType
        const readItems = readAs === 'array' ? (as as avro.types.ArrayType).itemsType : undefined
        return blocks(compile(items, readItems), minBytes(items), 'array', isSamples)
      }
      case 'map': {
        const values = (type as avro.types.MapType).valuesType as avro.Type
        const readValues =
          readAs === 'map' ? ((as as avro.types.MapType).valuesType as avro.Type) : undefined
        const value = compile(values, readValues)
        const entry: Scanner = (s) => {
          scanString(s)
          value(s)
        }
        return blocks(entry, 1 + minBytes(values), 'map', false)
      }
      case 'record':
      case 'error': {
        const readFields = readAs === 'record' ? (as as avro.types.RecordType).fields : undefined
        let byReader = records.get(type)
        if (byReader === undefined) {
          byReader = new Map<avro.Type | undefined, Scanner>()
          records.set(type, byReader)
        }
        const known = byReader.get(as)
        if (known !== undefined) return known
        const fields: Scanner[] = []
        const scanner: Scanner = (s) => {
          for (let i = 0; i < fields.length; i++) (fields[i] as Scanner)(s)
        }
        // Registered before its fields are compiled, so that a recursive reference finds it.
        byReader.set(as, scanner)
        const topLevel = type === writer
        for (const field of (type as avro.types.RecordType).fields) {
          const readField = readFields?.find((f) => matches(f, field))
          fields.push(
            compile(field.type, readField?.type, topLevel && readField?.name === 'samples'),
          )
        }
        return scanner
      }
      default:
        throw new Error(`cannot scan Avro type ${type.typeName}`)
    }
  }

  return compile(writer, reader)
}

/** Array or map blocks: `count items`, or `-count size items`, ..., then 0. */
function blocks(item: Scanner, itemBytes: number, what: string, isSamples: boolean): Scanner {
  return (s) => {
    for (;;) {
      const at = s.pos
      let count = readVarint(s, 10)
      if (count === 0) return
      let end = -1
      if (count < 0) {
        count = -count
        const size = readLength(s, `${what} block`)
        end = s.pos + size
      }
      const left = s.buf.length - s.pos
      // Every item takes at least `itemBytes`; zero-byte items are bounded by the message size.
      if (count * itemBytes > left || s.items + count > s.buf.length) {
        throw new ScanError(at, `${what} block of ${count} items cannot fit in ${left} bytes`)
      }
      s.items += count
      if (isSamples) {
        s.samples += count
        if (s.samples > s.maxSamples) throw new TooManySamples(s.samples)
      }
      for (let i = 0; i < count; i++) item(s)
      if (end >= 0 && s.pos !== end) {
        throw new ScanError(
          at,
          `${what} block size says it ends at byte ${end}, items end at ${s.pos}`,
        )
      }
    }
  }
}
