import { readFileSync } from 'node:fs'
import avro from 'avsc'
import { schemaPath } from './paths'

/** One sample of the input contract (`schemas/telemetry-batch.avsc`). */
export interface Sample {
  seriesKey: string
  /** Event time, ms since the epoch. */
  eventTime: number
  value: number
}

/** The input contract: one Kafka message. */
export interface TelemetryBatch {
  sourceId: string
  samples: Sample[]
}

/** The output contract (`schemas/window-aggregate.avsc`): one closed window of one series. */
export interface WindowAggregate {
  seriesKey: string
  windowStart: number
  windowEnd: number
  count: number
  sum: number
  mean: number
  min: number
  max: number
  /**
   * With --quantiles (`schemas/window-aggregate-quantiles.avsc`): the window's quantiles, in the
   * order asked for; empty when unknown. Absent in records written without --quantiles.
   */
  quantiles?: Quantile[]
}

/** One quantile of a window: the estimate of the value of rank floor(q * (count - 1)). */
export interface Quantile {
  q: number
  value: number
}

/** A sample published to the late topic (`schemas/late-sample.avsc`). */
export interface LateSample {
  seriesKey: string
  eventTime: number
  value: number
  windowStart: number
  windowEnd: number
  streamTime: number
  sourceTopic: string
  sourcePartition: number
  sourceOffset: number
}

function loadType(file: string): avro.Type {
  return avro.Type.forSchema(JSON.parse(readFileSync(schemaPath(file), 'utf8')) as avro.Schema)
}

/** Built once: avsc compiles a reader/writer per type. */
export const telemetryBatchType = loadType('telemetry-batch.avsc')
export const windowAggregateType = loadType('window-aggregate.avsc')
/** The output's writer schema with --quantiles: window-aggregate.avsc + `quantiles` (default []). */
export const windowAggregateQuantilesType = loadType('window-aggregate-quantiles.avsc')
export const lateSampleType = loadType('late-sample.avsc')

/** Decodes one input message; throws on truncated or trailing bytes (avsc's own checks). */
export const decodeTelemetryBatch = (bytes: Buffer): TelemetryBatch =>
  telemetryBatchType.fromBuffer(bytes) as TelemetryBatch

export const encodeTelemetryBatch = (batch: TelemetryBatch): Buffer =>
  telemetryBatchType.toBuffer(batch)

/** Writer schema: window-aggregate-quantiles.avsc when `quantiles` is set, else today's. */
export const encodeWindowAggregate = (aggregate: WindowAggregate): Buffer =>
  (aggregate.quantiles === undefined ? windowAggregateType : windowAggregateQuantilesType).toBuffer(
    aggregate,
  )

/**
 * Decodes an output value written with either writer schema. The quantiles schema appends one
 * field, and an Avro array takes at least one byte, so the writer is known from the bytes: a value
 * that window-aggregate.avsc reads to its end was written without quantiles (no `quantiles` in the
 * result); one it leaves bytes of, with them. Throws on truncated or trailing bytes.
 */
export function decodeWindowAggregate(bytes: Buffer): WindowAggregate {
  const plain = windowAggregateType.decode(bytes, 0)
  if (plain.offset === bytes.length) return plain.value as WindowAggregate
  return windowAggregateQuantilesType.fromBuffer(bytes) as WindowAggregate
}

export const encodeLateSample = (sample: LateSample): Buffer => lateSampleType.toBuffer(sample)

export const decodeLateSample = (bytes: Buffer): LateSample =>
  lateSampleType.fromBuffer(bytes) as LateSample
