/**
 * Latency and GC under a large open state: at least 1M open (key, window) aggregates (1M keys,
 * one-day tumbling windows, so nothing closes), then steady ingestion in batches (95% of samples
 * for existing keys, 5% for new ones), yielding to the event loop after every batch. Per-batch
 * ingest time p50/p99/max and GC pauses (perf_hooks 'gc' entries) for the native aggregator and
 * the Map-of-objects TS version, each in a fresh child process; plus footprint per open window.
 *
 * Quantiles: the same for the native aggregator with quantiles [0.5, 0.9, 0.99] at 1% accuracy
 * and without, values log-uniform over [1, 10^4) (typical telemetry spanning four decades); then
 * bytes per open window against samples per window (--per-window: each open window gets exactly
 * that many samples, keys in a shuffled order), quantiles on and off, each in a fresh process.
 *
 *   npm run bench:gc -- [--keys 1000000] [--batches 500] [--batch 10000] [--runs 3]
 *                       [--per-window 1,10,100,1000,10000] [--quantiles-only | --no-quantiles]
 */
import { spawnSync } from 'node:child_process'
import { PerformanceObserver } from 'node:perf_hooks'
import { parseArgs } from 'node:util'
import { PartitionAggregator } from '../consumer/native'
import {
  benchEnvironment,
  type Aggregator,
  type Batch,
  MapAggregator,
  T0,
  fmt,
  keyNames,
  log4,
  median,
  percentile,
  rng,
  yieldToLoop,
} from './lib'

const impls = ['native', 'map-ts'] as const
type Impl = (typeof impls)[number]
const geometry = { sizeMs: 86_400_000, advanceMs: 86_400_000, graceMs: 2_000 }
const QUANTILES = [0.5, 0.9, 0.99]
const ACCURACY = 0.01
const quantileConfig = { quantiles: QUANTILES, quantileAccuracy: ACCURACY }
/** Start of the one-day window that holds T0. */
const DAY0 = T0 - (T0 % 86_400_000)

interface ChildResult {
  impl: Impl
  openWindows: number
  batchP50: number
  batchP99: number
  batchMax: number
  gcCount: number
  gcTotalMs: number
  gcMaxMs: number
  rssPerWindow: number
  heapPerWindow: number
  nativePerWindow?: number
  nativeMarginalPerWindow?: number
}

/**
 * Values of batchOf: by default a function of the key and position; with `logRand`, log-uniform
 * over [1, 10^4) (four decades) from that generator.
 */
function batchOf(
  keyIds: Int32Array,
  names: string[],
  t: number,
  firstOffset: number,
  logRand?: () => number,
): Batch {
  const n = keyIds.length
  const local = new Map<number, number>()
  const keys: string[] = []
  const keyIndex = new Uint32Array(n)
  const timestamps = new Float64Array(n)
  const values = new Float64Array(n)
  const offsets = new Float64Array(n)
  for (let i = 0; i < n; i++) {
    const k = keyIds[i]!
    let li = local.get(k)
    if (li === undefined) {
      li = keys.length
      local.set(k, li)
      keys.push(names[k]!)
    }
    keyIndex[i] = li
    timestamps[i] = t + Math.floor(i / 100)
    values[i] = logRand === undefined ? (k % 1000) / 10 + i / n : log4(logRand())
    offsets[i] = firstOffset + i
  }
  return { keys, keyIndex, keyIds: Uint32Array.from(keyIds), timestamps, values, offsets }
}

const gc = () => (globalThis as { gc?: () => void }).gc?.()

async function settle(): Promise<NodeJS.MemoryUsage> {
  for (let i = 0; i < 3; i++) {
    gc()
    await yieldToLoop()
  }
  return process.memoryUsage()
}

/**
 * Native bytes per extra window of an existing key: 4 windows per key minus 1 window per key
 * (one sample per window), with the given quantile config and values.
 */
function nativeMarginal(keys: number, quantiles: boolean, logValues: boolean): number {
  const names = keyNames(keys)
  const held = (sizeMs: number, advanceMs: number) => {
    const agg = new PartitionAggregator({
      sizeMs,
      advanceMs,
      graceMs: 0,
      ...(quantiles ? quantileConfig : {}),
    })
    const ids = new Int32Array(10_000)
    const rand = logValues ? rng(5) : undefined
    for (let k = 0; k < keys; k += ids.length) {
      for (let i = 0; i < ids.length; i++) ids[i] = (k + i) % keys
      const b = batchOf(ids, names, DAY0 + 3 * 3_600_000, k, rand)
      agg.ingest(b.keys, b.keyIndex, b.timestamps, b.values, b.offsets)
    }
    const s = agg.stats
    agg.free()
    return { bytes: s.bytesHeld, windows: s.openWindows }
  }
  const one = held(14_400_000, 14_400_000) // 1 window per key
  const four = held(14_400_000, 3_600_000) // 4 overlapping windows per key
  return (four.bytes - one.bytes) / (four.windows - one.windows)
}

/** A child run: `quantiles` and `logValues` only apply to native. */
interface ChildOptions {
  impl: Impl
  keys: number
  batches: number
  batchSize: number
  quantiles: boolean
  logValues: boolean
}

async function child(o: ChildOptions): Promise<void> {
  const { impl, keys, batches, batchSize } = o
  const newPerBatch = Math.floor(batchSize * 0.05)
  const names = keyNames(keys + batches * newPerBatch)
  const rand = rng(11)
  const valueRand = o.logValues ? rng(13) : undefined
  // All input is built before the baseline, so the deltas are the aggregator's state.
  const fill: Batch[] = []
  for (let k = 0, off = 0; k < keys; k += batchSize, off += batchSize) {
    const ids = new Int32Array(Math.min(batchSize, keys - k)).map((_, i) => k + i)
    fill.push(batchOf(ids, names, T0, off, valueRand))
  }
  const steady: Batch[] = []
  let next = keys
  for (let b = 0; b < batches; b++) {
    const ids = new Int32Array(batchSize)
    for (let i = 0; i < batchSize; i++)
      ids[i] = i < newPerBatch ? next++ : Math.floor(rand() * keys)
    steady.push(batchOf(ids, names, T0 + 1_000 + b * 100, keys + b * batchSize, valueRand))
  }
  const agg: Aggregator & { stats?: PartitionAggregator['stats'] } =
    impl === 'native'
      ? new PartitionAggregator({ ...geometry, ...(o.quantiles ? quantileConfig : {}) })
      : new MapAggregator(geometry)
  const before = await settle()
  // Keys cross as pinned ids (text once, at pinning), as the service's keys never cross as text.
  const ids = agg.pinKeys(names)
  if (ids.some((id, k) => id !== k)) throw new Error('pinned ids are not the key numbers')
  for (const b of fill) {
    agg.ingestIds(b.keyIds, b.timestamps, b.values, b.offsets)
    await yieldToLoop()
  }
  const after = await settle()
  const pauses: number[] = []
  const obs = new PerformanceObserver((list) => {
    for (const e of list.getEntries()) pauses.push(e.duration)
  })
  obs.observe({ entryTypes: ['gc'] })
  const times: number[] = []
  for (const b of steady) {
    const t = performance.now()
    agg.ingestIds(b.keyIds, b.timestamps, b.values, b.offsets)
    times.push(performance.now() - t)
    await yieldToLoop()
  }
  await yieldToLoop()
  obs.disconnect()
  const openFilled = keys // one window per key after the fill
  const result: ChildResult = {
    impl,
    openWindows: keys + batches * newPerBatch,
    batchP50: percentile(times, 50),
    batchP99: percentile(times, 99),
    batchMax: Math.max(...times),
    gcCount: pauses.length,
    gcTotalMs: pauses.reduce((a, b) => a + b, 0),
    gcMaxMs: pauses.length ? Math.max(...pauses) : 0,
    rssPerWindow: (after.rss - before.rss) / openFilled,
    heapPerWindow: (after.heapUsed - before.heapUsed) / openFilled,
  }
  if (agg instanceof PartitionAggregator) {
    const s = agg.stats
    result.openWindows = s.openWindows
    result.nativePerWindow = s.bytesHeld / s.openWindows
    agg.free()
    result.nativeMarginalPerWindow = nativeMarginal(200_000, o.quantiles, o.logValues)
  }
  process.stdout.write(`${JSON.stringify(result)}\n`)
}

interface SweepResult {
  windows: number
  samples: number
  bytesPerWindow: number
  rssPerWindow: number
  heapPerWindow: number
  nsPerSample: number
}

/**
 * `windows` keys in one one-day window, each given exactly `perWindow` samples (rounds over one
 * shuffled key order), values log-uniform over [1, 10^4). Batches are generated into reused
 * arrays, so the RSS delta is the aggregator's (keys included); only ingest calls are timed.
 */
async function sweepChild(
  perWindow: number,
  windows: number,
  batchSize: number,
  quantiles: boolean,
): Promise<void> {
  const names = keyNames(windows)
  const order = new Uint32Array(windows).map((_, i) => i)
  const shuffle = rng(17)
  for (let i = windows - 1; i > 0; i--) {
    const j = Math.floor(shuffle() * (i + 1))
    const t = order[i]!
    order[i] = order[j]!
    order[j] = t
  }
  const rand = rng(19)
  const keyIds = new Uint32Array(batchSize)
  const timestamps = new Float64Array(batchSize)
  const values = new Float64Array(batchSize)
  const offsets = new Float64Array(batchSize)
  const total = windows * perWindow
  const before = await settle()
  const agg = new PartitionAggregator({ ...geometry, ...(quantiles ? quantileConfig : {}) })
  const ids = agg.pinKeys(names)
  if (ids.some((id, k) => id !== k)) throw new Error('pinned ids are not the key numbers')
  let seconds = 0
  for (let start = 0; start < total; start += batchSize) {
    const n = Math.min(batchSize, total - start)
    for (let i = 0; i < n; i++) {
      const g = start + i
      keyIds[i] = order[g % windows]!
      // Event time moves through the first 20 hours of the day: nothing closes.
      timestamps[i] = DAY0 + Math.floor((g * 72_000_000) / total)
      values[i] = log4(rand())
      offsets[i] = g
    }
    const t = performance.now()
    if (n === batchSize) agg.ingestIds(keyIds, timestamps, values, offsets)
    else
      agg.ingestIds(
        keyIds.subarray(0, n),
        timestamps.subarray(0, n),
        values.subarray(0, n),
        offsets.subarray(0, n),
      )
    seconds += (performance.now() - t) / 1000
    await yieldToLoop()
  }
  const after = await settle()
  const s = agg.stats
  if (s.openWindows !== windows) throw new Error(`${s.openWindows} open windows, not ${windows}`)
  const result: SweepResult = {
    windows,
    samples: total,
    bytesPerWindow: s.bytesHeld / s.openWindows,
    rssPerWindow: (after.rss - before.rss) / windows,
    heapPerWindow: (after.heapUsed - before.heapUsed) / windows,
    nsPerSample: (seconds * 1e9) / total,
  }
  agg.free()
  process.stdout.write(`${JSON.stringify(result)}\n`)
}

function spawnChild<T>(args: string[]): T {
  const argv = [...process.execArgv, '--expose-gc', __filename, ...args]
  const r = spawnSync(process.execPath, argv, { encoding: 'utf8', maxBuffer: 1 << 24 })
  if (r.status !== 0) throw new Error(`child ${args.join(' ')} failed: ${r.stderr}`)
  return JSON.parse(r.stdout.trim().split('\n').pop()!) as T
}

/** Windows per --per-window entry: 100k, or fewer so a run ingests at most 10M samples. */
const sweepWindows = (perWindow: number) => Math.min(100_000, Math.floor(10_000_000 / perWindow))

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      child: { type: 'string' },
      keys: { type: 'string', default: '1000000' },
      batches: { type: 'string', default: '500' },
      batch: { type: 'string', default: '10000' },
      runs: { type: 'string', default: '3' },
      'per-window': { type: 'string', default: '1,10,100,1000,10000' },
      'quantiles-only': { type: 'boolean', default: false },
      'no-quantiles': { type: 'boolean', default: false },
      // Child options.
      quantiles: { type: 'boolean', default: false },
      'log-values': { type: 'boolean', default: false },
      windows: { type: 'string' },
    },
  })
  if (values.child === undefined) console.log(benchEnvironment())
  const keys = Number(values.keys)
  const batches = Number(values.batches)
  const batchSize = Number(values.batch)
  if (values.child === 'sweep')
    return sweepChild(
      Number(values['per-window']),
      Number(values.windows),
      batchSize,
      values.quantiles,
    )
  if (values.child !== undefined)
    return child({
      impl: values.child as Impl,
      keys,
      batches,
      batchSize,
      quantiles: values.quantiles,
      logValues: values['log-values'],
    })
  const runs = Number(values.runs)
  const common = [
    '--keys',
    String(keys),
    '--batches',
    String(batches),
    '--batch',
    String(batchSize),
  ]
  const header =
    '| impl | open windows | batch p50 ms | batch p99 ms | batch max ms | GC pauses | GC total ms | GC max pause ms | RSS B/window | JS heap B/window | native bytesHeld B/window | native B per extra window (keys apart) |'
  /** One table row: the median over the runs of each column, with its decimals. */
  const row = (name: string, rs: ChildResult[]) => {
    const columns: [(r: ChildResult) => number | undefined, number][] = [
      [(r) => r.batchP50, 2],
      [(r) => r.batchP99, 2],
      [(r) => r.batchMax, 2],
      [(r) => r.gcCount, 0],
      [(r) => r.gcTotalMs, 1],
      [(r) => r.gcMaxMs, 2],
      [(r) => r.rssPerWindow, 0],
      [(r) => r.heapPerWindow, 0],
      [(r) => r.nativePerWindow, 1],
      [(r) => r.nativeMarginalPerWindow, 1],
    ]
    const cells = columns.map(([f, d]) => {
      const v = median(rs.map((r) => f(r) ?? NaN))
      return Number.isNaN(v) ? '–' : v.toFixed(d)
    })
    return `| ${name} | ${fmt(median(rs.map((r) => r.openWindows)))} | ${cells.join(' | ')} |`
  }
  const setup = `${fmt(keys)} keys × one-day tumbling window, then ${fmt(batches)} batches of ${fmt(batchSize)} (5% new keys), one event-loop turn per batch; fresh process per run, median of ${runs} runs`
  let gcLine: string | undefined
  const quantileLines: string[] = []

  if (!values['quantiles-only']) {
    const results: Record<Impl, ChildResult[]> = { native: [], 'map-ts': [] }
    for (let run = 0; run < runs; run++) {
      for (let j = 0; j < impls.length; j++) {
        const impl = impls[(run + j) % impls.length]!
        results[impl].push(spawnChild<ChildResult>(['--child', impl, ...common]))
      }
    }
    const med = (impl: Impl, f: (r: ChildResult) => number | undefined) =>
      median(results[impl].map((r) => f(r) ?? NaN))
    console.log(`\n${setup}`)
    console.log(header)
    console.log('|---|---|---|---|---|---|---|---|---|---|---|---|')
    for (const impl of impls) console.log(row(impl, results[impl]))
    gcLine = `gc: native max pause ${med('native', (r) => r.gcMaxMs).toFixed(2)} ms p99 batch ${med('native', (r) => r.batchP99).toFixed(2)} ms; map-ts max pause ${med('map-ts', (r) => r.gcMaxMs).toFixed(2)} ms p99 batch ${med('map-ts', (r) => r.batchP99).toFixed(2)} ms`
  }

  if (!values['no-quantiles']) {
    // The same phases with values spanning four decades, quantiles off and on.
    const variants = [false, true]
    const q: Record<'off' | 'on', ChildResult[]> = { off: [], on: [] }
    for (let run = 0; run < runs; run++)
      for (let j = 0; j < variants.length; j++) {
        const on = variants[(run + j) % variants.length]!
        const args = [
          '--child',
          'native',
          ...common,
          '--log-values',
          ...(on ? ['--quantiles'] : []),
        ]
        q[on ? 'on' : 'off'].push(spawnChild<ChildResult>(args))
      }
    console.log(
      `\nquantiles ${JSON.stringify(QUANTILES)} at ${ACCURACY * 100}% vs none, values log-uniform over [1, 10^4): ${setup}`,
    )
    console.log(header)
    console.log('|---|---|---|---|---|---|---|---|---|---|---|---|')
    console.log(row('native, quantiles off', q.off))
    console.log(row('native, quantiles on', q.on))

    // Bytes per open window against samples per window.
    const perWindow = values['per-window'].split(',').map(Number)
    const sweep = new Map<number, Record<'off' | 'on', SweepResult[]>>()
    for (const n of perWindow) {
      const rs: Record<'off' | 'on', SweepResult[]> = { off: [], on: [] }
      for (let run = 0; run < runs; run++)
        for (let j = 0; j < variants.length; j++) {
          const on = variants[(run + j) % variants.length]!
          const args = ['--child', 'sweep', '--per-window', String(n)]
          args.push('--windows', String(sweepWindows(n)), '--batch', String(batchSize))
          if (on) args.push('--quantiles')
          rs[on ? 'on' : 'off'].push(spawnChild<SweepResult>(args))
        }
      sweep.set(n, rs)
      console.error(`done: ${n} samples per window`)
    }
    console.log(
      `\nbytes per open window against samples per window: quantiles ${JSON.stringify(QUANTILES)} at ${ACCURACY * 100}% vs none, values log-uniform over [1, 10^4), one-day window, keys shuffled; fresh process per run, median of ${runs} runs`,
    )
    console.log(
      '| samples per window | open windows | bytesHeld B/window off | bytesHeld B/window on | sketch B/window (on − off) | RSS B/window off | RSS B/window on | RSS on − off | ingest ns/sample off | ingest ns/sample on |',
    )
    console.log('|---|---|---|---|---|---|---|---|---|---|')
    const med = (rs: SweepResult[], f: (r: SweepResult) => number) => median(rs.map(f))
    let worst = { n: 0, added: -Infinity, total: 0, rss: 0, windows: 0 }
    for (const [n, rs] of sweep) {
      const off = med(rs.off, (r) => r.bytesPerWindow)
      const on = med(rs.on, (r) => r.bytesPerWindow)
      const rssOff = med(rs.off, (r) => r.rssPerWindow)
      const rssOn = med(rs.on, (r) => r.rssPerWindow)
      if (on - off > worst.added)
        worst = { n, added: on - off, total: on, rss: rssOn - rssOff, windows: rs.on[0]!.windows }
      // RSS moves by whole pages and allocator arenas: below 10k windows its share is noise.
      const windows = rs.on[0]!.windows
      const rss = (x: number) => (windows < 10_000 ? '–' : x.toFixed(0))
      console.log(
        `| ${fmt(n)} | ${fmt(windows)} | ${off.toFixed(1)} | ${on.toFixed(1)} | ${(on - off).toFixed(1)} | ${rss(rssOff)} | ${rss(rssOn)} | ${rss(rssOn - rssOff)} | ${med(rs.off, (r) => r.nsPerSample).toFixed(1)} | ${med(rs.on, (r) => r.nsPerSample).toFixed(1)} |`,
      )
    }
    const qMed = (f: (r: ChildResult) => number | undefined) => ({
      off: median(q.off.map((r) => f(r) ?? NaN)),
      on: median(q.on.map((r) => f(r) ?? NaN)),
    })
    const perOpen = qMed((r) => r.nativePerWindow)
    const p99 = qMed((r) => r.batchP99)
    const pause = qMed((r) => r.gcMaxMs)
    quantileLines.push(
      `quantiles gc: ${fmt(keys)} keys, bytesHeld ${perOpen.off.toFixed(0)} -> ${perOpen.on.toFixed(0)} B/window, p99 batch ${p99.off.toFixed(2)} -> ${p99.on.toFixed(2)} ms, max GC pause ${pause.off.toFixed(2)} -> ${pause.on.toFixed(2)} ms`,
      `quantiles memory: sketch adds at most ${worst.added.toFixed(0)} B per open window (${fmt(worst.n)} samples per window; ${worst.total.toFixed(0)} B/window in all with keys${worst.windows < 10_000 ? '' : `, RSS +${worst.rss.toFixed(0)} B`}) (target <= 1 KiB per open window at 1%: ${worst.added <= 1024 ? 'met' : 'missed'})`,
    )
  }
  // The summary lines; the gc line (unless --quantiles-only) comes last, as before.
  for (const line of [...quantileLines, ...(gcLine === undefined ? [] : [gcLine])])
    console.log(line)
}

main().then(
  () => process.exit(0),
  (error: unknown) => {
    console.error(error)
    process.exit(1)
  },
)
