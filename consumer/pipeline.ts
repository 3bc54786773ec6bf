import type { KafkaMessage, Message } from 'kafkajs'
import { changelogRecords, type ChangelogRecord, type RestoredState } from './changelog'
import { encodeCheckpoint, type Checkpoint } from './checkpoint'
import {
  lateSampleRecord,
  poisonMessageRecord,
  rejectedSamplesRecord,
  type Source,
} from './dead-letter'
import { PoisonMessageError } from './errors'
import type { Logger } from './logger'
import {
  PartitionAggregator,
  type AggregatorStats,
  type ClosedWindows,
  type IngestResult,
} from './native'
import { TelemetryDecoder } from './decode'
import { encodeWindowAggregate, type Sample, type TelemetryBatch } from './schemas'

/** Window geometry, in milliseconds. */
export interface WindowConfig {
  sizeMs: number
  advanceMs: number
  graceMs: number
}

/** Decodes one message value, or says why it cannot (`kind`: a short machine-readable tag). */
export type MessageDecoder = (
  value: Buffer | null,
) => { ok: true; batch: TelemetryBatch } | { ok: false; failure: { kind: string; message: string } }

/**
 * Plain Avro with the current input schema. avsc alone is not used: on hostile bytes (huge
 * declared array lengths) it can loop for minutes; TelemetryDecoder bounds every length first.
 */
export const plainDecoder: MessageDecoder = new TelemetryDecoder().decode

export interface PipelineOptions {
  window: WindowConfig
  /** Default: `plainDecoder`. */
  decoder?: MessageDecoder
  /** A message that cannot be decoded goes to the dead-letter topic, or stops the service. */
  onPoison?: 'dead-letter' | 'fail'
  /** Publish each late sample (to the late topic). */
  routeLate?: boolean
  /** Samples stamped further ahead of the wall clock are rejected (reason future-timestamp). */
  maxFutureSkewMs?: number | null
  /** Samples stamped before this are rejected as invalid timestamps. */
  minEventTimeMs?: number
  maxKeyBytes?: number
  /** Bound on open (series, window) aggregates; samples needing more are rejected. */
  maxOpenWindows?: number | null
  /** Wall clock, for the future-timestamp bound. */
  now?: () => number
}

/** What one batch did; every sample of a decoded message is aggregated, late or rejected. */
export interface BatchCounts {
  messages: number
  /** Messages that are not telemetry batches (not Avro, truncated, empty...). */
  badMessages: number
  samples: number
  aggregated: number
  late: number
  rejected: number
  /** Samples read again to rebuild open windows after a restore; not counted above. */
  replayed: number
  windowsClosed: number
}

export const emptyCounts = (): BatchCounts => ({
  messages: 0,
  badMessages: 0,
  samples: 0,
  aggregated: 0,
  late: 0,
  rejected: 0,
  replayed: 0,
  windowsClosed: 0,
})

export function addCounts(total: BatchCounts, batch: BatchCounts): void {
  for (const key of Object.keys(total) as (keyof BatchCounts)[]) total[key] += batch[key]
}

/** An output record: key = series key, value = Avro `WindowAggregate`. */
export interface OutputRecord {
  key: string
  value: Buffer
}

export interface BatchOutcome {
  results: OutputRecord[]
  /** Poison messages and rejected samples, for the dead-letter topic. */
  deadLetters: Message[]
  /** Late samples, for the late topic (only with `routeLate`). */
  late: Message[]
  /** At least once: commit this offset with this metadata once `results` are published. */
  commit: { offset: string; metadata: string }
  /** Exactly once: the state changes to write to the changelog with the results. */
  changelog: ChangelogRecord[]
  lastOffset: string
  /** The offset after the last record processed. */
  nextOffset: string
  counts: BatchCounts
}

/** Where a pipeline starts from. */
export type PipelineStart =
  /** At least once: replay from the committed offset with this checkpoint (null: fresh). */
  | { checkpoint: Checkpoint | null }
  /** Exactly once: the state read from the changelog; changes are tracked for it. */
  | { restored: RestoredState }

interface DecodedMessage {
  offset: number
  batch: TelemetryBatch
  message: KafkaMessage
}

/** The samples of some messages as columns for one native call (no object per sample). */
export interface SampleColumns {
  keys: string[]
  keyIndex: Uint32Array
  timestamps: Float64Array
  values: Float64Array
  offsets: Float64Array
}

export function toColumns(messages: readonly DecodedMessage[]): SampleColumns {
  let total = 0
  for (const m of messages) total += m.batch.samples.length
  const keyIds = new Map<string, number>()
  const keys: string[] = []
  const columns: SampleColumns = {
    keys,
    keyIndex: new Uint32Array(total),
    timestamps: new Float64Array(total),
    values: new Float64Array(total),
    offsets: new Float64Array(total),
  }
  let i = 0
  for (const { offset, batch } of messages) {
    for (const sample of batch.samples) {
      let id = keyIds.get(sample.seriesKey)
      if (id === undefined) {
        id = keys.length
        keyIds.set(sample.seriesKey, id)
        keys.push(sample.seriesKey)
      }
      columns.keyIndex[i] = id
      columns.timestamps[i] = sample.eventTime
      columns.values[i] = sample.value
      columns.offsets[i] = offset
      i++
    }
  }
  return columns
}

const ingest = (
  aggregator: PartitionAggregator,
  c: SampleColumns,
  maxEventTime: number | null = null,
): IngestResult =>
  aggregator.ingest(c.keys, c.keyIndex, c.timestamps, c.values, c.offsets, maxEventTime)

const sampleAt = (c: SampleColumns, i: number): Sample => ({
  seriesKey: c.keys[c.keyIndex[i] as number] ?? '',
  eventTime: c.timestamps[i] as number,
  value: c.values[i] as number,
})

export function encodeClosedWindows(closed: ClosedWindows): OutputRecord[] {
  const records: OutputRecord[] = new Array<OutputRecord>(closed.seriesKeys.length)
  for (let i = 0; i < closed.seriesKeys.length; i++) {
    const seriesKey = closed.seriesKeys[i] as string
    records[i] = {
      key: seriesKey,
      value: encodeWindowAggregate({
        seriesKey,
        windowStart: closed.windowStart[i] as number,
        windowEnd: closed.windowEnd[i] as number,
        count: closed.count[i] as number,
        sum: closed.sum[i] as number,
        mean: closed.mean[i] as number,
        min: closed.min[i] as number,
        max: closed.max[i] as number,
      }),
    }
  }
  return records
}

/**
 * The data path of one input partition: decode → aggregate → results to publish and the
 * offset to commit after them. Owns the partition's native aggregator.
 */
export class PartitionPipeline {
  private readonly aggregator: PartitionAggregator
  /** Records below this offset were processed by an earlier owner: replay them. */
  private readonly replayBelow: number
  private processedUpTo: number
  private freed = false

  private readonly trackChanges: boolean
  private readonly decoder: MessageDecoder
  private readonly window: WindowConfig

  constructor(
    readonly topic: string,
    readonly partition: number,
    private readonly options: PipelineOptions,
    start: PipelineStart,
    private readonly logger: Logger,
  ) {
    const checkpoint = 'checkpoint' in start ? start.checkpoint : null
    this.window = options.window
    this.decoder = options.decoder ?? plainDecoder
    this.trackChanges = 'restored' in start
    this.aggregator = new PartitionAggregator({
      sizeMs: this.window.sizeMs,
      advanceMs: this.window.advanceMs,
      graceMs: this.window.graceMs,
      streamTime: checkpoint?.streamTime ?? undefined,
      trackChanges: this.trackChanges,
      minEventTimeMs: options.minEventTimeMs,
      maxKeyBytes: options.maxKeyBytes,
      maxOpenWindows: options.maxOpenWindows,
    })
    if ('restored' in start) {
      this.aggregator.restore(start.restored.states, start.restored.streamTime)
    }
    this.replayBelow = checkpoint?.processedUpTo ?? 0
    this.processedUpTo = this.replayBelow
  }

  process(messages: readonly KafkaMessage[]): BatchOutcome {
    const counts = emptyCounts()
    const deadLetters: Message[] = []
    const replay: DecodedMessage[] = []
    const live: DecodedMessage[] = []
    for (const message of messages) {
      const offset = Number(message.offset)
      const isReplay = offset < this.replayBelow
      const decoded = this.decoder(message.value)
      if (isReplay) {
        // Processed (and dead-lettered) by an earlier owner: only rebuild open windows.
        if (decoded.ok) replay.push({ offset, batch: decoded.batch, message })
        continue
      }
      counts.messages++
      if (decoded.ok) {
        live.push({ offset, batch: decoded.batch, message })
        continue
      }
      counts.badMessages++
      const { kind, message: reason } = decoded.failure
      const position = { topic: this.topic, partition: this.partition, offset: message.offset }
      if (this.options.onPoison === 'fail') throw new PoisonMessageError(position, kind, reason)
      this.logger.warn({ ...position, kind, reason }, 'poison message to the dead-letter topic')
      deadLetters.push(poisonMessageRecord(this.source(message), kind, reason))
    }

    if (replay.length > 0) {
      const columns = toColumns(replay)
      // Replayed samples only rebuild windows still open at the restored stream time.
      ingest(this.aggregator, columns)
      counts.replayed = columns.values.length
    }

    let results: OutputRecord[] = []
    let changelog: ChangelogRecord[] = []
    let late: Message[] = []
    if (live.length > 0) {
      const columns = toColumns(live)
      const skew = this.options.maxFutureSkewMs
      const now = this.options.now ?? Date.now
      const result = ingest(this.aggregator, columns, skew == null ? null : now() + skew)
      counts.samples = columns.values.length
      counts.aggregated = result.aggregated
      counts.late = result.late
      counts.rejected = result.rejected
      counts.windowsClosed = result.closed.seriesKeys.length
      this.logDropped(result, columns)
      results = encodeClosedWindows(result.closed)
      if (this.trackChanges && result.changes) {
        changelog = changelogRecords(result.changes, result.closed, this.aggregator.streamTime)
      }
      deadLetters.push(...this.rejectedRecords(result, columns, live))
      if (this.options.routeLate === true) late = this.lateRecords(result, columns)
    }

    const last = messages[messages.length - 1]
    const lastOffset = last === undefined ? String(this.processedUpTo - 1) : last.offset
    this.processedUpTo = Math.max(this.processedUpTo, Number(lastOffset) + 1)
    const low = this.aggregator.lowWatermark
    const commitOffset = low === null ? this.processedUpTo : Math.min(low, this.processedUpTo)
    const checkpoint = { streamTime: this.aggregator.streamTime, processedUpTo: this.processedUpTo }
    return {
      results,
      deadLetters,
      late,
      commit: { offset: String(commitOffset), metadata: encodeCheckpoint(checkpoint) },
      changelog,
      lastOffset,
      nextOffset: String(this.processedUpTo),
      counts,
    }
  }

  get stats(): AggregatorStats {
    return this.aggregator.stats
  }

  /** Returns the native memory now; idempotent. */
  free(): void {
    if (this.freed) return
    this.freed = true
    this.aggregator.free()
  }

  private source(message: KafkaMessage): Source {
    return { topic: this.topic, partition: this.partition, message }
  }

  /** One dead-letter record per (message, reason) holding that message's rejected samples. */
  private rejectedRecords(
    result: IngestResult,
    columns: SampleColumns,
    live: readonly DecodedMessage[],
  ): Message[] {
    const groups = new Map<string, { offset: number; reason: number; samples: Sample[] }>()
    result.rejectedIndexes.forEach((i, n) => {
      const offset = columns.offsets[i] as number
      const reason = result.rejectedReasons[n] as number
      const id = `${offset}/${reason}`
      let group = groups.get(id)
      if (group === undefined) groups.set(id, (group = { offset, reason, samples: [] }))
      group.samples.push(sampleAt(columns, i))
    })
    if (groups.size === 0) return []
    const byOffset = new Map(live.map((m) => [m.offset, m]))
    return [...groups.values()].map(({ offset, reason, samples }) => {
      const decoded = byOffset.get(offset) as DecodedMessage
      return rejectedSamplesRecord(
        this.source(decoded.message),
        decoded.batch.sourceId,
        reason,
        samples,
      )
    })
  }

  private lateRecords(result: IngestResult, columns: SampleColumns): Message[] {
    const { sizeMs, advanceMs } = this.window
    const streamTime = this.aggregator.streamTime ?? 0
    return Array.from(result.lateIndexes, (i) => {
      const sample = sampleAt(columns, i)
      const windowStart =
        sample.eventTime - (((sample.eventTime % advanceMs) + advanceMs) % advanceMs)
      return lateSampleRecord(sample, {
        topic: this.topic,
        partition: this.partition,
        offset: columns.offsets[i] as number,
        streamTime,
        windowStart,
        windowEnd: windowStart + sizeMs,
      })
    })
  }

  private logDropped(result: IngestResult, columns: SampleColumns): void {
    const first = (indexes: Uint32Array) => {
      const i = indexes[0]
      return i === undefined
        ? undefined
        : {
            offset: columns.offsets[i],
            seriesKey: columns.keys[columns.keyIndex[i] as number],
            eventTime: columns.timestamps[i],
          }
    }
    const where = { topic: this.topic, partition: this.partition }
    if (result.late > 0) {
      this.logger.debug(
        { ...where, late: result.late, first: first(result.lateIndexes) },
        'late samples',
      )
    }
    if (result.rejected > 0) {
      this.logger.warn(
        { ...where, rejected: result.rejected, first: first(result.rejectedIndexes) },
        'rejected samples',
      )
    }
  }
}
