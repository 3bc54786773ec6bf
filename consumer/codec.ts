import type avro from 'avsc'
import {
  decodeWindowAggregate as decodeAggregateBody,
  telemetryBatchType,
  windowAggregateQuantilesType,
  windowAggregateType,
  type Quantile,
  type Sample,
  type TelemetryBatch,
  type WindowAggregate,
} from './schemas'

/**
 * The public codec of kafka-window-aggregator's contracts, for TypeScript producers and
 * consumers (`import { encodeTelemetryBatch } from 'kafka-window-aggregator/codec'`), so that
 * nobody hand-rolls Avro. Other languages: build on `schemas/*.avsc`.
 *
 * - Producers: `encodeTelemetryBatch(batch)` → the input topic's message value.
 * - Consumers of the output topic: `decodeWindowAggregate(value)`.
 *
 * Both wire formats are supported: plain Avro binary, and the Confluent wire format (byte 0 =
 * 0x00, bytes 1-4 = big-endian schema id, then Avro binary) for deployments with a Schema
 * Registry: register `telemetryBatchSchema` under the input topic's subject and pass its id.
 */

export type { Quantile, Sample, TelemetryBatch, WindowAggregate }

/** The parsed schemas (avsc types), as the service uses them. */
export { telemetryBatchType, windowAggregateQuantilesType, windowAggregateType }

/** The schemas as JSON, e.g. to register with a Schema Registry. */
export const telemetryBatchSchema: avro.Schema = telemetryBatchType.schema({ exportAttrs: true })
export const windowAggregateSchema: avro.Schema = windowAggregateType.schema({ exportAttrs: true })
/** The output's writer schema with --quantiles: windowAggregateSchema + `quantiles` (default []). */
export const windowAggregateQuantilesSchema: avro.Schema = windowAggregateQuantilesType.schema({
  exportAttrs: true,
})

export interface EncodeOptions {
  /** Default `plain`. */
  wireFormat?: 'plain' | 'confluent'
  /** The registry id of the schema; required for (and only allowed with) `confluent`. */
  schemaId?: number
}

export interface DecodeOptions {
  /**
   * Default `auto`: Confluent when byte 0 is 0x00 and at least 4 bytes follow, else plain.
   * That is unambiguous for the service's output: a plain `WindowAggregate` starts with the
   * length of its series key, never empty (the aggregator rejects empty keys), so never 0x00.
   */
  wireFormat?: 'plain' | 'confluent' | 'auto'
}

/** Encodes one input message value. Throws a `TypeError` naming the first invalid field. */
export const encodeTelemetryBatch = (batch: TelemetryBatch, options: EncodeOptions = {}): Buffer =>
  encode(telemetryBatchType, batch, options)

/**
 * Encodes one output message value (for tests and tools; the service publishes these): with the
 * quantiles schema when `quantiles` is set, else with `window-aggregate.avsc`.
 */
export const encodeWindowAggregate = (
  aggregate: WindowAggregate,
  options: EncodeOptions = {},
): Buffer =>
  encode(
    aggregate.quantiles === undefined ? windowAggregateType : windowAggregateQuantilesType,
    aggregate,
    options,
  )

/**
 * Decodes one output message value, written with or without --quantiles (the writer schema shows
 * in the bytes: see `schemas/window-aggregate-quantiles.avsc`; `quantiles` is then set). With
 * Confluent framing the schema id is not looked up. Throws an `Error` saying what is wrong with
 * the bytes.
 */
export const decodeWindowAggregate = (
  bytes: Buffer,
  options: DecodeOptions = {},
): WindowAggregate =>
  decode(windowAggregateType, bytes, options, decodeAggregateBody) as WindowAggregate

function encode(type: avro.Type, value: unknown, options: EncodeOptions): Buffer {
  const wireFormat = options.wireFormat ?? 'plain'
  const { schemaId } = options
  if (wireFormat === 'plain' && schemaId !== undefined) {
    throw new TypeError('schemaId is only used with wireFormat: confluent')
  }
  if (wireFormat === 'confluent') {
    if (schemaId === undefined || !Number.isInteger(schemaId) || schemaId < 0) {
      throw new RangeError(
        `wireFormat confluent needs a schemaId from 0 to 2^31-1, got ${schemaId}`,
      )
    }
    if (schemaId > 0x7fffffff) {
      throw new RangeError(`schemaId must be at most 2^31-1, got ${schemaId}`)
    }
  }
  let body: Buffer
  try {
    body = type.toBuffer(value)
  } catch (error) {
    throw new TypeError(`invalid ${shortName(type)}: ${describeInvalid(type, value, error)}`)
  }
  if (wireFormat === 'plain') return body
  const framed = Buffer.allocUnsafe(5 + body.length)
  framed[0] = 0
  framed.writeInt32BE(schemaId as number, 1)
  body.copy(framed, 5)
  return framed
}

function decode(
  type: avro.Type,
  bytes: Buffer,
  options: DecodeOptions,
  decodeBody: (body: Buffer) => unknown = (body) => type.fromBuffer(body),
): unknown {
  const wireFormat = options.wireFormat ?? 'auto'
  const framed = bytes.length >= 5 && bytes[0] === 0
  if (wireFormat === 'confluent' && !framed) {
    throw new Error(
      `not a Confluent-framed ${shortName(type)}: expected magic byte 0x00 and a 4-byte schema id`,
    )
  }
  const body = wireFormat === 'plain' || !framed ? bytes : bytes.subarray(5)
  try {
    return decodeBody(body)
  } catch (error) {
    throw new Error(`not a valid ${shortName(type)}: ${(error as Error).message}`, { cause: error })
  }
}

const shortName = (type: avro.Type): string => (type.name ?? 'value').split('.').pop() as string

/** The path and value of the first field that does not fit the schema. */
function describeInvalid(type: avro.Type, value: unknown, error: unknown): string {
  let found: string | undefined
  type.isValid(value, {
    errorHook: (path, got, fieldType) => {
      if (found !== undefined) return
      const where = path.length > 0 ? path.join('.') : 'the value'
      const expected = fieldType.typeName
      const article = /^[aeiou]/.test(expected) ? 'an' : 'a'
      found = `${where} must be ${article} ${expected}, got ${show(got)}`
    },
  })
  return found ?? (error instanceof Error ? error.message : String(error))
}

function show(value: unknown): string {
  if (typeof value === 'string') return JSON.stringify(value.slice(0, 60))
  if (typeof value === 'number' || typeof value === 'boolean' || typeof value === 'bigint') {
    return typeof value === 'bigint' ? `${value}n` : String(value)
  }
  if (value === null || value === undefined) return String(value)
  return Array.isArray(value) ? 'an array' : `a ${typeof value}`
}
