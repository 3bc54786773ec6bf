import type { KafkaMessage, Message } from 'kafkajs'
import {
  positionRecord,
  ChangelogRecords,
  type ChangelogRecord,
  type ClosedKeys,
  type RestoredState,
} from './changelog'
import { encodeCheckpoint, type Checkpoint } from './checkpoint'
import {
  lateSampleRecord,
  poisonMessageRecord,
  rejectedSamplesRecord,
  type Source,
} from './dead-letter'
import { PoisonMessageError } from './errors'
import type { Logger } from './logger'
import { ResultRecords } from './results'
import {
  PartitionAggregator,
  type AggregatorStats,
  type ClosedWindows,
  type IngestResult,
  type SampleRows,
} from './native'
import { TelemetryDecoder } from './decode'
import {
  encodeWindowAggregate,
  type Sample,
  type TelemetryBatch,
  type WindowAggregate,
} from './schemas'

/** Window geometry, in milliseconds. */
export interface WindowConfig {
  sizeMs: number
  advanceMs: number
  graceMs: number
}

/**
 * Plain Avro with the current input schema, decoded natively. avsc alone is never used: on
 * hostile bytes (huge declared array lengths) it can loop for minutes; TelemetryDecoder bounds
 * every length first.
 */
const plainDecoder = new TelemetryDecoder()

export interface PipelineOptions {
  window: WindowConfig
  /** Decodes input values, natively or with avsc (its `engine`). Default: plain Avro, native. */
  decoder?: TelemetryDecoder
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
  /**
   * Per-window quantiles, estimated within `accuracy` (relative) by a sketch in each window; the
   * results are then written with schemas/window-aggregate-quantiles.avsc. Undefined: none.
   */
  quantiles?: { quantiles: number[]; accuracy: number }
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
  /** The windows the batch closed, for the output topic. */
  results: ResultRecords
  /** Poison messages and rejected samples, for the dead-letter topic. */
  deadLetters: Message[]
  /** Late samples, for the late topic (only with `routeLate`). */
  late: Message[]
  /** At least once: commit this offset with this metadata once `results` are published. */
  commit: { offset: string; metadata: string }
  /** Rejected samples by reason code (counts.rejected in all). */
  rejectedByReason: Map<number, number>
  lastOffset: string
  /** The offset after the last record processed. */
  nextOffset: string
  counts: BatchCounts
}

/** Where a pipeline starts from. */
export type PipelineStart = (
  | /** At least once: replay from the committed offset with this checkpoint (null: fresh). */
    { checkpoint: Checkpoint | null }
    /**
     * Exactly once: the state read from the changelog. Changes are gathered for it across batches
     * until `takeChangelog`.
     */
  | { restored: RestoredState }
) & {
  /** The offset the input resumes at (the committed one), if any: an idle close commits it. */
  resumeAt?: string | null
}

interface DecodedMessage {
  offset: number
  batch: TelemetryBatch
  message: KafkaMessage
}

/** Messages decoded and their samples ingested, whichever engine decoded them. */
interface Ingested {
  samples: number
  result: IngestResult
  /** Messages that could not be decoded; none of their samples was ingested. */
  failures: { message: KafkaMessage; kind: string; reason: string }[]
  /** The samples at result.lateIndexes and result.rejectedIndexes. */
  lateSamples: Sample[]
  rejectedSamples: Sample[]
  /** The message sample `i` came from, and its batch's source id. */
  origin(i: number): { message: KafkaMessage; sourceId: string }
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

/** Samples as rows (the native decoder's late and rejected samples). */
const sampleRows = (rows: SampleRows): Sample[] =>
  rows.seriesKeys.map((seriesKey, i) => ({
    seriesKey,
    eventTime: rows.eventTimes[i] as number,
    value: rows.values[i] as number,
  }))

/** Decodes with avsc (a JS object per sample) and ingests the samples as columns. */
function ingestWithAvsc(
  aggregator: PartitionAggregator,
  decoder: TelemetryDecoder,
  messages: readonly KafkaMessage[],
  maxEventTime: number | null,
): Ingested {
  const failures: Ingested['failures'] = []
  const decoded: DecodedMessage[] = []
  for (const message of messages) {
    const d = decoder.decode(message.value)
    if (d.ok) decoded.push({ offset: Number(message.offset), batch: d.batch, message })
    else failures.push({ message, kind: d.failure.kind, reason: d.failure.message })
  }
  const columns = toColumns(decoded)
  const result = ingest(aggregator, columns, maxEventTime)
  const byOffset = new Map(decoded.map((m) => [m.offset, m]))
  return {
    samples: columns.values.length,
    result,
    failures,
    lateSamples: Array.from(result.lateIndexes, (i) => sampleAt(columns, i)),
    rejectedSamples: Array.from(result.rejectedIndexes, (i) => sampleAt(columns, i)),
    origin: (i) => {
      const m = byOffset.get(columns.offsets[i] as number) as DecodedMessage
      return { message: m.message, sourceId: m.batch.sourceId }
    },
  }
}

/** Decodes in Rust straight into the aggregator's columns: one native call, no JS per sample. */
function ingestNatively(
  aggregator: PartitionAggregator,
  decoder: TelemetryDecoder,
  messages: readonly KafkaMessage[],
  maxEventTime: number | null,
): Ingested {
  const failures: Ingested['failures'] = []
  const located: { message: KafkaMessage; value: Buffer; body: number; root: number }[] = []
  for (const message of messages) {
    const where = decoder.locate(message.value)
    if (where.ok) located.push({ message, value: message.value as Buffer, ...where })
    else failures.push({ message, kind: where.failure.kind, reason: where.failure.message })
  }
  const n = located.length
  const bounds = new Uint32Array(n + 1)
  const bodyStarts = new Uint32Array(n)
  const roots = new Uint32Array(n)
  const offsets = new Float64Array(n)
  located.forEach((m, i) => {
    bounds[i + 1] = (bounds[i] as number) + m.value.length
    bodyStarts[i] = m.body
    roots[i] = m.root
    offsets[i] = Number(m.message.offset)
  })
  const values =
    n === 1 ? (located[0] as { value: Buffer }).value : Buffer.concat(located.map((m) => m.value))
  const out = aggregator.ingestAvro(
    decoder.program.words,
    values,
    bounds,
    bodyStarts,
    roots,
    offsets,
    decoder.maxSamplesPerBatch,
    maxEventTime,
  )
  out.failedMessages.forEach((i, n) => {
    const { message, value } = located[i] as { message: KafkaMessage; value: Buffer }
    const failure = decoder.nativeFailure(
      out.failureKinds[n] as string,
      out.failureReasons[n] as string,
      value,
    )
    failures.push({ message, kind: failure.kind, reason: failure.message })
  })
  // Message order for failures, as the avsc path reports them.
  failures.sort((a, b) => Number(a.message.offset) - Number(b.message.offset))
  // Sample i belongs to the message whose first sample is the last start <= i.
  const starts = new Uint32Array(n + 1)
  out.samplesPerMessage.forEach((count, i) => (starts[i + 1] = (starts[i] as number) + count))
  return {
    samples: starts[n] as number,
    result: out.result,
    failures,
    lateSamples: sampleRows(out.lateSamples),
    rejectedSamples: sampleRows(out.rejectedSamples),
    origin: (i) => {
      let lo = 0
      let hi = n - 1
      while (lo < hi) {
        const mid = (lo + hi + 1) >> 1
        if ((starts[mid] as number) <= i) lo = mid
        else hi = mid - 1
      }
      return {
        message: (located[lo] as { message: KafkaMessage }).message,
        sourceId: out.sourceIds[lo] ?? '',
      }
    },
  }
}

const sampleAt = (c: SampleColumns, i: number): Sample => ({
  seriesKey: c.keys[c.keyIndex[i] as number] ?? '',
  eventTime: c.timestamps[i] as number,
  value: c.values[i] as number,
})

/**
 * The output records of closed windows. With `quantiles` (those the aggregator was configured
 * with), each carries them (window-aggregate-quantiles.avsc): row i's estimates are
 * `closed.quantiles[i * k .. (i + 1) * k]`, NaN when the window's sketch does not hold all its
 * samples (then none are published).
 */
export function encodeClosedWindows(closed: ClosedWindows, quantiles?: number[]): OutputRecord[] {
  const records: OutputRecord[] = new Array<OutputRecord>(closed.seriesKeys.length)
  const k = quantiles?.length ?? 0
  for (let i = 0; i < closed.seriesKeys.length; i++) {
    const seriesKey = closed.seriesKeys[i] as string
    const aggregate: WindowAggregate = {
      seriesKey,
      windowStart: closed.windowStart[i] as number,
      windowEnd: closed.windowEnd[i] as number,
      count: closed.count[i] as number,
      sum: closed.sum[i] as number,
      mean: closed.mean[i] as number,
      min: closed.min[i] as number,
      max: closed.max[i] as number,
    }
    if (quantiles !== undefined) {
      const values = closed.quantiles.subarray(i * k, (i + 1) * k)
      aggregate.quantiles = values.some(Number.isNaN)
        ? []
        : quantiles.map((q, j) => ({ q, value: values[j] as number }))
    }
    records[i] = { key: seriesKey, value: encodeWindowAggregate(aggregate) }
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
  /** Where the input resumed: below replayBelow, a replay has to catch up first. */
  private readonly resumeAt: number
  private processedUpTo: number
  private freed = false

  private readonly trackChanges: boolean
  private lastPosition: number | undefined
  /** Windows closed since the last takeChangelog: tombstones to write. */
  private closedSinceTake: ClosedKeys[] = []
  private readonly decoder: TelemetryDecoder
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
      coalesceChanges: this.trackChanges,
      minEventTimeMs: options.minEventTimeMs,
      maxKeyBytes: options.maxKeyBytes,
      maxOpenWindows: options.maxOpenWindows,
      quantiles: options.quantiles?.quantiles,
      quantileAccuracy: options.quantiles?.accuracy,
    })
    if ('restored' in start) {
      this.aggregator.restore(start.restored.states, start.restored.streamTime)
    }
    this.replayBelow = checkpoint?.processedUpTo ?? 0
    this.resumeAt = start.resumeAt == null ? 0 : Number(start.resumeAt)
    this.processedUpTo = Math.max(this.replayBelow, this.resumeAt)
  }

  process(messages: readonly KafkaMessage[]): BatchOutcome {
    const counts = emptyCounts()
    const deadLetters: Message[] = []
    // Records below replayBelow were processed (and dead-lettered) by an earlier owner: they only
    // rebuild windows still open at the restored stream time.
    const replay = messages.filter((m) => Number(m.offset) < this.replayBelow)
    const live = replay.length === 0 ? messages : messages.slice(replay.length)
    if (replay.length > 0) counts.replayed = this.ingest(replay, null).samples

    const results = new ResultRecords(this.options.quantiles?.quantiles)
    let late: Message[] = []
    const rejectedByReason = new Map<number, number>()
    if (live.length > 0) {
      const skew = this.options.maxFutureSkewMs
      const now = this.options.now ?? Date.now
      const ingested = this.ingest(live, skew == null ? null : now() + skew)
      const { result } = ingested
      counts.messages = live.length
      counts.badMessages = ingested.failures.length
      for (const { message, kind, reason } of ingested.failures) {
        const position = { topic: this.topic, partition: this.partition, offset: message.offset }
        if (this.options.onPoison === 'fail') throw new PoisonMessageError(position, kind, reason)
        this.logger.warn({ ...position, kind, reason }, 'poison message to the dead-letter topic')
        deadLetters.push(poisonMessageRecord(this.source(message), kind, reason))
      }
      counts.samples = ingested.samples
      counts.aggregated = result.aggregated
      counts.late = result.late
      counts.rejected = result.rejected
      for (const code of result.rejectedReasons) {
        rejectedByReason.set(code, (rejectedByReason.get(code) ?? 0) + 1)
      }
      counts.windowsClosed = result.closed.seriesKeys.length
      this.logDropped(ingested)
      results.add(result.closed)
      if (this.trackChanges && result.closed.seriesKeys.length > 0)
        this.closedSinceTake.push(result.closed)
      deadLetters.push(...this.rejectedRecords(ingested))
      if (this.options.routeLate === true) late = this.lateRecords(ingested)
    }

    const last = messages[messages.length - 1]
    const lastOffset = last === undefined ? String(this.processedUpTo - 1) : last.offset
    if (last !== undefined) this.lastPosition = Number(last.offset) + 1
    this.processedUpTo = Math.max(this.processedUpTo, Number(lastOffset) + 1)
    return { ...this.committable(lastOffset), results, deadLetters, late, rejectedByReason, counts }
  }

  /**
   * Idle close: moves stream time to `streamTime` without input, when that closes at least one
   * window, and returns what a batch without records would: the windows closed, the same input
   * offset, the new stream time in the checkpoint (and, exactly once, in the next position
   * record, with their tombstones). Undefined when no window would close, or (at least once)
   * while the replay of a restore has not caught up: windows still being rebuilt must not close
   * before all their samples are back.
   */
  advanceIdle(streamTime: number): BatchOutcome | undefined {
    const due = this.aggregator.nextCloseTime
    const replayed = (this.lastPosition ?? this.resumeAt) >= this.replayBelow
    if (due === null || streamTime < due || !replayed) return undefined
    const closed = this.aggregator.advanceStreamTime(streamTime)
    if (this.trackChanges && closed.seriesKeys.length > 0) this.closedSinceTake.push(closed)
    const counts = emptyCounts()
    counts.windowsClosed = closed.seriesKeys.length
    return {
      ...this.committable(String(this.processedUpTo - 1)),
      results: new ResultRecords(this.options.quantiles?.quantiles, [closed]),
      deadLetters: [],
      late: [],
      rejectedByReason: new Map(),
      counts,
    }
  }

  /** What to commit after processing up to processedUpTo. */
  private committable(
    lastOffset: string,
  ): Pick<BatchOutcome, 'commit' | 'lastOffset' | 'nextOffset'> {
    const low = this.aggregator.lowWatermark
    const commitOffset = low === null ? this.processedUpTo : Math.min(low, this.processedUpTo)
    const checkpoint = { streamTime: this.aggregator.streamTime, processedUpTo: this.processedUpTo }
    return {
      commit: { offset: String(commitOffset), metadata: encodeCheckpoint(checkpoint) },
      lastOffset,
      nextOffset: String(this.processedUpTo),
    }
  }

  /** The stream time at which the oldest open window closes; null when none is open. */
  get nextCloseTime(): number | null {
    return this.aggregator.nextCloseTime
  }

  /** The partition's stream time (null before its first sample). */
  get streamTime(): number | null {
    return this.aggregator.streamTime
  }

  /**
   * Exactly once: the changelog records of everything processed since the last call, for the
   * transaction that commits it: every window touched and still open (once, however many batches
   * touched it), or with `snapshot` every open window; tombstones of the windows closed; and a
   * function making the position record (stream time, next offset and the given snapshot start),
   * which every transaction writes last, whatever its batches held.
   */
  takeChangelog(snapshot: boolean): {
    windows: ChangelogRecords
    position: (snapshotStart: number | null) => ChangelogRecord
  } {
    const closed = this.closedSinceTake
    this.closedSinceTake = []
    const changes = this.aggregator.takeChanges()
    const streamTime = this.aggregator.streamTime
    const nextOffset = this.processedUpTo
    return {
      windows: new ChangelogRecords(
        this.partition,
        snapshot ? this.aggregator.snapshot() : changes,
        closed,
      ),
      position: (snapshotStart) =>
        positionRecord(streamTime, this.partition, nextOffset, snapshotStart),
    }
  }

  /**
   * The offset after the last record this pipeline processed (replayed or not): where its state
   * resumes. Undefined before its first batch (a restored state resumes where it was restored).
   */
  get position(): string | undefined {
    return this.lastPosition === undefined ? undefined : String(this.lastPosition)
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

  private ingest(messages: readonly KafkaMessage[], maxEventTime: number | null): Ingested {
    const ingestWith = this.decoder.engine === 'native' ? ingestNatively : ingestWithAvsc
    return ingestWith(this.aggregator, this.decoder, messages, maxEventTime)
  }

  /** One dead-letter record per (message, reason) holding that message's rejected samples. */
  private rejectedRecords(ingested: Ingested): Message[] {
    const { result } = ingested
    const groups = new Map<string, { i: number; reason: number; samples: Sample[] }>()
    result.rejectedIndexes.forEach((i, n) => {
      const { message } = ingested.origin(i)
      const reason = result.rejectedReasons[n] as number
      const id = `${message.offset}/${reason}`
      let group = groups.get(id)
      if (group === undefined) groups.set(id, (group = { i, reason, samples: [] }))
      group.samples.push(ingested.rejectedSamples[n] as Sample)
    })
    return [...groups.values()].map(({ i, reason, samples }) => {
      const { message, sourceId } = ingested.origin(i)
      return rejectedSamplesRecord(this.source(message), sourceId, reason, samples)
    })
  }

  private lateRecords(ingested: Ingested): Message[] {
    const { sizeMs, advanceMs } = this.window
    const streamTime = this.aggregator.streamTime ?? 0
    return Array.from(ingested.result.lateIndexes, (i, n) => {
      const sample = ingested.lateSamples[n] as Sample
      const windowStart =
        sample.eventTime - (((sample.eventTime % advanceMs) + advanceMs) % advanceMs)
      return lateSampleRecord(sample, {
        topic: this.topic,
        partition: this.partition,
        offset: Number(ingested.origin(i).message.offset),
        streamTime,
        windowStart,
        windowEnd: windowStart + sizeMs,
      })
    })
  }

  private logDropped(ingested: Ingested): void {
    const { result } = ingested
    const first = (indexes: Uint32Array, samples: Sample[]) => {
      const i = indexes[0]
      return i === undefined
        ? undefined
        : { offset: ingested.origin(i).message.offset, ...samples[0] }
    }
    const where = { topic: this.topic, partition: this.partition }
    if (result.late > 0) {
      this.logger.debug(
        { ...where, late: result.late, first: first(result.lateIndexes, ingested.lateSamples) },
        'late samples',
      )
    }
    if (result.rejected > 0) {
      this.logger.warn(
        {
          ...where,
          rejected: result.rejected,
          first: first(result.rejectedIndexes, ingested.rejectedSamples),
        },
        'rejected samples',
      )
    }
  }
}
