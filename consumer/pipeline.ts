import type { KafkaMessage } from 'kafkajs'
import { changelogRecords, type ChangelogRecord, type RestoredState } from './changelog'
import { encodeCheckpoint, type Checkpoint } from './checkpoint'
import { DecodeError } from './errors'
import type { Logger } from './logger'
import {
  PartitionAggregator,
  type AggregatorStats,
  type ClosedWindows,
  type IngestResult,
} from './native'
import { decodeTelemetryBatch, encodeWindowAggregate, type TelemetryBatch } from './schemas'

/** Window geometry, in milliseconds. */
export interface WindowConfig {
  sizeMs: number
  advanceMs: number
  graceMs: number
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

const ingest = (aggregator: PartitionAggregator, c: SampleColumns): IngestResult =>
  aggregator.ingest(c.keys, c.keyIndex, c.timestamps, c.values, c.offsets)

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

  constructor(
    readonly topic: string,
    readonly partition: number,
    window: WindowConfig,
    start: PipelineStart,
    private readonly logger: Logger,
  ) {
    const checkpoint = 'checkpoint' in start ? start.checkpoint : null
    this.trackChanges = 'restored' in start
    this.aggregator = new PartitionAggregator({
      sizeMs: window.sizeMs,
      advanceMs: window.advanceMs,
      graceMs: window.graceMs,
      streamTime: checkpoint?.streamTime ?? undefined,
      trackChanges: this.trackChanges,
    })
    if ('restored' in start)
      this.aggregator.restore(start.restored.states, start.restored.streamTime)
    this.replayBelow = checkpoint?.processedUpTo ?? 0
    this.processedUpTo = this.replayBelow
  }

  process(messages: readonly KafkaMessage[]): BatchOutcome {
    const counts = emptyCounts()
    const replay: DecodedMessage[] = []
    const live: DecodedMessage[] = []
    for (const message of messages) {
      const offset = Number(message.offset)
      const isReplay = offset < this.replayBelow
      if (!isReplay) counts.messages++
      const decoded = this.decode(message, !isReplay)
      if (decoded === undefined) {
        if (!isReplay) counts.badMessages++
        continue
      }
      ;(isReplay ? replay : live).push({ offset, batch: decoded })
    }

    if (replay.length > 0) {
      const columns = toColumns(replay)
      // Replayed samples only rebuild windows still open at the restored stream time.
      ingest(this.aggregator, columns)
      counts.replayed = columns.values.length
    }

    let results: OutputRecord[] = []
    let changelog: ChangelogRecord[] = []
    if (live.length > 0) {
      const columns = toColumns(live)
      const result = ingest(this.aggregator, columns)
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
    }

    const last = messages[messages.length - 1]
    const lastOffset = last === undefined ? String(this.processedUpTo - 1) : last.offset
    this.processedUpTo = Math.max(this.processedUpTo, Number(lastOffset) + 1)
    const low = this.aggregator.lowWatermark
    const commitOffset = low === null ? this.processedUpTo : Math.min(low, this.processedUpTo)
    const checkpoint = { streamTime: this.aggregator.streamTime, processedUpTo: this.processedUpTo }
    return {
      results,
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

  private decode(message: KafkaMessage, report: boolean): TelemetryBatch | undefined {
    const position = { topic: this.topic, partition: this.partition, offset: message.offset }
    try {
      if (message.value === null || message.value.length === 0) {
        throw new DecodeError(position, 'empty message value')
      }
      try {
        return decodeTelemetryBatch(message.value)
      } catch (cause) {
        throw new DecodeError(position, `not a TelemetryBatch: ${(cause as Error).message}`, cause)
      }
    } catch (error) {
      if (report) this.logger.warn({ ...position, err: error }, 'skipping bad message')
      return undefined
    }
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
