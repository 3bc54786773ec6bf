/**
 * Aggregation core throughput: the native PartitionAggregator against two pure-TypeScript
 * aggregators (bench/lib.ts) on the same pre-built batches, side by side in one run. Only
 * `ingest` calls are timed (plus one event-loop turn per batch, which frees returned arrays).
 *
 *   npm run bench:core -- [--samples 10000000] [--samples-1m 1000000] [--batch 10000] [--runs 3]
 *                         [--keys 10000,1000000] [--quantiles-only | --no-quantiles]
 *                         [--steady-samples 10000000 | --no-steady]
 *
 * --samples is the input for 10k keys; --samples-1m for 1M keys (smaller by default, to keep the
 * run to minutes on a 2-core VM; the quantile rows add about two).
 *
 * Quantiles: the native aggregator with quantiles [0.5, 0.9, 0.99] at 1% accuracy against the
 * native aggregator without, on the same batches (keys as pinned ids) with values log-uniform
 * over [1, 10^4), four decades; off and on alternate, median of --runs. Before timing, the
 * quantiles the native reports are checked against exact ones computed from the input.
 * --quantiles-only runs just that comparison; --no-quantiles skips it.
 *
 * The 1M-key rows of the main table are fills (about one sample per (key, window): each sample
 * opens a row). Steady-state rows follow them: an untimed fill opens every series' window, then
 * --steady-samples (default 10M: 10 per series) land in those open windows, tumbling;
 * --no-steady skips them.
 */
import { parseArgs } from 'node:util'
import { type AggregatorConfig, type ClosedWindows, PartitionAggregator } from '../consumer/native'
import {
  benchEnvironment,
  type Aggregator,
  type Batch,
  type Closed,
  type Geometry,
  MapAggregator,
  TypedAggregator,
  concatClosed,
  fillWorkload,
  diffClosed,
  fmt,
  type KeyForm,
  keyNames,
  makeWorkload,
  median,
  yieldToLoop,
} from './lib'

const impls = ['native', 'map-ts', 'typed-ts'] as const
type Impl = (typeof impls)[number]
/** The native aggregator with quantiles on (`native-q`) or off (`native`). */
const quantileVariants = ['native', 'native-q'] as const
type Variant = Impl | 'native-q'

const QUANTILES = [0.5, 0.9, 0.99]
const ACCURACY = 0.01
const quantileConfig = { quantiles: QUANTILES, quantileAccuracy: ACCURACY }

function create(impl: Variant, g: Geometry): { agg: Aggregator; free: () => void } {
  if (impl === 'native' || impl === 'native-q') {
    const agg = new PartitionAggregator(impl === 'native' ? g : { ...g, ...quantileConfig })
    return { agg, free: () => agg.free() }
  }
  return { agg: impl === 'map-ts' ? new MapAggregator(g) : new TypedAggregator(g), free: () => {} }
}

/** The checks run before timing: tumbling and hopping 1 s windows over 100 keys, 5% late-ish. */
const checkGeometries: Geometry[] = [
  { sizeMs: 1_000, advanceMs: 1_000, graceMs: 200 },
  { sizeMs: 1_000, advanceMs: 250, graceMs: 200 },
]
const checkWorkload = (samples: number, seed: number, values?: 'log4') =>
  makeWorkload({
    samples,
    keys: 100,
    batchSize: 500,
    spanMs: 20_000,
    outOfOrder: 0.05,
    maxDelayMs: 1_500,
    seed,
    ...(values !== undefined && { values }),
  })

/** All three must close the same windows with the same count/sum/min/max, and agree on lateness. */
async function verify(): Promise<void> {
  const geometries = checkGeometries
  const batches = checkWorkload(20_000, 7)
  const names = keyNames(100)
  for (const [g, form] of geometries.flatMap((g) =>
    (['ids', 'tables'] as const).map((f) => [g, f] as const),
  )) {
    const results = impls.map((impl) => {
      const { agg, free } = create(impl, g)
      if (form === 'ids') agg.pinKeys(names)
      const closed: Closed[] = []
      let aggregated = 0
      let late = 0
      for (const b of batches) {
        const r =
          form === 'ids'
            ? agg.ingestIds(b.keyIds, b.timestamps, b.values, b.offsets)
            : agg.ingest(b.keys, b.keyIndex, b.timestamps, b.values, b.offsets)
        closed.push(r.closed)
        aggregated += r.aggregated
        late += r.late
      }
      free()
      return { impl, closed: concatClosed(closed), aggregated, late }
    })
    const [ref, ...others] = results
    if (ref!.closed.seriesKeys.length === 0 || ref!.late === 0)
      throw new Error(
        `verification input: ${ref!.closed.seriesKeys.length} closed, ${ref!.late} late`,
      )
    for (const o of others) {
      const d = diffClosed(ref!.closed, o.closed)
      if (d !== null || o.aggregated !== ref!.aggregated || o.late !== ref!.late)
        throw new Error(
          `${o.impl} differs from native (${g.sizeMs}/${g.advanceMs}, ${form}): ${d ?? `aggregated ${o.aggregated} vs ${ref!.aggregated}, late ${o.late} vs ${ref!.late}`}`,
        )
    }
  }
  await yieldToLoop()
  console.log('verified')
}

/**
 * Native with quantiles on: the same closed windows (count, sum, min, max) as with them off, and
 * every reported quantile within 1% of the exact one of its window, computed here from the input
 * (rank floor(q·(n − 1)) of the window's sorted values, windows and lateness as documented).
 */
async function verifyQuantiles(): Promise<void> {
  const geometries = checkGeometries
  const batches = checkWorkload(50_000, 9, 'log4')

  const names = keyNames(100)
  let windows = 0
  let worst = 0
  for (const g of geometries) {
    // The exact values of every (key, window start).
    const exact = new Map<string, number[]>()
    let streamTime = -Infinity
    for (const b of batches)
      for (let i = 0; i < b.keyIds.length; i++) {
        const ts = b.timestamps[i]!
        streamTime = Math.max(streamTime, ts)
        const closeTime = streamTime - g.graceMs
        for (
          let s = ts - (ts % g.advanceMs);
          s > ts - g.sizeMs && s + g.sizeMs > closeTime;
          s -= g.advanceMs
        ) {
          const key = `${names[b.keyIds[i]!]}@${s}`
          let vs = exact.get(key)
          if (vs === undefined) exact.set(key, (vs = []))
          vs.push(b.values[i]!)
        }
      }
    const run = (config: AggregatorConfig) => {
      const agg = new PartitionAggregator(config)
      agg.pinKeys(names)
      const closed: ClosedWindows[] = []
      for (const b of batches)
        closed.push(agg.ingestIds(b.keyIds, b.timestamps, b.values, b.offsets).closed)
      closed.push(agg.advanceStreamTime(streamTime + 10 * g.sizeMs))
      agg.free()
      const quantiles = new Float64Array(closed.reduce((t, c) => t + c.quantiles.length, 0))
      closed.reduce((at, c) => (quantiles.set(c.quantiles, at), at + c.quantiles.length), 0)
      return { closed: concatClosed(closed), quantiles }
    }
    const off = run(g)
    const on = run({ ...g, ...quantileConfig })
    const d = diffClosed(off.closed, on.closed)
    if (d !== null) throw new Error(`quantiles on changes the closed windows: ${d}`)
    if (on.quantiles.length !== on.closed.seriesKeys.length * QUANTILES.length)
      throw new Error(`${on.quantiles.length} quantiles for ${on.closed.seriesKeys.length} rows`)
    for (let r = 0; r < on.closed.seriesKeys.length; r++) {
      const key = `${on.closed.seriesKeys[r]}@${on.closed.windowStart[r]}`
      const vs = exact.get(key)?.sort((a, b) => a - b)
      if (vs === undefined || vs.length !== on.closed.count[r])
        throw new Error(`${key}: ${on.closed.count[r]} samples, ${vs?.length} expected`)
      QUANTILES.forEach((q, j) => {
        const x = vs[Math.floor(q * (vs.length - 1))]!
        const estimate = on.quantiles[r * QUANTILES.length + j]!
        const error = Math.abs(estimate - x) / Math.abs(x)
        if (!(error <= ACCURACY * (1 + 1e-12)))
          throw new Error(`${key} q=${q}: estimate ${estimate}, exact ${x}`)
        worst = Math.max(worst, error)
      })
      windows++
    }
  }
  await yieldToLoop()
  console.log(
    `verified quantiles: ${fmt(windows)} windows × ${QUANTILES.length} quantiles, largest relative error ${(worst * 100).toFixed(2)}% (bound ${ACCURACY * 100}%)`,
  )
}

async function timeRun(
  impl: Variant,
  g: Geometry,
  batches: Batch[],
  form: KeyForm,
  names: string[],
  /** Ingested first, untimed (a steady-state row's fill). */
  warmup: Batch[] = [],
): Promise<number> {
  const { agg, free } = create(impl, g)
  if (form === 'ids') {
    const ids = agg.pinKeys(names)
    if (ids.some((id, k) => id !== k))
      throw new Error(`${impl}: pinned ids are not the key numbers`)
  }
  for (const b of warmup) {
    if (form === 'ids') agg.ingestIds(b.keyIds, b.timestamps, b.values, b.offsets)
    else agg.ingest(b.keys, b.keyIndex, b.timestamps, b.values, b.offsets)
    await yieldToLoop()
  }
  let seconds = 0
  for (const b of batches) {
    const t = performance.now()
    if (form === 'ids') agg.ingestIds(b.keyIds, b.timestamps, b.values, b.offsets)
    else agg.ingest(b.keys, b.keyIndex, b.timestamps, b.values, b.offsets)
    seconds += (performance.now() - t) / 1000
    await yieldToLoop()
  }
  free()
  return seconds
}

async function main(): Promise<void> {
  console.log(benchEnvironment())
  const { values } = parseArgs({
    options: {
      samples: { type: 'string', default: '10000000' },
      'samples-1m': { type: 'string', default: '1000000' },
      batch: { type: 'string', default: '10000' },
      runs: { type: 'string', default: '3' },
      keys: { type: 'string', default: '10000,1000000' },
      'quantiles-only': { type: 'boolean', default: false },
      'no-quantiles': { type: 'boolean', default: false },
      'steady-samples': { type: 'string', default: '10000000' },
      'no-steady': { type: 'boolean', default: false },
    },
  })
  const batchSize = Number(values.batch)
  const runs = Number(values.runs)
  const keyCounts = values.keys.split(',').map(Number)
  const withMain = !values['quantiles-only']
  const withQuantiles = !values['no-quantiles']
  if (withMain) await verify()
  if (withQuantiles) await verifyQuantiles()
  const geometries: [string, Geometry][] = [
    ['tumbling 60s', { sizeMs: 60_000, advanceMs: 60_000, graceMs: 2_000 }],
    ['hopping 60s/15s', { sizeMs: 60_000, advanceMs: 15_000, graceMs: 2_000 }],
  ]
  const rows: {
    form: KeyForm
    keys: number
    samples: number
    geometry: string
    /** fill: most samples open a new (key, window); steady: every window open before timing. */
    phase: 'fill' | 'steady'
    rate: Record<Impl, number>
  }[] = []
  /** Times every implementation on `batches` (after `warmup`), rotating the order per run. */
  const compare = async (
    g: Geometry,
    batches: Batch[],
    form: KeyForm,
    names: string[],
    warmup: Batch[] = [],
  ) => {
    const samples = batches.reduce((n, b) => n + b.timestamps.length, 0)
    const secs: Record<Impl, number[]> = { native: [], 'map-ts': [], 'typed-ts': [] }
    for (let run = 0; run < runs; run++) {
      // Rotate the order so drift on a shared machine hits every implementation alike.
      for (let j = 0; j < impls.length; j++) {
        const impl = impls[(run + j) % impls.length]!
        secs[impl].push(await timeRun(impl, g, batches, form, names, warmup))
      }
    }
    return Object.fromEntries(impls.map((i) => [i, samples / median(secs[i])])) as Record<
      Impl,
      number
    >
  }
  const qRows: {
    keys: number
    samples: number
    geometry: string
    perWindow: number
    off: number
    on: number
    offRuns: number[]
    onRuns: number[]
  }[] = []
  for (const keys of keyCounts) {
    const samples = keys >= 1_000_000 ? Number(values['samples-1m']) : Number(values.samples)
    // 10M samples span 10 minutes of event time (16.7 samples per ms); smaller runs keep the rate.
    const spanMs = samples * 0.06
    const names = keyNames(keys)
    if (withMain) {
      const batches = makeWorkload({ samples, keys, batchSize, spanMs })
      for (const [geometry, g] of geometries)
        for (const form of ['ids', 'tables'] as const) {
          const rate = await compare(g, batches, form, names)
          const phase = keys >= 1_000_000 ? 'fill' : 'steady'
          rows.push({ form, keys, samples, geometry, phase, rate })
          console.error(`done: ${keys} keys, ${geometry}, ${form}`)
        }
      if (keys >= 1_000_000 && !values['no-steady']) {
        // Steady state: every series' window opened by an untimed fill, then
        // --steady-samples (10 per series by default) within that window, tumbling.
        const steadySamples = Number(values['steady-samples'])
        const fill = fillWorkload(keys, batchSize)
        // T0 is 20 s into a 60 s window: 30 s of event time stay in it.
        const steady = makeWorkload({
          samples: steadySamples,
          keys,
          batchSize,
          spanMs: 30_000,
          firstOffset: keys,
        })
        const [geometry, g] = geometries[0]!
        for (const form of ['ids', 'tables'] as const) {
          const rate = await compare(g, steady, form, names, fill)
          rows.push({ form, keys, samples: steadySamples, geometry, phase: 'steady', rate })
          console.error(`done: ${keys} keys, ${geometry}, ${form}, steady state`)
        }
      }
    }
    if (withQuantiles) {
      // The same keys and timestamps as above; values spanning four decades.
      const batches = makeWorkload({ samples, keys, batchSize, spanMs, values: 'log4' })
      for (const [geometry, g] of geometries) {
        const secs: Record<(typeof quantileVariants)[number], number[]> = {
          native: [],
          'native-q': [],
        }
        for (let run = 0; run < runs; run++)
          for (let j = 0; j < quantileVariants.length; j++) {
            const v = quantileVariants[(run + j) % quantileVariants.length]!
            secs[v].push(await timeRun(v, g, batches, 'ids', names))
          }
        qRows.push({
          keys,
          samples,
          geometry,
          perWindow: ((samples / keys) * g.sizeMs) / spanMs,
          off: samples / median(secs.native),
          on: samples / median(secs['native-q']),
          offRuns: secs.native.map((t) => samples / t),
          onRuns: secs['native-q'].map((t) => samples / t),
        })
        console.error(`done: ${keys} keys, ${geometry}, quantiles off/on`)
      }
    }
  }
  if (withMain) {
    console.log(
      `\nbatches of ${fmt(batchSize)}, 1% out of order (up to 1 s), grace 2 s, 16.7 samples per ms of event time; median of ${runs} runs, samples/s`,
    )
    console.log(
      '| keys cross as | keys | samples | windows | phase | native | map-ts | typed-ts | native / map-ts | native / typed-ts |',
    )
    console.log('|---|---|---|---|---|---|---|---|---|---|')
    for (const r of rows) {
      console.log(
        `| ${r.form === 'ids' ? 'pinned ids' : 'per-batch tables'} | ${fmt(r.keys)} | ${fmt(r.samples)} | ${r.geometry} | ${r.phase} | ${fmt(r.rate.native)} | ${fmt(r.rate['map-ts'])} | ${fmt(r.rate['typed-ts'])} | ${(r.rate.native / r.rate['map-ts']).toFixed(1)}x | ${(r.rate.native / r.rate['typed-ts']).toFixed(1)}x |`,
      )
    }
  }
  if (withQuantiles) {
    console.log(
      `\nquantiles ${JSON.stringify(QUANTILES)} at ${ACCURACY * 100}% accuracy vs none: native, keys as pinned ids, values log-uniform over [1, 10^4) (four decades), otherwise the batches above; off and on alternate, median of ${runs} runs, samples/s`,
    )
    console.log(
      '| keys | samples | windows | samples per (key, window) | quantiles off | quantiles on | on / off (rate) | slowdown (time on / off) | ns/sample added | runs off | runs on |',
    )
    console.log('|---|---|---|---|---|---|---|---|---|---|---|')
    for (const r of qRows) {
      const runsOf = (xs: number[]) => xs.map((x) => `${(x / 1e6).toFixed(2)}M`).join(', ')
      console.log(
        `| ${fmt(r.keys)} | ${fmt(r.samples)} | ${r.geometry} | ${fmt(r.perWindow)} | ${fmt(r.off)} | ${fmt(r.on)} | ${(r.on / r.off).toFixed(2)}x | ${(r.off / r.on).toFixed(2)}x | ${(1e9 / r.on - 1e9 / r.off).toFixed(1)} | ${runsOf(r.offRuns)} | ${runsOf(r.onRuns)} |`,
      )
    }
    const headQ =
      qRows.find((r) => r.keys === 10_000 && r.geometry.startsWith('tumbling')) ?? qRows[0]!
    const worst = qRows.reduce((w, r) => (r.off / r.on > w.off / w.on ? r : w))
    const slowdown = (r: (typeof qRows)[number]) => `${(r.off / r.on).toFixed(2)}x`
    console.log(
      `quantiles: on/off ratio ${slowdown(headQ)} slower (${fmt(headQ.keys)} keys, ${headQ.geometry}; worst ${slowdown(worst)} at ${fmt(worst.keys)} keys, ${worst.geometry}) (target <= 2x: ${worst.off / worst.on <= 2 ? 'met' : 'missed'})`,
    )
  }
  if (rows.length > 0) {
    const head =
      rows.find(
        (r) => r.form === 'ids' && r.keys === 10_000 && r.geometry.startsWith('tumbling'),
      ) ?? rows[0]!
    console.log(
      `core: native ${Math.round(head.rate.native)} samples/s, ${(head.rate.native / head.rate['map-ts']).toFixed(1)}x map-ts, ${(head.rate.native / head.rate['typed-ts']).toFixed(1)}x typed-ts`,
    )
  }
}

main().then(
  () => process.exit(0),
  (error: unknown) => {
    console.error(error)
    process.exit(1)
  },
)
