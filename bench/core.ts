/**
 * Aggregation core throughput: the native PartitionAggregator against two pure-TypeScript
 * aggregators (bench/lib.ts) on the same pre-built batches, side by side in one run. Only
 * `ingest` calls are timed (plus one event-loop turn per batch, which frees returned arrays).
 *
 *   npm run bench:core -- [--samples 10000000] [--samples-1m 1000000] [--batch 10000] [--runs 3]
 *
 * --samples is the input for 10k keys; --samples-1m for 1M keys (smaller by default, so the whole
 * run stays near two minutes on a 2-core VM).
 */
import { parseArgs } from 'node:util'
import { PartitionAggregator } from '../consumer/native'
import {
  type Aggregator,
  type Batch,
  type Closed,
  type Geometry,
  MapAggregator,
  TypedAggregator,
  concatClosed,
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

function create(impl: Impl, g: Geometry): { agg: Aggregator; free: () => void } {
  if (impl === 'native') {
    const agg = new PartitionAggregator(g)
    return { agg, free: () => agg.free() }
  }
  return { agg: impl === 'map-ts' ? new MapAggregator(g) : new TypedAggregator(g), free: () => {} }
}

/** All three must close the same windows with the same count/sum/min/max, and agree on lateness. */
async function verify(): Promise<void> {
  const geometries: Geometry[] = [
    { sizeMs: 1_000, advanceMs: 1_000, graceMs: 200 },
    { sizeMs: 1_000, advanceMs: 250, graceMs: 200 },
  ]
  const batches = makeWorkload({
    samples: 20_000,
    keys: 100,
    batchSize: 500,
    spanMs: 20_000,
    outOfOrder: 0.05,
    maxDelayMs: 1_500,
    seed: 7,
  })
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

async function timeRun(
  impl: Impl,
  g: Geometry,
  batches: Batch[],
  form: KeyForm,
  names: string[],
): Promise<number> {
  const { agg, free } = create(impl, g)
  if (form === 'ids') {
    const ids = agg.pinKeys(names)
    if (ids.some((id, k) => id !== k))
      throw new Error(`${impl}: pinned ids are not the key numbers`)
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
  const { values } = parseArgs({
    options: {
      samples: { type: 'string', default: '10000000' },
      'samples-1m': { type: 'string', default: '1000000' },
      batch: { type: 'string', default: '10000' },
      runs: { type: 'string', default: '3' },
      keys: { type: 'string', default: '10000,1000000' },
    },
  })
  const batchSize = Number(values.batch)
  const runs = Number(values.runs)
  const keyCounts = values.keys.split(',').map(Number)
  await verify()
  const geometries: [string, Geometry][] = [
    ['tumbling 60s', { sizeMs: 60_000, advanceMs: 60_000, graceMs: 2_000 }],
    ['hopping 60s/15s', { sizeMs: 60_000, advanceMs: 15_000, graceMs: 2_000 }],
  ]
  const rows: {
    form: KeyForm
    keys: number
    samples: number
    geometry: string
    rate: Record<Impl, number>
  }[] = []
  for (const keys of keyCounts) {
    const samples = keys >= 1_000_000 ? Number(values['samples-1m']) : Number(values.samples)
    // 10M samples span 10 minutes of event time (16.7 samples per ms); smaller runs keep the rate.
    const batches = makeWorkload({ samples, keys, batchSize, spanMs: samples * 0.06 })
    const names = keyNames(keys)
    for (const [geometry, g] of geometries)
      for (const form of ['ids', 'tables'] as const) {
        const secs: Record<Impl, number[]> = { native: [], 'map-ts': [], 'typed-ts': [] }
        for (let run = 0; run < runs; run++) {
          // Rotate the order so drift on a shared machine hits every implementation alike.
          for (let j = 0; j < impls.length; j++) {
            const impl = impls[(run + j) % impls.length]!
            secs[impl].push(await timeRun(impl, g, batches, form, names))
          }
        }
        const rate = Object.fromEntries(impls.map((i) => [i, samples / median(secs[i])])) as Record<
          Impl,
          number
        >
        rows.push({ form, keys, samples, geometry, rate })
        console.error(`done: ${keys} keys, ${geometry}, ${form}`)
      }
  }
  console.log(
    `\nbatches of ${fmt(batchSize)}, 1% out of order (up to 1 s), grace 2 s, 16.7 samples per ms of event time; median of ${runs} runs, samples/s`,
  )
  console.log(
    '| keys cross as | keys | samples | windows | native | map-ts | typed-ts | native / map-ts | native / typed-ts |',
  )
  console.log('|---|---|---|---|---|---|---|---|---|')
  for (const r of rows) {
    console.log(
      `| ${r.form === 'ids' ? 'pinned ids' : 'per-batch tables'} | ${fmt(r.keys)} | ${fmt(r.samples)} | ${r.geometry} | ${fmt(r.rate.native)} | ${fmt(r.rate['map-ts'])} | ${fmt(r.rate['typed-ts'])} | ${(r.rate.native / r.rate['map-ts']).toFixed(1)}x | ${(r.rate.native / r.rate['typed-ts']).toFixed(1)}x |`,
    )
  }
  const head =
    rows.find((r) => r.form === 'ids' && r.keys === 10_000 && r.geometry.startsWith('tumbling')) ??
    rows[0]!
  console.log(
    `core: native ${Math.round(head.rate.native)} samples/s, ${(head.rate.native / head.rate['map-ts']).toFixed(1)}x map-ts, ${(head.rate.native / head.rate['typed-ts']).toFixed(1)}x typed-ts`,
  )
}

main().then(
  () => process.exit(0),
  (error: unknown) => {
    console.error(error)
    process.exit(1)
  },
)
