/**
 * Shared pieces of the micro-benchmarks: workload generation, two pure-TypeScript aggregators
 * with the documented semantics of the native `PartitionAggregator` (count, Neumaier sum, min,
 * max per (series key, window); stream time; lateness; closing after each batch, ordered by
 * window start then key), and small statistics helpers.
 *
 * Not covered by the TS versions (not exercised by the benchmarks): maxOpenWindows, maxEventTime,
 * trackChanges, restore/snapshot, offsets/lowWatermark, and releasing keys whose windows closed
 * (the typed version keeps a key's slot forever).
 */
import { execFileSync } from 'node:child_process'
import { cpus, loadavg } from 'node:os'
import { setImmediate as yieldToLoop } from 'node:timers/promises'

export { yieldToLoop }

/**
 * Where a benchmark ran, printed first by every one: the commit (with `+changes` when the tree
 * differs from it), the CPU and its count, the load average at the start (others' work on a shared
 * machine shows there), and Node. Results are only comparable between like lines.
 */
export function benchEnvironment(): string {
  const git = (...args: string[]) => {
    try {
      return execFileSync('git', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] })
    } catch {
      return ''
    }
  }
  const commit = git('rev-parse', '--short', 'HEAD').trim() || 'unknown'
  const changed = git('status', '--porcelain', '--untracked-files=no').trim() !== ''
  const cpu = cpus()[0]?.model.trim() ?? 'unknown CPU'
  const load = loadavg()
    .map((l) => l.toFixed(2))
    .join(' ')
  return (
    `ran at commit ${commit}${changed ? '+changes' : ''} on ${cpu} x${cpus().length}, ` +
    `load average ${load}, node ${process.version}, ${new Date().toISOString()}`
  )
}

export const median = (xs: number[]) =>
  [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? NaN

export const percentile = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b)
  return s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)] ?? NaN
}

export const fmt = (x: number, digits = 0) =>
  x.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits })

/** One batch in the native `ingest` argument layout. */
export interface Batch {
  keys: string[]
  keyIndex: Uint32Array
  /** The same keys as indexes into keyNames(keys): for aggregators with pinned keys. */
  keyIds: Uint32Array
  timestamps: Float64Array
  values: Float64Array
  offsets: Float64Array
}

export interface Geometry {
  sizeMs: number
  advanceMs: number
  graceMs: number
}

/** Closed windows as columns, the subset of native `ClosedWindows` the benchmarks compare. */
export interface Closed {
  seriesKeys: string[]
  windowStart: Float64Array
  windowEnd: Float64Array
  count: Float64Array
  sum: Float64Array
  mean: Float64Array
  min: Float64Array
  max: Float64Array
}

export interface Result {
  aggregated: number
  late: number
  rejected: number
  closed: Closed
}

/**
 * How batches name their series keys: `ids` (a dictionary pinned once, then key ids per sample:
 * what the service does, whose keys never cross the boundary as text) or `tables` (each batch
 * carries the text of its distinct keys, and each implementation looks them up).
 */
export type KeyForm = 'ids' | 'tables'

export interface Aggregator {
  ingest(
    keys: string[],
    keyIndex: Uint32Array,
    timestamps: Float64Array,
    values: Float64Array,
    offsets: Float64Array,
  ): Result
  /** Registers a dictionary of keys once; returns the id of each. */
  pinKeys(keys: string[]): Uint32Array
  /** `ingest` with samples naming keys by pinned id. */
  ingestIds(
    keyIds: Uint32Array,
    timestamps: Float64Array,
    values: Float64Array,
    offsets: Float64Array,
  ): Result
}

export const T0 = 1_700_000_000_000

const keyNameCache = new Map<number, string[]>()
export function keyNames(n: number): string[] {
  let names = keyNameCache.get(n)
  if (names === undefined) {
    names = Array.from({ length: n }, (_, i) => `series-${String(i).padStart(7, '0')}`)
    keyNameCache.set(n, names)
  }
  return names
}

/** xorshift32, deterministic. */
export function rng(seed: number): () => number {
  let x = seed >>> 0 || 1
  return () => {
    x ^= x << 13
    x >>>= 0
    x ^= x >>> 17
    x ^= x << 5
    x >>>= 0
    return x / 4294967296
  }
}

export interface WorkloadOptions {
  samples: number
  keys: number
  batchSize: number
  /** Event time covered by the whole input. */
  spanMs: number
  outOfOrder?: number
  maxDelayMs?: number
  seed?: number
  firstOffset?: number
  /**
   * Value distribution: `cents` (default) uniform over [0, 100] rounded to 0.01; `log4`
   * log-uniform over [1, 10^4), typical telemetry spanning four decades (the quantile rows).
   * Both draw one random number per sample, so keys and timestamps are the same for either.
   */
  values?: ValueDistribution
}

export type ValueDistribution = 'cents' | 'log4'

/** Log-uniform over [1, 10^4) from a uniform u in [0, 1): four decades. */
export const log4 = (u: number) => 10 ** (4 * u)

/**
 * Uniformly random keys, event time advancing linearly over spanMs, a fraction `outOfOrder`
 * stamped up to maxDelayMs in the past, values as `values` says. Each batch carries its own
 * table of distinct keys.
 */
/**
 * One sample per key, in key order, at T0 (offsets 0 to keys - 1): run untimed before a
 * steady-state workload so that every series already has its window open when timing starts.
 */
export function fillWorkload(keys: number, batchSize: number): Batch[] {
  const names = keyNames(keys)
  const batches: Batch[] = []
  for (let start = 0; start < keys; start += batchSize) {
    const n = Math.min(batchSize, keys - start)
    const keyIds = Uint32Array.from({ length: n }, (_, i) => start + i)
    batches.push({
      keys: Array.from(keyIds, (k) => names[k]!),
      keyIndex: Uint32Array.from({ length: n }, (_, i) => i),
      keyIds,
      timestamps: new Float64Array(n).fill(T0),
      values: Float64Array.from({ length: n }, (_, i) => (start + i) % 100),
      offsets: Float64Array.from({ length: n }, (_, i) => start + i),
    })
  }
  return batches
}

export function makeWorkload(o: WorkloadOptions): Batch[] {
  const names = keyNames(o.keys)
  const rand = rng(o.seed ?? 42)
  const ooo = o.outOfOrder ?? 0.01
  const maxDelay = o.maxDelayMs ?? 1_000
  const local = new Int32Array(o.keys).fill(-1)
  const logValues = o.values === 'log4'
  const batches: Batch[] = []
  for (let start = 0; start < o.samples; start += o.batchSize) {
    const n = Math.min(o.batchSize, o.samples - start)
    const keys: string[] = []
    const keyIndex = new Uint32Array(n)
    const keyIds = new Uint32Array(n)
    const timestamps = new Float64Array(n)
    const values = new Float64Array(n)
    const offsets = new Float64Array(n)
    for (let i = 0; i < n; i++) {
      const g = start + i
      const k = Math.floor(rand() * o.keys)
      let li = local[k]!
      if (li < 0) {
        li = keys.length
        local[k] = li
        keys.push(names[k]!)
      }
      keyIndex[i] = li
      keyIds[i] = k
      let ts = T0 + Math.floor((g * o.spanMs) / o.samples)
      if (rand() < ooo) ts -= Math.floor(rand() * maxDelay)
      timestamps[i] = ts
      values[i] = logValues ? log4(rand()) : Math.round(rand() * 10_000) / 100
      offsets[i] = (o.firstOffset ?? 0) + g
    }
    for (const key of keys) local[Number(key.slice(7))] = -1
    batches.push({ keys, keyIndex, keyIds, timestamps, values, offsets })
  }
  return batches
}

const MAX_KEY_BYTES = 1024
const MAX_TS = 2 ** 53

/** Per batch key-table validity (reasons 4, 5), decided once per table entry like native. */
function keyOk(key: string): boolean {
  return (
    key.length > 0 && (key.length * 3 <= MAX_KEY_BYTES || Buffer.byteLength(key) <= MAX_KEY_BYTES)
  )
}

function emptyClosed(n: number): Closed {
  return {
    seriesKeys: new Array<string>(n),
    windowStart: new Float64Array(n),
    windowEnd: new Float64Array(n),
    count: new Float64Array(n),
    sum: new Float64Array(n),
    mean: new Float64Array(n),
    min: new Float64Array(n),
    max: new Float64Array(n),
  }
}

const byString = (a: string, b: string) => (a < b ? -1 : a > b ? 1 : 0)

interface Acc {
  count: number
  sum: number
  comp: number
  min: number
  max: number
}

/** The idiomatic version: Map of window start → Map of series key → aggregate object. */
export class MapAggregator implements Aggregator {
  private readonly windows = new Map<number, Map<string, Acc>>()
  private readonly pinned: string[] = []
  private pinnedValid: boolean[] = []
  streamTime: number | null = null

  constructor(private readonly g: Geometry) {}

  pinKeys(keys: string[]): Uint32Array {
    const ids = Uint32Array.from(keys, (key) => this.pinned.push(key) - 1)
    this.pinnedValid = this.pinned.map(keyOk)
    return ids
  }

  ingest(
    keys: string[],
    keyIndex: Uint32Array,
    timestamps: Float64Array,
    values: Float64Array,
  ): Result {
    return this.run(keys, keys.map(keyOk), keyIndex, timestamps, values)
  }

  ingestIds(keyIds: Uint32Array, timestamps: Float64Array, values: Float64Array): Result {
    return this.run(this.pinned, this.pinnedValid, keyIds, timestamps, values)
  }

  private run(
    keys: string[],
    valid: boolean[],
    keyIndex: Uint32Array,
    timestamps: Float64Array,
    values: Float64Array,
  ): Result {
    const { sizeMs, advanceMs, graceMs } = this.g
    let aggregated = 0
    let late = 0
    let rejected = 0
    for (let i = 0; i < keyIndex.length; i++) {
      const v = values[i]!
      const ts = timestamps[i]!
      const ki = keyIndex[i]!
      if (!Number.isFinite(v) || !Number.isInteger(ts) || ts < 0 || ts >= MAX_TS) {
        rejected++
        continue
      }
      if (ki >= keys.length || !valid[ki]) {
        rejected++
        continue
      }
      const key = keys[ki]!
      if (this.streamTime === null || ts > this.streamTime) this.streamTime = ts
      const closeTime = this.streamTime - graceMs
      const newest = ts - (ts % advanceMs)
      if (newest + sizeMs <= closeTime) {
        late++
        continue
      }
      for (let s = newest; s > ts - sizeMs && s + sizeMs > closeTime; s -= advanceMs) {
        let w = this.windows.get(s)
        if (w === undefined) {
          w = new Map()
          this.windows.set(s, w)
        }
        const a = w.get(key)
        if (a === undefined) {
          w.set(key, { count: 1, sum: v, comp: 0, min: v, max: v })
        } else {
          const t = a.sum + v
          a.comp += Math.abs(a.sum) >= Math.abs(v) ? a.sum - t + v : v - t + a.sum
          a.sum = t
          a.count++
          if (v < a.min) a.min = v
          if (v > a.max) a.max = v
        }
      }
      aggregated++
    }
    return { aggregated, late, rejected, closed: this.close() }
  }

  private close(): Closed {
    if (this.streamTime === null) return emptyClosed(0)
    const closeTime = this.streamTime - this.g.graceMs
    const due = [...this.windows.keys()]
      .filter((s) => s + this.g.sizeMs <= closeTime)
      .sort((a, b) => a - b)
    let n = 0
    for (const s of due) n += this.windows.get(s)!.size
    const out = emptyClosed(n)
    let r = 0
    for (const s of due) {
      const w = this.windows.get(s)!
      for (const key of [...w.keys()].sort(byString)) {
        const a = w.get(key)!
        const sum = Number.isFinite(a.sum) ? a.sum + a.comp : a.sum
        out.seriesKeys[r] = key
        out.windowStart[r] = s
        out.windowEnd[r] = s + this.g.sizeMs
        out.count[r] = a.count
        out.sum[r] = sum
        out.mean[r] = sum / a.count
        out.min[r] = a.min
        out.max[r] = a.max
        r++
      }
      this.windows.delete(s)
    }
    return out
  }
}

/** One window's columns, indexed by key slot; `slots` lists the slots in use. */
interface WindowCols {
  start: number
  count: Float64Array
  sum: Float64Array
  comp: Float64Array
  min: Float64Array
  max: Float64Array
  slots: Int32Array
  rows: number
}

function growF64(a: Float64Array, n: number): Float64Array {
  const b = new Float64Array(n)
  b.set(a)
  return b
}

/**
 * The tuned version: series key → slot map (looked up once per batch-table entry), each open
 * window a set of Float64Array columns indexed by slot, windows in a ring indexed by
 * (start / advance) mod ring size, closed column sets pooled for reuse.
 */
export class TypedAggregator implements Aggregator {
  private readonly slotOf = new Map<string, number>()
  private readonly names: string[] = []
  private capacity = 1024
  private ring: (WindowCols | undefined)[]
  private readonly pool: WindowCols[] = []
  private batchSlots = new Int32Array(1024)
  streamTime: number | null = null

  constructor(private readonly g: Geometry) {
    const needed = Math.ceil((g.sizeMs + g.graceMs) / g.advanceMs) + 4
    let r = 8
    while (r < needed) r *= 2
    this.ring = new Array<WindowCols | undefined>(r)
  }

  private newCols(start: number): WindowCols {
    const c = this.pool.pop()
    if (c !== undefined && c.count.length >= this.capacity) {
      c.start = start
      c.rows = 0
      return c
    }
    const cap = this.capacity
    return {
      start,
      count: new Float64Array(cap),
      sum: new Float64Array(cap),
      comp: new Float64Array(cap),
      min: new Float64Array(cap),
      max: new Float64Array(cap),
      slots: new Int32Array(Math.min(cap, 1024)),
      rows: 0,
    }
  }

  private growCols(c: WindowCols): void {
    const cap = this.capacity
    c.count = growF64(c.count, cap)
    c.sum = growF64(c.sum, cap)
    c.comp = growF64(c.comp, cap)
    c.min = growF64(c.min, cap)
    c.max = growF64(c.max, cap)
  }

  private windowAt(start: number): WindowCols {
    const ring = this.ring
    const i = (start / this.g.advanceMs) % ring.length
    const c = ring[i]
    if (c !== undefined && c.start === start) return c
    if (c === undefined) {
      const n = this.newCols(start)
      ring[i] = n
      return n
    }
    // Another window still open in this ring position: double the ring and retry.
    const old = ring
    this.ring = new Array<WindowCols | undefined>(old.length * 2)
    for (const w of old)
      if (w !== undefined) this.ring[(w.start / this.g.advanceMs) % this.ring.length] = w
    return this.windowAt(start)
  }

  private slotFor(key: string): number {
    let slot = this.slotOf.get(key)
    if (slot === undefined) {
      slot = this.names.length
      this.names.push(key)
      this.slotOf.set(key, slot)
      if (slot >= this.capacity) this.capacity *= 2
    }
    return slot
  }

  /** Pinned ids are slots: a batch of ids needs no table (the identity one). */
  pinKeys(keys: string[]): Uint32Array {
    const ids = Uint32Array.from(keys, (key) => (keyOk(key) ? this.slotFor(key) : -1))
    this.identity = Int32Array.from(this.names, (_, slot) => slot)
    return ids
  }

  private identity = new Int32Array(0)

  ingest(
    keys: string[],
    keyIndex: Uint32Array,
    timestamps: Float64Array,
    values: Float64Array,
  ): Result {
    if (this.batchSlots.length < keys.length) this.batchSlots = new Int32Array(keys.length * 2)
    const bs = this.batchSlots
    for (let k = 0; k < keys.length; k++) {
      const key = keys[k]!
      bs[k] = keyOk(key) ? this.slotFor(key) : -1
    }
    return this.run(bs, keys.length, keyIndex, timestamps, values)
  }

  ingestIds(keyIds: Uint32Array, timestamps: Float64Array, values: Float64Array): Result {
    return this.run(this.identity, this.identity.length, keyIds, timestamps, values)
  }

  /** `bs[k]`: the slot of batch key k (< tableLength), or -1 for an invalid key. */
  private run(
    bs: Int32Array,
    tableLength: number,
    keyIndex: Uint32Array,
    timestamps: Float64Array,
    values: Float64Array,
  ): Result {
    const { sizeMs, advanceMs, graceMs } = this.g
    let aggregated = 0
    let late = 0
    let rejected = 0
    let streamTime = this.streamTime ?? -Infinity
    for (let i = 0; i < keyIndex.length; i++) {
      const v = values[i]!
      const ts = timestamps[i]!
      const ki = keyIndex[i]!
      if (!Number.isFinite(v) || !Number.isInteger(ts) || ts < 0 || ts >= MAX_TS) {
        rejected++
        continue
      }
      const slot = ki < tableLength ? bs[ki]! : -1
      if (slot < 0) {
        rejected++
        continue
      }
      if (ts > streamTime) streamTime = ts
      const closeTime = streamTime - graceMs
      const newest = ts - (ts % advanceMs)
      if (newest + sizeMs <= closeTime) {
        late++
        continue
      }
      for (let s = newest; s > ts - sizeMs && s + sizeMs > closeTime; s -= advanceMs) {
        const w = this.windowAt(s)
        if (slot >= w.count.length) this.growCols(w)
        const count = w.count
        const c = count[slot]!
        if (c === 0) {
          count[slot] = 1
          w.sum[slot] = v
          w.comp[slot] = 0
          w.min[slot] = v
          w.max[slot] = v
          if (w.rows === w.slots.length) {
            const b = new Int32Array(w.slots.length * 2)
            b.set(w.slots)
            w.slots = b
          }
          w.slots[w.rows++] = slot
        } else {
          count[slot] = c + 1
          const sum = w.sum
          const old = sum[slot]!
          const t = old + v
          w.comp[slot] = w.comp[slot]! + (Math.abs(old) >= Math.abs(v) ? old - t + v : v - t + old)
          sum[slot] = t
          if (v < w.min[slot]!) w.min[slot] = v
          if (v > w.max[slot]!) w.max[slot] = v
        }
      }
      aggregated++
    }
    if (streamTime !== -Infinity) this.streamTime = streamTime
    return { aggregated, late, rejected, closed: this.close() }
  }

  private close(): Closed {
    if (this.streamTime === null) return emptyClosed(0)
    const closeTime = this.streamTime - this.g.graceMs
    const due: WindowCols[] = []
    for (const w of this.ring)
      if (w !== undefined && w.start + this.g.sizeMs <= closeTime) due.push(w)
    if (due.length === 0) return emptyClosed(0)
    due.sort((a, b) => a.start - b.start)
    let n = 0
    for (const w of due) n += w.rows
    const out = emptyClosed(n)
    const names = this.names
    let r = 0
    for (const w of due) {
      const slots = Array.from(w.slots.subarray(0, w.rows)).sort((a, b) =>
        byString(names[a]!, names[b]!),
      )
      for (const slot of slots) {
        const raw = w.sum[slot]!
        const count = w.count[slot]!
        const sum = Number.isFinite(raw) ? raw + w.comp[slot]! : raw
        out.seriesKeys[r] = names[slot]!
        out.windowStart[r] = w.start
        out.windowEnd[r] = w.start + this.g.sizeMs
        out.count[r] = count
        out.sum[r] = sum
        out.mean[r] = sum / count
        out.min[r] = w.min[slot]!
        out.max[r] = w.max[slot]!
        w.count[slot] = 0
        r++
      }
      this.ring[(w.start / this.g.advanceMs) % this.ring.length] = undefined
      this.pool.push(w)
    }
    return out
  }
}

/** Compares two closed-window column sets row by row; returns a description of the first difference. */
export function diffClosed(a: Closed, b: Closed): string | null {
  if (a.seriesKeys.length !== b.seriesKeys.length)
    return `rows ${a.seriesKeys.length} vs ${b.seriesKeys.length}`
  for (let i = 0; i < a.seriesKeys.length; i++) {
    if (
      a.seriesKeys[i] !== b.seriesKeys[i] ||
      a.windowStart[i] !== b.windowStart[i] ||
      a.count[i] !== b.count[i] ||
      a.sum[i] !== b.sum[i] ||
      a.min[i] !== b.min[i] ||
      a.max[i] !== b.max[i]
    )
      return `row ${i}: ${a.seriesKeys[i]}@${a.windowStart[i]} n=${a.count[i]} sum=${a.sum[i]} vs ${b.seriesKeys[i]}@${b.windowStart[i]} n=${b.count[i]} sum=${b.sum[i]}`
  }
  return null
}

/** Concatenates closed-window column sets. */
export function concatClosed(parts: Closed[]): Closed {
  const n = parts.reduce((t, p) => t + p.seriesKeys.length, 0)
  const out = emptyClosed(n)
  let r = 0
  for (const p of parts) {
    for (const col of ['windowStart', 'windowEnd', 'count', 'sum', 'mean', 'min', 'max'] as const)
      out[col].set(p[col], r)
    for (let i = 0; i < p.seriesKeys.length; i++) out.seriesKeys[r + i] = p.seriesKeys[i]!
    r += p.seriesKeys.length
  }
  return out
}
