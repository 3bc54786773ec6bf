/**
 * Latency and GC under a large open state: at least 1M open (key, window) aggregates (1M keys,
 * one-day tumbling windows, so nothing closes), then steady ingestion in batches (95% of samples
 * for existing keys, 5% for new ones), yielding to the event loop after every batch. Per-batch
 * ingest time p50/p99/max and GC pauses (perf_hooks 'gc' entries) for the native aggregator and
 * the Map-of-objects TS version, each in a fresh child process; plus footprint per open window.
 *
 *   npm run bench:gc -- [--keys 1000000] [--batches 500] [--batch 10000] [--runs 3]
 */
import { spawnSync } from 'node:child_process'
import { PerformanceObserver } from 'node:perf_hooks'
import { parseArgs } from 'node:util'
import { PartitionAggregator } from '../consumer/native'
import {
  type Aggregator,
  type Batch,
  MapAggregator,
  T0,
  fmt,
  keyNames,
  median,
  percentile,
  rng,
  yieldToLoop,
} from './lib'

const impls = ['native', 'map-ts'] as const
type Impl = (typeof impls)[number]
const geometry = { sizeMs: 86_400_000, advanceMs: 86_400_000, graceMs: 2_000 }

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

function batchOf(keyIds: Int32Array, names: string[], t: number, firstOffset: number): Batch {
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
    values[i] = (k % 1000) / 10 + i / n
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

/** Native bytes per extra window of an existing key: 4 windows per key minus 1 window per key. */
function nativeMarginal(keys: number): number {
  const names = keyNames(keys)
  const held = (sizeMs: number, advanceMs: number) => {
    const agg = new PartitionAggregator({ sizeMs, advanceMs, graceMs: 0 })
    const ids = new Int32Array(10_000)
    for (let k = 0; k < keys; k += ids.length) {
      for (let i = 0; i < ids.length; i++) ids[i] = (k + i) % keys
      const b = batchOf(ids, names, T0 - (T0 % 86_400_000) + 3 * 3_600_000, k)
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

async function child(impl: Impl, keys: number, batches: number, batchSize: number): Promise<void> {
  const newPerBatch = Math.floor(batchSize * 0.05)
  const names = keyNames(keys + batches * newPerBatch)
  const rand = rng(11)
  // All input is built before the baseline, so the deltas are the aggregator's state.
  const fill: Batch[] = []
  for (let k = 0, off = 0; k < keys; k += batchSize, off += batchSize) {
    const ids = new Int32Array(Math.min(batchSize, keys - k)).map((_, i) => k + i)
    fill.push(batchOf(ids, names, T0, off))
  }
  const steady: Batch[] = []
  let next = keys
  for (let b = 0; b < batches; b++) {
    const ids = new Int32Array(batchSize)
    for (let i = 0; i < batchSize; i++)
      ids[i] = i < newPerBatch ? next++ : Math.floor(rand() * keys)
    steady.push(batchOf(ids, names, T0 + 1_000 + b * 100, keys + b * batchSize))
  }
  const agg: Aggregator & { stats?: PartitionAggregator['stats'] } =
    impl === 'native' ? new PartitionAggregator(geometry) : new MapAggregator(geometry)
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
    result.nativeMarginalPerWindow = nativeMarginal(200_000)
  }
  process.stdout.write(`${JSON.stringify(result)}\n`)
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      child: { type: 'string' },
      keys: { type: 'string', default: '1000000' },
      batches: { type: 'string', default: '500' },
      batch: { type: 'string', default: '10000' },
      runs: { type: 'string', default: '3' },
    },
  })
  const keys = Number(values.keys)
  const batches = Number(values.batches)
  const batchSize = Number(values.batch)
  if (values.child !== undefined) return child(values.child as Impl, keys, batches, batchSize)
  const runs = Number(values.runs)
  const results: Record<Impl, ChildResult[]> = { native: [], 'map-ts': [] }
  for (let run = 0; run < runs; run++) {
    for (let j = 0; j < impls.length; j++) {
      const impl = impls[(run + j) % impls.length]!
      const args = [...process.execArgv, '--expose-gc', __filename, '--child', impl]
      args.push('--keys', String(keys), '--batches', String(batches), '--batch', String(batchSize))
      const r = spawnSync(process.execPath, args, { encoding: 'utf8', maxBuffer: 1 << 24 })
      if (r.status !== 0) throw new Error(`${impl} child failed: ${r.stderr}`)
      results[impl].push(JSON.parse(r.stdout.trim().split('\n').pop()!) as ChildResult)
    }
  }
  const med = (impl: Impl, f: (r: ChildResult) => number | undefined) =>
    median(results[impl].map((r) => f(r) ?? NaN))
  console.log(
    `\n${fmt(keys)} keys × one-day tumbling window, then ${fmt(batches)} batches of ${fmt(batchSize)} (5% new keys), one event-loop turn per batch; fresh process per run, median of ${runs} runs`,
  )
  console.log(
    '| impl | open windows | batch p50 ms | batch p99 ms | batch max ms | GC pauses | GC total ms | GC max pause ms | RSS B/window | JS heap B/window | native bytesHeld B/window | native B per extra window (keys apart) |',
  )
  console.log('|---|---|---|---|---|---|---|---|---|---|---|---|')
  for (const impl of impls) {
    const m = (f: (r: ChildResult) => number | undefined, d = 2) => {
      const v = med(impl, f)
      return Number.isNaN(v) ? '–' : v.toFixed(d)
    }
    console.log(
      `| ${impl} | ${fmt(med(impl, (r) => r.openWindows))} | ${m((r) => r.batchP50)} | ${m((r) => r.batchP99)} | ${m((r) => r.batchMax)} | ${m((r) => r.gcCount, 0)} | ${m((r) => r.gcTotalMs, 1)} | ${m((r) => r.gcMaxMs)} | ${m((r) => r.rssPerWindow, 0)} | ${m((r) => r.heapPerWindow, 0)} | ${m((r) => r.nativePerWindow, 1)} | ${m((r) => r.nativeMarginalPerWindow, 1)} |`,
    )
  }
  console.log(
    `gc: native max pause ${med('native', (r) => r.gcMaxMs).toFixed(2)} ms p99 batch ${med('native', (r) => r.batchP99).toFixed(2)} ms; map-ts max pause ${med('map-ts', (r) => r.gcMaxMs).toFixed(2)} ms p99 batch ${med('map-ts', (r) => r.batchP99).toFixed(2)} ms`,
  )
}

main().then(
  () => process.exit(0),
  (error: unknown) => {
    console.error(error)
    process.exit(1)
  },
)
