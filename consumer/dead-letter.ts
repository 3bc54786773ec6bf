import type { IHeaders, KafkaMessage, Message } from 'kafkajs'
import { encodeLateSample, encodeTelemetryBatch, type Sample } from './schemas'

/**
 * Dead-letter records: what the service could not aggregate, with the reason, so nothing is
 * dropped silently. Header names follow Kafka Connect's dead-letter-queue context headers.
 */
export const deadLetterHeaders = {
  kind: 'kwa.error.kind',
  reason: 'kwa.error.reason',
  message: 'kwa.error.message',
  time: 'kwa.error.time',
  sourceTopic: 'kwa.source.topic',
  sourcePartition: 'kwa.source.partition',
  sourceOffset: 'kwa.source.offset',
  sourceTimestamp: 'kwa.source.timestamp',
} as const

/** Why a single sample of a valid batch was rejected (the native reason codes). */
export const rejectionReasons: Record<number, string> = {
  1: 'non-finite-value',
  2: 'invalid-timestamp',
  3: 'unknown-key',
  4: 'empty-key',
  5: 'key-too-long',
  6: 'future-timestamp',
  7: 'window-limit',
}

export const rejectionReason = (code: number): string => rejectionReasons[code] ?? `reason-${code}`

export interface Source {
  topic: string
  partition: number
  message: KafkaMessage
}

function headers(source: Source, context: Record<string, string>): IHeaders {
  const original = Object.fromEntries(
    Object.entries(source.message.headers ?? {}).filter(([name]) => !name.startsWith('kwa.')),
  )
  return {
    ...original,
    ...context,
    [deadLetterHeaders.time]: String(Date.now()),
    [deadLetterHeaders.sourceTopic]: source.topic,
    [deadLetterHeaders.sourcePartition]: String(source.partition),
    [deadLetterHeaders.sourceOffset]: source.message.offset,
    [deadLetterHeaders.sourceTimestamp]: source.message.timestamp,
  }
}

/** A message that is not a usable telemetry batch: its raw bytes and why. */
export function poisonMessageRecord(source: Source, kind: string, message: string): Message {
  return {
    key: source.message.key,
    value: source.message.value,
    headers: headers(source, {
      [deadLetterHeaders.kind]: kind,
      [deadLetterHeaders.message]: message,
    }),
  }
}

/**
 * Samples of one message rejected for one reason, as a TelemetryBatch (plain Avro) that can be
 * fixed and produced again.
 */
export function rejectedSamplesRecord(
  source: Source,
  sourceId: string,
  reasonCode: number,
  samples: Sample[],
): Message {
  const reason = rejectionReason(reasonCode)
  return {
    key: source.message.key,
    value: encodeTelemetryBatch({ sourceId, samples }),
    headers: headers(source, {
      [deadLetterHeaders.kind]: 'rejected-samples',
      [deadLetterHeaders.reason]: reason,
      [deadLetterHeaders.message]: `${samples.length} sample(s) rejected: ${reason}`,
    }),
  }
}

export interface LateSampleContext {
  topic: string
  partition: number
  offset: number
  streamTime: number
  windowStart: number
  windowEnd: number
}

/** A late sample for the late topic (`schemas/late-sample.avsc`), keyed by series key. */
export function lateSampleRecord(sample: Sample, context: LateSampleContext): Message {
  return {
    key: sample.seriesKey,
    value: encodeLateSample({
      ...sample,
      windowStart: context.windowStart,
      windowEnd: context.windowEnd,
      streamTime: context.streamTime,
      sourceTopic: context.topic,
      sourcePartition: context.partition,
      sourceOffset: context.offset,
    }),
  }
}
