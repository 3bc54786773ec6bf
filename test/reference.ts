/**
 * An independent, deliberately simple TypeScript reference of the window semantics, written from
 * the documented rules (native/index.d.ts, native/src/window/mod.rs module docs,
 * /work/shared/notes/windowing.md), not ported from the Rust code. It favours obviousness over
 * speed: open aggregates live in one Map, sums are exact (BigInt on the binary values) and rounded
 * once, and every rule is checked literally (e.g. lateness is decided window by window).
 *
 * Rules, per partition, samples processed in order:
 * - A sample is rejected (reason 1) if its value is not finite, else (2) if its timestamp is not an
 *   integer in [minEventTimeMs, 2^53) (default 0), else (3) if it has no valid series key, else (4)
 *   if its key is empty, else (5) if its key is longer than maxKeyBytes (default 1024) UTF-8 bytes,
 *   else (6) if its timestamp is greater than the batch's maxEventTime (when one is given). Such a
 *   rejected sample changes nothing (a sample from the future does not move stream time).
 * - Otherwise stream time = max(stream time, ts), and closeTime = streamTime - grace (including this
 *   sample). The sample's windows are [start, start + size) with start a multiple of advance and
 *   start <= ts < start + size (size / advance of them). Its open windows are those whose end is
 *   > closeTime; if there is none it is late.
 * - Else, with maxOpenWindows set: the sample's "fresh" windows are its open windows that hold no
 *   aggregate of its key yet. If there are some, and the open aggregates whose end is > closeTime
 *   plus the fresh ones exceed maxOpenWindows, the sample is rejected (7) and added to no window;
 *   its timestamp has still moved stream time.
 * - Else it is aggregated: added to each of its open windows.
 * - After the batch, every open window with end <= streamTime - grace is closed and returned once,
 *   ordered by start, then by series key in code point order.
 */
import type { Sample } from '../consumer/schemas'

/**
 * Window geometry (ms) and input bounds, as given to `PartitionAggregator`, plus an optional
 * restored stream time.
 */
export interface RefConfig {
  sizeMs: number
  /** Defaults to sizeMs (tumbling windows). */
  advanceMs?: number
  /** Defaults to 0. */
  graceMs?: number
  /** Stream time to resume at (a checkpoint's); null or unset for a fresh partition. */
  streamTime?: number | null
  /** Earlier timestamps are rejected (reason 2). Defaults to 0. */
  minEventTimeMs?: number
  /** Longer series keys (in UTF-8 bytes) are rejected (reason 5). Defaults to 1024. */
  maxKeyBytes?: number
  /** Bound on open (key, window) aggregates (reason 7); null or unset for none. */
  maxOpenWindows?: number | null
  /** Keep every window's values (RefWindow.values), e.g. for exact quantiles. Default false. */
  keepValues?: boolean
}

/** One input sample, read from input offset `offset`. */
export interface RefSample {
  /** Series key; null stands for a key index outside the batch's key table (rejected, reason 3). */
  key: string | null
  /** Event time, epoch ms. */
  ts: number
  value: number
  offset: number
}

/** One (series key, window) aggregate. */
export interface RefWindow {
  key: string
  /** Inclusive start, epoch ms. */
  start: number
  /** Exclusive end (start + size), epoch ms. */
  end: number
  count: number
  /** The exact sum of the values, rounded once to the nearest double (ties to even). */
  sum: number
  /** sum / count. */
  mean: number
  min: number
  max: number
  /** With `keepValues`: the values aggregated, in input order. */
  values?: number[]
}

/** Rejection reason codes; when several apply, the lowest is reported. */
export const RejectReason = {
  NonFiniteValue: 1,
  InvalidTimestamp: 2,
  UnknownKey: 3,
  EmptyKey: 4,
  KeyTooLong: 5,
  FutureTimestamp: 6,
  WindowLimit: 7,
} as const
export type RejectReason = (typeof RejectReason)[keyof typeof RejectReason]

/** What one `ingest` call did; every sample is exactly one of aggregated, late or rejected. */
export interface RefIngestResult {
  aggregated: number
  late: number
  rejected: number
  /** Batch positions of late samples, ascending. */
  lateIdx: number[]
  /** Batch positions of rejected samples, ascending. */
  rejectedIdx: number[]
  /** Reason per rejected sample, parallel to rejectedIdx. */
  reasons: RejectReason[]
  /** Windows closed by this batch, ordered by start then key (code point order). */
  closed: RefWindow[]
}

const TWO_POW_53 = 2 ** 53

/** Identity of a (series key, window) pair: `${key}\u0000${start}`. */
export const windowId = (key: string, start: number): string => `${key}\u0000${start}`

/**
 * Compares strings by Unicode code points (equivalently, UTF-8 bytes), unlike `<` on JS strings,
 * which compares UTF-16 code units and orders U+10000.. before U+E000..U+FFFF.
 */
export function compareCodePoints(a: string, b: string): number {
  let i = 0
  while (i < a.length && i < b.length) {
    const ca = a.codePointAt(i) ?? 0
    const cb = b.codePointAt(i) ?? 0
    if (ca !== cb) return ca - cb
    i += ca > 0xffff ? 2 : 1
  }
  return a.length - b.length
}

/** The documented output order: window start, then series key in code point order. */
export const compareWindows = (a: RefWindow, b: RefWindow): number =>
  a.start - b.start || compareCodePoints(a.key, b.key)

const bits = new DataView(new ArrayBuffer(8))

/** A finite double as `mantissa * 2^exponent` with an integer mantissa (exact). */
function decompose(x: number): { mantissa: bigint; exponent: number } {
  bits.setFloat64(0, x)
  const high = bits.getUint32(0)
  const biased = (high >>> 20) & 0x7ff
  let mantissa = (BigInt(high & 0xfffff) << 32n) | BigInt(bits.getUint32(4))
  let exponent = -1074 // subnormal (or zero)
  if (biased !== 0) {
    mantissa |= 1n << 52n
    exponent = biased - 1075
  }
  return { mantissa: high >>> 31 === 1 ? -mantissa : mantissa, exponent }
}

/** x * 2^k, exact whenever the result is representable (avoids 2 ** k over/underflowing). */
function ldexp(x: number, k: number): number {
  let result = x
  let e = k
  while (e > 1000) {
    result *= 2 ** 1000
    e -= 1000
  }
  while (e < -1000) {
    result *= 2 ** -1000
    e += 1000
  }
  return result * 2 ** e
}

/** Rounds `n * 2^scale` to the nearest double, ties to even (overflow gives ±Infinity). */
function roundToDouble(n: bigint, scale: number): number {
  if (n === 0n) return 0
  const negative = n < 0n
  const magnitude = negative ? -n : n
  const length = magnitude.toString(2).length
  // Keep at most 53 significant bits, and no bit below 2^-1074 (the subnormal spacing).
  const drop = Math.max(length - 53, -1074 - scale)
  let kept = magnitude
  let exponent = scale
  if (drop > 0) {
    const d = BigInt(drop)
    kept = magnitude >> d
    const remainder = magnitude - (kept << d)
    const half = 1n << (d - 1n)
    if (remainder > half || (remainder === half && (kept & 1n) === 1n)) kept += 1n
    exponent += drop
  }
  const result = ldexp(Number(kept), exponent)
  return negative ? -result : result
}

/** An exact running sum of finite doubles (BigInt fixed point), rounded once on read. */
export class ExactSum {
  /** The sum is `scaled * 2^scale`. */
  private scaled = 0n
  private scale = 0

  add(x: number): void {
    if (!Number.isFinite(x)) throw new RangeError(`ExactSum takes finite values, got ${x}`)
    if (x === 0) return
    const { mantissa, exponent } = decompose(x)
    if (this.scaled === 0n) {
      this.scaled = mantissa
      this.scale = exponent
      return
    }
    if (exponent < this.scale) {
      this.scaled <<= BigInt(this.scale - exponent)
      this.scale = exponent
    }
    this.scaled += mantissa << BigInt(exponent - this.scale)
  }

  /** The exact sum rounded to the nearest double. */
  get value(): number {
    return roundToDouble(this.scaled, this.scale)
  }
}

/** The exact sum of `values`, rounded once to the nearest double. */
export function exactSum(values: Iterable<number>): number {
  const sum = new ExactSum()
  for (const v of values) sum.add(v)
  return sum.value
}

/**
 * Distance in representable doubles between two finite doubles (0 when equal, 1 for neighbours;
 * +0 and -0 count as equal).
 */
export function ulpDistance(a: number, b: number): number {
  const ordered = (x: number): bigint => {
    bits.setFloat64(0, x)
    const raw = bits.getBigInt64(0)
    // Map sign-magnitude bits to a monotonic integer line, with -0 and +0 both at 0.
    return raw < 0n ? -(raw & 0x7fffffffffffffffn) : raw
  }
  const d = ordered(a) - ordered(b)
  return Number(d < 0n ? -d : d)
}

interface OpenAggregate {
  key: string
  start: number
  count: number
  sum: ExactSum
  min: number
  max: number
  /** Lowest input offset of a sample held in this aggregate. */
  lowestOffset: number
  values?: number[]
}

/** The per-sample bounds of reasons 2, 5 and 6. */
export interface InputBounds {
  /** Defaults to 0. */
  minEventTimeMs?: number
  /** Defaults to 1024. */
  maxKeyBytes?: number
  /** Null or unset: no bound. */
  maxEventTime?: number | null
}

interface CheckedConfig {
  size: number
  advance: number
  grace: number
  minEventTime: number
  maxKeyBytes: number
  maxOpenWindows: number | null
}

function checkConfig(config: RefConfig): CheckedConfig {
  const size = config.sizeMs
  const advance = config.advanceMs ?? size
  const grace = config.graceMs ?? 0
  const minEventTime = config.minEventTimeMs ?? 0
  const maxKeyBytes = config.maxKeyBytes ?? 1024
  const maxOpenWindows = config.maxOpenWindows ?? null
  const whole = (x: number, min: number) => Number.isInteger(x) && x >= min && x < TWO_POW_53
  if (!whole(size, 1)) throw new RangeError(`sizeMs must be an integer > 0, got ${size}`)
  if (!whole(advance, 1) || advance > size || size % advance !== 0) {
    throw new RangeError(`advanceMs must divide sizeMs (${size}), got ${advance}`)
  }
  if (!whole(grace, 0)) throw new RangeError(`graceMs must be an integer >= 0, got ${grace}`)
  if (!whole(minEventTime, 0)) {
    throw new RangeError(`minEventTimeMs must be an integer >= 0, got ${minEventTime}`)
  }
  if (!whole(maxKeyBytes, 1)) {
    throw new RangeError(`maxKeyBytes must be an integer > 0, got ${maxKeyBytes}`)
  }
  // One sample may need size / advance new windows: a smaller bound could refuse all of them.
  if (maxOpenWindows !== null && !whole(maxOpenWindows, size / advance)) {
    throw new RangeError(
      `maxOpenWindows must be null or an integer >= ${size / advance}, got ${maxOpenWindows}`,
    )
  }
  return { size, advance, grace, minEventTime, maxKeyBytes, maxOpenWindows }
}

/** Windowed aggregation of one partition, per the documented rules (see the module docs). */
export class ReferenceAggregator {
  readonly sizeMs: number
  readonly advanceMs: number
  readonly graceMs: number
  readonly minEventTimeMs: number
  readonly maxKeyBytes: number
  readonly maxOpenWindows: number | null
  private readonly keepValues: boolean
  private time: number | null
  /** Open aggregates by `windowId(key, start)`. */
  private readonly open = new Map<string, OpenAggregate>()
  /** Rejected samples so far, by reason code (index 0 unused). */
  private readonly rejections: number[] = [0, 0, 0, 0, 0, 0, 0, 0]

  constructor(config: RefConfig) {
    const checked = checkConfig(config)
    this.sizeMs = checked.size
    this.advanceMs = checked.advance
    this.graceMs = checked.grace
    this.minEventTimeMs = checked.minEventTime
    this.maxKeyBytes = checked.maxKeyBytes
    this.maxOpenWindows = checked.maxOpenWindows
    this.keepValues = config.keepValues === true
    this.time = config.streamTime ?? null
  }

  /** Rejected samples so far by reason code: `[0, count of 1, ..., count of 7]`. */
  get rejectedByReason(): number[] {
    return [...this.rejections]
  }

  /** Maximum accepted event time so far, or null before the first one. */
  get streamTime(): number | null {
    return this.time
  }

  /** Lowest input offset held in an open window, or null when none is open. */
  get lowWatermark(): number | null {
    let lowest: number | null = null
    for (const agg of this.open.values()) {
      if (lowest === null || agg.lowestOffset < lowest) lowest = agg.lowestOffset
    }
    return lowest
  }

  /** Starts of every window containing `ts`: multiples of advance in (ts - size, ts]. */
  windowStarts(ts: number): number[] {
    const newest = ts - (((ts % this.advanceMs) + this.advanceMs) % this.advanceMs)
    const starts: number[] = []
    for (let start = newest; start > ts - this.sizeMs; start -= this.advanceMs) starts.push(start)
    return starts.reverse()
  }

  /**
   * Processes `samples` in order, then closes the windows that are due (see the module docs).
   * Samples stamped after `maxEventTime` are rejected (reason 6); null: no bound.
   */
  ingest(samples: readonly RefSample[], maxEventTime: number | null = null): RefIngestResult {
    const result: RefIngestResult = {
      aggregated: 0,
      late: 0,
      rejected: 0,
      lateIdx: [],
      rejectedIdx: [],
      reasons: [],
      closed: [],
    }
    const bounds = {
      minEventTimeMs: this.minEventTimeMs,
      maxKeyBytes: this.maxKeyBytes,
      maxEventTime,
    }
    const reject = (i: number, reason: RejectReason) => {
      result.rejectedIdx.push(i)
      result.reasons.push(reason)
      this.rejections[reason] = (this.rejections[reason] ?? 0) + 1
    }
    samples.forEach((sample, i) => {
      const reason = rejectionOf(sample, bounds)
      if (reason !== undefined) {
        reject(i, reason)
        return
      }
      const key = sample.key as string
      this.time = this.time === null ? sample.ts : Math.max(this.time, sample.ts)
      const closeTime = this.time - this.graceMs
      // Lateness per (sample, window): only windows ending after closeTime take the sample.
      const open = this.windowStarts(sample.ts).filter((start) => start + this.sizeMs > closeTime)
      if (open.length === 0) {
        result.lateIdx.push(i)
        return
      }
      if (this.maxOpenWindows !== null) {
        const fresh = open.filter((start) => !this.open.has(windowId(key, start))).length
        // Windows due to close (end <= closeTime) no longer count as open.
        let stillOpen = 0
        for (const agg of this.open.values()) if (agg.start + this.sizeMs > closeTime) stillOpen++
        if (fresh > 0 && stillOpen + fresh > this.maxOpenWindows) {
          reject(i, RejectReason.WindowLimit)
          return
        }
      }
      result.aggregated++
      for (const start of open) this.add(key, start, sample.value, sample.offset)
    })
    result.late = result.lateIdx.length
    result.rejected = result.rejectedIdx.length
    result.closed = this.closeDue()
    return result
  }

  /** Snapshot of the open aggregates, in output order. */
  openWindows(): RefWindow[] {
    return [...this.open.values()].map((agg) => this.finish(agg)).sort(compareWindows)
  }

  /** Number of open (series key, window) aggregates. */
  get openCount(): number {
    return this.open.size
  }

  private add(key: string, start: number, value: number, offset: number): void {
    const id = windowId(key, start)
    let agg = this.open.get(id)
    if (agg === undefined) {
      agg = {
        key,
        start,
        count: 0,
        sum: new ExactSum(),
        min: value,
        max: value,
        lowestOffset: offset,
        ...(this.keepValues && { values: [] }),
      }
      this.open.set(id, agg)
    }
    agg.values?.push(value)
    agg.count++
    agg.sum.add(value)
    agg.min = Math.min(agg.min, value)
    agg.max = Math.max(agg.max, value)
    agg.lowestOffset = Math.min(agg.lowestOffset, offset)
  }

  private closeDue(): RefWindow[] {
    if (this.time === null) return []
    const closeTime = this.time - this.graceMs
    const closed: RefWindow[] = []
    for (const [id, agg] of this.open) {
      if (agg.start + this.sizeMs <= closeTime) {
        this.open.delete(id)
        closed.push(this.finish(agg))
      }
    }
    return closed.sort(compareWindows)
  }

  private finish(agg: OpenAggregate): RefWindow {
    const sum = agg.sum.value
    return {
      key: agg.key,
      start: agg.start,
      end: agg.start + this.sizeMs,
      count: agg.count,
      sum,
      mean: sum / agg.count,
      min: agg.min,
      max: agg.max,
      ...(agg.values !== undefined && { values: [...agg.values] }),
    }
  }
}

/**
 * The input rejection reason (1-6) of a sample, or undefined if it passes them (lowest applicable
 * code wins). Reason 7 depends on the open windows: see `ReferenceAggregator.ingest`.
 */
export function rejectionOf(sample: RefSample, bounds: InputBounds = {}): RejectReason | undefined {
  const minEventTime = bounds.minEventTimeMs ?? 0
  const maxEventTime = bounds.maxEventTime ?? null
  if (!Number.isFinite(sample.value)) return RejectReason.NonFiniteValue
  if (!Number.isInteger(sample.ts) || sample.ts < minEventTime || sample.ts >= TWO_POW_53) {
    return RejectReason.InvalidTimestamp
  }
  if (sample.key === null) return RejectReason.UnknownKey
  if (sample.key === '') return RejectReason.EmptyKey
  if (Buffer.byteLength(sample.key, 'utf8') > (bounds.maxKeyBytes ?? 1024)) {
    return RejectReason.KeyTooLong
  }
  if (maxEventTime !== null && sample.ts > maxEventTime) return RejectReason.FutureTimestamp
  return undefined
}

/** Outcome of a whole run over some partitions. */
export interface ReferenceRun {
  /** Every window closed during the run, by `windowId(key, start)`. */
  closed: Map<string, RefWindow>
  /** Windows still open at the end of the run (not emitted yet), by `windowId(key, start)`. */
  open: Map<string, RefWindow>
  aggregated: number
  late: number
  rejected: number
}

/**
 * Runs one reference aggregator per partition over all of its samples, in partition order
 * (message by message, and in sample order within each message), as one batch: which windows
 * close, and their aggregates, do not depend on how the samples are split into batches. Samples use the Avro `Sample` shape of
 * `consumer/schemas`. Throws if two partitions produce the same (key, window), which cannot
 * happen when each series key lives in one partition.
 */
export function referenceRun(
  partitions: readonly (readonly Sample[])[],
  config: RefConfig,
): ReferenceRun {
  const run: ReferenceRun = {
    closed: new Map(),
    open: new Map(),
    aggregated: 0,
    late: 0,
    rejected: 0,
  }
  const collect = (into: Map<string, RefWindow>, windows: readonly RefWindow[]) => {
    for (const w of windows) {
      const id = windowId(w.key, w.start)
      if (run.closed.has(id) || run.open.has(id)) {
        throw new Error(`window of ${JSON.stringify(w.key)} at ${w.start} in two partitions`)
      }
      into.set(id, w)
    }
  }
  for (const samples of partitions) {
    const aggregator = new ReferenceAggregator(config)
    const result = aggregator.ingest(
      samples.map((s, i) => ({ key: s.seriesKey, ts: s.eventTime, value: s.value, offset: i })),
    )
    run.aggregated += result.aggregated
    run.late += result.late
    run.rejected += result.rejected
    collect(run.closed, result.closed)
    collect(run.open, aggregator.openWindows())
  }
  return run
}

/**
 * The windows a whole run closes (and so publishes), keyed by `windowId(key, start)` =
 * `${key}\u0000${start}`; see `referenceRun`.
 */
export const referenceResults = (
  partitions: readonly (readonly Sample[])[],
  config: RefConfig,
): Map<string, RefWindow> => referenceRun(partitions, config).closed

/** Seeded PRNG (mulberry32): uniform floats in [0, 1), reproducible from `seed`. */
export function mulberry32(seed: number): () => number {
  let state = seed >>> 0
  return () => {
    state = (state + 0x6d2b79f5) >>> 0
    let t = state
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

/**
 * Whether a published aggregate equals the recomputed window: count, sum, min and max exactly
 * (the sum is exact: rounded once), the mean within 1e-9 relative.
 */
export function matchesReference(
  actual: { windowEnd: number; count: number; sum: number; min: number; max: number; mean: number },
  want: RefWindow,
): boolean {
  return (
    actual.windowEnd === want.end &&
    actual.count === want.count &&
    actual.sum === want.sum &&
    actual.min === want.min &&
    actual.max === want.max &&
    Math.abs(actual.mean - want.sum / want.count) <=
      1e-9 * Math.max(1, Math.abs(want.sum / want.count))
  )
}
