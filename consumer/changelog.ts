import type { Admin, Consumer, Kafka } from 'kafkajs'
import { randomUUID } from 'node:crypto'
import { aclResource, asAuthorizationError, KwaError } from './errors'
import type { Logger } from './logger'
import { retryWithBackoff } from './retry'
import { RecordGroup, runsOf, type EncodedRun } from './encoded-records'
import { encodeChangelog, type ClosedWindows, type WindowStates } from './native'

/**
 * The state changelog: a compacted topic co-partitioned with the input. Partition p holds the
 * open windows of input partition p, written in the same transaction as the batch's results and
 * offsets, so state, output and offsets always agree.
 *
 * Records (an internal format, versioned by its first byte):
 *   window:      key `W` + int64 BE window start + UTF-8 series key
 *                value 1 + float64 LE × 6: count, sum, compensation, min, max, first offset;
 *                with --quantiles, 2 + the same + the window's sketch (its exact state, the
 *                native core's encoding, to the end of the value)
 *                (null value = tombstone: the window closed)
 *   position:    key `T`, value 3 + float64 LE stream time (NaN: none yet) + float64 LE next
 *                input offset + float64 LE snapshot start; written last by every transaction, so
 *                the changelog itself says which input its state holds, and where a restore may
 *                start reading (below). Versions 1 (1 + stream time) and 2 (without the
 *                snapshot start) are still read.
 *
 * Snapshots: now and then a transaction writes every open window (not only those it changed). Its
 * first changelog record is the snapshot start: every window open since then has a record at or
 * after it, so reading from there to the end gives the whole state, however long the partition's
 * history is (compaction keeps the latest record of a key, and a later one supersedes it). A
 * restore reads the last position record (the one before the last transaction's commit marker)
 * and then from its snapshot start (NaN: unknown, read from the log start; -1: the position record
 * itself, written by a snapshot of no window).
 */
export interface ChangelogRecord {
  key: Buffer
  value: Buffer | null
  /** The changelog partition: the input partition's. */
  partition: number
}

const formatVersion = 1
/** A window record with its quantile sketch after the fixed fields. */
const sketchVersion = 2
const fixedLength = 1 + 6 * 8
const positionVersion = 3
const windowTag = 0x57 // 'W'
const positionKey = Buffer.from('T')

function windowKey(start: number, seriesKey: string): Buffer {
  const key = Buffer.allocUnsafe(9 + Buffer.byteLength(seriesKey))
  key[0] = windowTag
  // int64 big-endian from a safe integer, without a BigInt per record.
  const high = Math.floor(start / 2 ** 32)
  key.writeInt32BE(high, 1)
  key.writeUInt32BE(start - high * 2 ** 32, 5)
  key.write(seriesKey, 9, 'utf8')
  return key
}

/** Windows that closed: their start and series key (a `ClosedWindows`, or a part of one). */
export type ClosedKeys = Pick<ClosedWindows, 'windowStart' | 'seriesKeys'>

/**
 * Records for what a transaction changed: the open windows its batches touched (once each),
 * tombstones for the windows they closed, and the position (stream time and the next input
 * offset, the same offset the transaction commits for the group).
 */
export function changelogRecords(
  changes: WindowStates | null,
  closed: ClosedKeys | readonly ClosedKeys[] | null,
  streamTime: number | null,
  partition: number,
  nextOffset: number,
  snapshotStart: number | null = null,
): ChangelogRecord[] {
  const records = windowRecords(changes, closed, partition)
  records.push(positionRecord(streamTime, partition, nextOffset, snapshotStart))
  return records
}

/** A part of a transaction's window records: open windows' states, or closed windows. */
export type ChangelogPart = { states: WindowStates } | { closed: ClosedKeys }

/**
 * The window records of a transaction, as the service writes them: upserts of the states, then
 * tombstones of the closed windows, all in the input's partition, encoded natively
 * (`encodeChangelog`, the format above) when kafkajs builds the request.
 */
export class ChangelogRecords extends RecordGroup<ChangelogPart> {
  constructor(
    private readonly partition: number,
    changes: WindowStates | null = null,
    closed: readonly ClosedKeys[] = [],
  ) {
    super()
    if (changes !== null) this.add({ states: changes })
    for (const keys of closed) this.add({ closed: keys })
  }

  /** The records, all in the input's partition (the changelog is co-partitioned with it). */
  encode(): EncodedRun[] {
    const states: WindowStates[] = []
    const closed: ClosedKeys[] = []
    for (const part of this.parts) {
      if ('states' in part) states.push(part.states)
      else closed.push(part.closed)
    }
    return runsOf(encodeChangelog(states, closed, this.partition))
  }

  protected partRows(part: ChangelogPart): number {
    return 'states' in part ? part.states.seriesKeys.length : part.closed.seriesKeys.length
  }

  protected rowBytes(part: ChangelogPart, i: number): number {
    if (!('states' in part)) return 64 + 9 + Buffer.byteLength(part.closed.seriesKeys[i] as string)
    const { seriesKeys, sketchEnds: ends } = part.states
    const sketch =
      ends === undefined ? 0 : (ends[i] as number) - (i === 0 ? 0 : (ends[i - 1] as number))
    return 64 + 9 + Buffer.byteLength(seriesKeys[i] as string) + fixedLength + sketch
  }

  protected empty(): ChangelogRecords {
    return new ChangelogRecords(this.partition)
  }

  protected slice(part: ChangelogPart, from: number, to: number): ChangelogPart {
    if (!('states' in part)) {
      const { seriesKeys, windowStart } = part.closed
      return {
        closed: {
          seriesKeys: seriesKeys.slice(from, to),
          windowStart: windowStart.subarray(from, to),
        },
      }
    }
    const s = part.states
    const states: WindowStates = {
      seriesKeys: s.seriesKeys.slice(from, to),
      windowStart: s.windowStart.subarray(from, to),
      count: s.count.subarray(from, to),
      sum: s.sum.subarray(from, to),
      compensation: s.compensation.subarray(from, to),
      min: s.min.subarray(from, to),
      max: s.max.subarray(from, to),
      firstOffset: s.firstOffset.subarray(from, to),
    }
    if (s.sketchEnds !== undefined && s.sketchBytes !== undefined) {
      const base = from === 0 ? 0 : (s.sketchEnds[from - 1] as number)
      const ends = s.sketchEnds.subarray(from, to)
      states.sketchEnds = ends.map((end) => end - base)
      states.sketchBytes = s.sketchBytes.subarray(base, to === from ? base : ends[ends.length - 1])
    }
    return { states }
  }
}

/**
 * The window records of a transaction, one message each, built in JS: upserts of `changes`,
 * tombstones of `closed`. The service writes ChangelogRecords (the same bytes, built natively);
 * tests and tools write these to set up a changelog.
 */
export function windowRecords(
  changes: WindowStates | null,
  closed: ClosedKeys | readonly ClosedKeys[] | null,
  partition: number,
): ChangelogRecord[] {
  const records: ChangelogRecord[] = []
  const sketches = changes?.sketchBytes
  const ends = changes?.sketchEnds
  for (let i = 0; changes !== null && i < changes.seriesKeys.length; i++) {
    const sketchStart = i === 0 ? 0 : (ends?.[i - 1] ?? 0)
    const sketch = sketches?.subarray(sketchStart, ends?.[i] ?? 0)
    const sketchLength = sketch?.length ?? 0
    const value = Buffer.allocUnsafe(fixedLength + sketchLength)
    value[0] = sketchLength === 0 ? formatVersion : sketchVersion
    if (sketch !== undefined) value.set(sketch, fixedLength)
    value.writeDoubleLE(changes.count[i] as number, 1)
    value.writeDoubleLE(changes.sum[i] as number, 9)
    value.writeDoubleLE(changes.compensation[i] as number, 17)
    value.writeDoubleLE(changes.min[i] as number, 25)
    value.writeDoubleLE(changes.max[i] as number, 33)
    value.writeDoubleLE(changes.firstOffset[i] as number, 41)
    records.push({
      key: windowKey(changes.windowStart[i] as number, changes.seriesKeys[i] as string),
      value,
      partition,
    })
  }
  const closedLists = closed === null ? [] : Array.isArray(closed) ? closed : [closed]
  for (const list of closedLists as readonly ClosedKeys[]) {
    for (let i = 0; i < list.seriesKeys.length; i++) {
      records.push({
        key: windowKey(list.windowStart[i] as number, list.seriesKeys[i] as string),
        value: null,
        partition,
      })
    }
  }
  return records
}

/**
 * The position record: stream time, next input offset, and the snapshot start (null: unknown;
 * -1: this record itself; see the format above).
 */
export function positionRecord(
  streamTime: number | null,
  partition: number,
  nextOffset: number,
  snapshotStart: number | null,
): ChangelogRecord {
  const value = Buffer.allocUnsafe(25)
  value[0] = positionVersion
  value.writeDoubleLE(streamTime ?? Number.NaN, 1)
  value.writeDoubleLE(nextOffset, 9)
  value.writeDoubleLE(snapshotStart ?? Number.NaN, 17)
  return { key: positionKey, value, partition }
}

/** The state a changelog partition holds: what a new owner restores. */
export interface RestoredState {
  states: WindowStates
  streamTime: number | null
  /**
   * The next input offset of the last transaction the state holds: where processing resumes.
   * Null when the changelog holds no position (empty, or written by a kwa before 0.2).
   */
  nextOffset: string | null
  /** Changelog records read. */
  records: number
  /** The changelog partition's end offset the restore read up to (set by ChangelogReader). */
  endOffset?: bigint
  /** Where the last snapshot starts (see the format), when the position record says. */
  snapshotStart?: bigint
}

export class ChangelogError extends KwaError {}

/** Folds changelog records (in offset order) into the latest state, as compaction would. */
export class ChangelogState {
  private readonly windows = new Map<string, { start: number; seriesKey: string; value: Buffer }>()
  private streamTime: number | null = null
  private nextOffset: string | null = null
  /** Set by a position record: whether it holds a snapshot start, and which. */
  snapshotStart: bigint | null = null
  /** Whether a position record was folded. */
  hasPosition = false
  records = 0

  /** Folds the record at changelog offset `offset` (needed for snapshot starts only). */
  fold(key: Buffer | null, value: Buffer | null, offset = -1): void {
    this.records++
    if (key === null || key.length === 0) throw new ChangelogError('changelog record without a key')
    if (key.equals(positionKey)) {
      if (value !== null) this.foldPosition(value, offset)
      return
    }
    if (key[0] !== windowTag || key.length < 9)
      throw new ChangelogError(`unknown changelog key ${key.toString('hex')}`)
    const id = key.toString('latin1')
    if (value === null) {
      this.windows.delete(id)
      return
    }
    const start = Number(key.readBigInt64BE(1))
    this.windows.set(id, {
      start,
      seriesKey: key.toString('utf8', 9),
      value: readWindowValue(value),
    })
  }

  private foldPosition(value: Buffer, offset: number): void {
    this.hasPosition = true
    this.snapshotStart = null
    const version = value[0]
    if ((value.length === 17 && version === 2) || (value.length === 25 && version === 3)) {
      const streamTime = value.readDoubleLE(1)
      const nextOffset = value.readDoubleLE(9)
      if (!Number.isSafeInteger(nextOffset) || nextOffset < 0)
        throw new ChangelogError(`changelog position with an invalid offset ${nextOffset}`)
      this.streamTime = Number.isNaN(streamTime) ? null : streamTime
      this.nextOffset = String(nextOffset)
      const start = version === 3 ? value.readDoubleLE(17) : Number.NaN
      if (start === -1 && offset >= 0) this.snapshotStart = BigInt(offset)
      else if (Number.isSafeInteger(start) && start >= 0) this.snapshotStart = BigInt(start)
      return
    }
    this.streamTime = readVersioned(value, 9).readDoubleLE(1)
  }

  /**
   * The folded state. With `closedBefore` (the restored stream time minus grace), windows with
   * `start + sizeMs <= closedBefore` are left out: they had closed, and only the compaction of
   * their tombstone while this restore read the partition (after delete.retention.ms) let their
   * last update through.
   */
  toRestoredState(window?: { sizeMs: number; graceMs: number }): RestoredState {
    if (window !== undefined && this.streamTime !== null) {
      const closeTime = this.streamTime - window.graceMs
      for (const [id, { start }] of this.windows) {
        if (start + window.sizeMs <= closeTime) this.windows.delete(id)
      }
    }
    const n = this.windows.size
    // Sketches only when some record has one (written with --quantiles); the others get none.
    let sketchBytes = 0
    for (const { value } of this.windows.values()) sketchBytes += value.length - fixedLength
    const sketches = sketchBytes > 0 ? Buffer.allocUnsafe(sketchBytes) : undefined
    const sketchEnds = sketches === undefined ? undefined : new Uint32Array(n)
    let sketchAt = 0
    const states: WindowStates = {
      seriesKeys: new Array<string>(n),
      windowStart: new Float64Array(n),
      count: new Float64Array(n),
      sum: new Float64Array(n),
      compensation: new Float64Array(n),
      min: new Float64Array(n),
      max: new Float64Array(n),
      firstOffset: new Float64Array(n),
    }
    let i = 0
    for (const { start, seriesKey, value } of this.windows.values()) {
      states.seriesKeys[i] = seriesKey
      states.windowStart[i] = start
      states.count[i] = value.readDoubleLE(1)
      states.sum[i] = value.readDoubleLE(9)
      states.compensation[i] = value.readDoubleLE(17)
      states.min[i] = value.readDoubleLE(25)
      states.max[i] = value.readDoubleLE(33)
      states.firstOffset[i] = value.readDoubleLE(41)
      if (sketches !== undefined && sketchEnds !== undefined) {
        sketchAt += value.copy(sketches, sketchAt, fixedLength)
        sketchEnds[i] = sketchAt
      }
      i++
    }
    if (sketches !== undefined) {
      states.sketchBytes = sketches
      states.sketchEnds = sketchEnds
    }
    return {
      states,
      streamTime: this.streamTime,
      nextOffset: this.nextOffset,
      records: this.records,
      ...(this.snapshotStart !== null && { snapshotStart: this.snapshotStart }),
    }
  }
}

/** A window value: version 1 (fixed fields), or 2 (fixed fields + sketch). */
function readWindowValue(value: Buffer): Buffer {
  if (value[0] === sketchVersion && value.length > fixedLength) return value
  return readVersioned(value, fixedLength)
}

function readVersioned(value: Buffer, length: number): Buffer {
  if (value.length !== length || value[0] !== formatVersion) {
    throw new ChangelogError(
      `changelog value of an unknown format (${value.length} bytes, version ${value[0]})`,
    )
  }
  return value
}

interface PendingRestore {
  state: ChangelogState
  /** Records below are skipped (a fetch returns whole record batches). */
  startOffset: number
  /** Only position records are folded (looking for the last one). */
  positionsOnly: boolean
  endOffset: bigint
  resolve: () => void
  reject: (error: unknown) => void
}

/**
 * How far back from its end a restore looks for the last committed position record when the
 * partition ends with an aborted transaction: more than one transaction's changelog records
 * (a snapshot of a partition's open windows) is rare; then the partition is read from its start.
 */
const TAIL_SCAN_RECORDS = 50_000n

const isPositionKey = (key: Buffer | null): boolean =>
  key !== null && key.length === 1 && key[0] === 0x54 // 'T'

/**
 * How long reading one changelog partition to its end may take before the restore fails (and is
 * retried by the partition's next batch). Also part of the main consumer's stall bound: a batch
 * may legitimately wait this long for its restore.
 */
export const RESTORE_READ_TIMEOUT_MS = 120_000

/** Default bound of the end-offset fetch retries: the default --session-timeout. */
export const RESTORE_FETCH_RETRY_BOUND_MS = 30_000

export interface ChangelogReaderOptions {
  /** How long to retry the end-offset fetch of a restore (transient broker errors). */
  fetchRetryBoundMs?: number
  /** Called for each changelog batch a restore reads: progress, for the stall watchdog. */
  onProgress?: () => void
}

/** The reader's consumer crashed: restores in progress fail, and with `restart` false, all later. */
export class ChangelogReaderCrashedError extends KwaError {}

/**
 * Reads whole changelog partitions on demand. kafkajs has no manual assignment, so one consumer
 * in a private group holds every changelog partition, paused; a restore seeks one partition to
 * its start, resumes it until its end offset, and pauses it again.
 */
export class ChangelogReader {
  private readonly consumer: Consumer
  private readonly admin: Admin
  private readonly groupId: string
  private readonly pending = new Map<number, PendingRestore>()
  private dead: KwaError | undefined
  private onDeath: ((error: KwaError) => void) | undefined
  /**
   * Settles when the reader's consumer crashed and kafkajs will not restart it: no restore can
   * succeed any more.
   */
  readonly died: Promise<KwaError>

  constructor(
    kafka: Kafka,
    private readonly topic: string,
    groupId: string,
    private readonly log: Logger,
    private readonly options: ChangelogReaderOptions = {},
  ) {
    this.groupId = `${groupId}.restore.${randomUUID()}`
    this.consumer = kafka.consumer({
      groupId: this.groupId,
      maxWaitTimeInMs: 100,
      // Restores read whole partitions: fewer, larger fetches.
      maxBytesPerPartition: 8 * 1024 * 1024,
      maxBytes: 64 * 1024 * 1024,
      readUncommitted: false,
    })
    this.admin = kafka.admin()
    this.died = new Promise((resolve) => (this.onDeath = resolve))
  }

  /** Connects and joins the reader's private group; fails if its consumer crashes before that. */
  async start(): Promise<void> {
    await Promise.all([this.consumer.connect(), this.admin.connect()])
    await this.consumer.subscribe({ topic: this.topic, fromBeginning: true })
    // Batches of transaction markers only never reach eachBatch; their end still counts.
    this.consumer.on(this.consumer.events.END_BATCH_PROCESS, ({ payload }) => {
      this.advance(payload.partition, BigInt(payload.lastOffset) + 1n)
    })
    let crashedBeforeJoin: ((error: Error) => void) | undefined
    this.consumer.on(this.consumer.events.CRASH, ({ payload }) => {
      const error = this.crashed(payload.error, payload.restart)
      crashedBeforeJoin?.(error)
    })
    const joined = new Promise<void>((resolve, reject) => {
      crashedBeforeJoin = reject
      this.consumer.on(this.consumer.events.GROUP_JOIN, () => {
        crashedBeforeJoin = undefined
        // Every (re)join: only partitions being restored are fetched.
        this.consumer.pause([{ topic: this.topic }])
        const restoring = [...this.pending.keys()]
        if (restoring.length > 0)
          this.consumer.resume([{ topic: this.topic, partitions: restoring }])
        resolve()
      })
    })
    await this.consumer.run({
      autoCommit: false,
      eachBatch: ({ batch }) => {
        const restore = this.pending.get(batch.partition)
        if (restore === undefined) return Promise.resolve()
        this.options.onProgress?.()
        try {
          const end = Number(restore.endOffset)
          for (const m of batch.messages) {
            const offset = Number(m.offset)
            if (offset < restore.startOffset || offset >= end) continue
            if (restore.positionsOnly && !isPositionKey(m.key)) continue
            restore.state.fold(m.key, m.value, offset)
          }
        } catch (error) {
          this.finish(batch.partition, error)
        }
        return Promise.resolve()
      },
    })
    await joined
  }

  async stop(): Promise<void> {
    for (const partition of [...this.pending.keys()])
      this.finish(partition, new KwaError('stopping'))
    await Promise.all([this.consumer.disconnect(), this.admin.disconnect()])
  }

  /**
   * A crash ends every restore in progress at once rather than at its timeout: kafkajs' restart
   * (if any) starts a new consumer group session, which forgets the restores' seeks.
   */
  private crashed(cause: Error, restart: boolean): KwaError {
    const refused = this.refused(cause, 'read the changelog')
    if (refused !== undefined) restart = false
    const error =
      refused ??
      new ChangelogReaderCrashedError(
        `changelog reader (group ${this.groupId}) crashed` +
          `${restart ? '; kafkajs restarts it' : ' and kafkajs will not restart it'}: ${cause.message}`,
        // No cause: kafkajs (through a failed batch) would judge the cause instead.
        { retriable: restart },
      )
    const restoring = [...this.pending.keys()]
    this.log[restart ? 'warn' : 'error'](
      { topic: this.topic, partitions: restoring, restart, err: cause },
      'changelog reader crashed; restores in progress fail',
    )
    for (const partition of restoring) this.finish(partition, error)
    if (!restart) {
      this.dead ??= error
      this.onDeath?.(error)
    }
    return error
  }

  /**
   * The latest state of one changelog partition (read_committed, up to its last stable offset),
   * without the windows that `window` says had closed at its stream time. Restores of different
   * partitions run at once: the shared consumer fetches every partition being restored.
   */
  async restore(
    partition: number,
    timeoutMs = RESTORE_READ_TIMEOUT_MS,
    window?: { sizeMs: number; graceMs: number },
  ): Promise<RestoredState> {
    const { state, endOffset } = await this.read(partition, timeoutMs)
    return { ...state.toRestoredState(window), endOffset }
  }

  /** A changelog partition's log start and end offsets (retried within the fetch bound). */
  async offsets(partition: number): Promise<{ low: bigint; high: bigint }> {
    const fetch = () =>
      this.admin.fetchTopicOffsets(this.topic).catch((error: unknown) => {
        throw this.refused(error, `fetch the offsets of changelog ${this.topic}`) ?? error
      })
    const offsets = await retryWithBackoff(fetch, {
      what: `fetching the end offsets of changelog ${this.topic}`,
      boundMs: this.options.fetchRetryBoundMs ?? RESTORE_FETCH_RETRY_BOUND_MS,
      log: this.log,
      where: { topic: this.topic, partition },
    })
    const entry = offsets.find((o) => o.partition === partition)
    if (entry === undefined)
      throw new KwaError(`changelog ${this.topic} has no partition ${partition}`)
    return { low: BigInt(entry.low), high: BigInt(entry.high) }
  }

  /**
   * Reads a partition's state: the last position record first (just before the last commit
   * marker), then from its snapshot start to the end; from the log start when the tail holds no
   * snapshot start (an aborted transaction last, or a changelog written before snapshots).
   */
  private async read(
    partition: number,
    timeoutMs: number,
  ): Promise<{ state: ChangelogState; endOffset: bigint }> {
    if (this.pending.has(partition))
      throw new KwaError(`changelog ${this.topic}[${partition}] is being restored already`)
    this.throwIfDead()
    const { low, high: endOffset } = await this.offsets(partition)
    if (endOffset <= low) return { state: new ChangelogState(), endOffset }
    const deadline = Date.now() + timeoutMs
    let start = low
    // The last committed position record: just before the last commit marker, or, when the
    // partition ends with an aborted transaction (an old owner fenced mid-commit), further back.
    for (const back of [2n, TAIL_SCAN_RECORDS]) {
      const from = endOffset - back > low ? endOffset - back : low
      const tail = await this.readRange(partition, from, endOffset, deadline, true)
      if (tail.hasPosition) {
        if (tail.snapshotStart !== null && tail.snapshotStart >= low) start = tail.snapshotStart
        break
      }
      if (from === low) break
    }
    const state = await this.readRange(partition, start, endOffset, deadline)
    this.log.debug(
      { topic: this.topic, partition, offset: String(start), records: state.records },
      'changelog read',
    )
    return { state, endOffset }
  }

  /** Folds the records of [from, to) of a partition (only position records: `positionsOnly`). */
  private async readRange(
    partition: number,
    from: bigint,
    to: bigint,
    deadline: number,
    positionsOnly = false,
  ): Promise<ChangelogState> {
    // It may have died meanwhile: nothing would ever finish this read.
    this.throwIfDead()
    const state = new ChangelogState()
    const done = new Promise<void>((resolve, reject) => {
      this.pending.set(partition, {
        state,
        positionsOnly,
        startOffset: Number(from),
        endOffset: to,
        resolve,
        reject,
      })
    })
    const timer = setTimeout(
      () =>
        this.finish(
          partition,
          new KwaError(`restoring ${this.topic}[${partition}] timed out`, { retriable: true }),
        ),
      Math.max(0, deadline - Date.now()),
    )
    try {
      try {
        this.consumer.seek({ topic: this.topic, partition, offset: String(from) })
        this.consumer.resume([{ topic: this.topic, partitions: [partition] }])
      } catch (error) {
        // No consumer group between a crash and kafkajs' restart: the next attempt may work.
        throw new KwaError(`changelog reader not running: ${(error as Error).message}`, {
          retriable: true,
        })
      }
      await done
    } finally {
      clearTimeout(timer)
      this.pending.delete(partition)
      this.pauseQuietly(partition)
    }
    return state
  }

  /** A refusal of what restores take (Read on the changelog and on the reader's group), named. */
  private refused(error: unknown, doing: string) {
    return asAuthorizationError(error, doing, {
      topic: { operation: 'Read', resource: aclResource.topic(this.topic) },
      group: { operation: 'Read', resource: aclResource.group(this.groupId) },
    })
  }

  private throwIfDead(): void {
    if (this.dead !== undefined) throw this.dead
  }

  /** Between a crash and kafkajs' restart there is no consumer group to pause in (it throws). */
  private pauseQuietly(partition: number): void {
    try {
      this.consumer.pause([{ topic: this.topic, partitions: [partition] }])
    } catch {
      // The next join pauses every partition anyway.
    }
  }

  private advance(partition: number, position: bigint): void {
    const restore = this.pending.get(partition)
    if (restore !== undefined && position >= restore.endOffset) this.finish(partition)
  }

  private finish(partition: number, error?: unknown): void {
    const restore = this.pending.get(partition)
    if (restore === undefined) return
    this.pending.delete(partition)
    if (error === undefined) restore.resolve()
    else restore.reject(error)
  }
}
