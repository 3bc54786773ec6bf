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
export const lateSampleType = loadType('late-sample.avsc')

/** Decodes one input message; throws on truncated or trailing bytes (avsc's own checks). */
export const decodeTelemetryBatch = (bytes: Buffer): TelemetryBatch =>
  telemetryBatchType.fromBuffer(bytes) as TelemetryBatch

export const encodeTelemetryBatch = (batch: TelemetryBatch): Buffer =>
  telemetryBatchType.toBuffer(batch)

export const encodeWindowAggregate = (aggregate: WindowAggregate): Buffer =>
  windowAggregateType.toBuffer(aggregate)

export const decodeWindowAggregate = (bytes: Buffer): WindowAggregate =>
  windowAggregateType.fromBuffer(bytes) as WindowAggregate

export const encodeLateSample = (sample: LateSample): Buffer => lateSampleType.toBuffer(sample)

export const decodeLateSample = (bytes: Buffer): LateSample =>
  lateSampleType.fromBuffer(bytes) as LateSample
