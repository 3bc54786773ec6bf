/**
 * Aggregation core throughput: the native PartitionAggregator against two pure-TypeScript
 * aggregators (bench/lib.ts) on the same pre-built batches, side by side in one run. Only
 * `ingest` calls are timed (plus one event-loop turn per batch, which frees returned arrays).
 *
 *   npm run bench:core -- [--samples 10000000] [--samples-1m 1000000] [--batch 10000] [--runs 3]
 *                         [--keys 10000,1000000] [--quantiles-only | --no-quantiles]
 *                         [--steady-samples 10000000 | --no-steady | --steady-only | --avro-only]
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
 * --no-steady skips them. --steady-only runs just those rows (no checks, no other rows);
 * --avro-only just the 'avro' one (below).
 *
 * The steady-state rows include the service's own path, form 'avro' (native only: the TS
 * aggregators decode no Avro, so their columns show '–'): the same steady samples as plain Avro
 * TelemetryBatch values (consumer/codec encodeTelemetryBatch, no Confluent header, as the service
 * reads by default), AVRO_SAMPLES_PER_MESSAGE (100) samples per message, i.e. per Kafka record,
 * so 100 messages per batch, and one `ingestAvro` call per batch as consumer/pipeline.ts
 * ingestNatively makes it (maxEventTime: now + 5 min, the service's default --max-future-skew).
 * Encoding, and the per-batch locate step (TelemetryDecoder.locate per message, the concatenated
 * values, bounds, body starts, roots, message offsets), are done before timing; the locate
 * step's cost is measured then and printed under the table. That aggregator's fill is untimed
 * through `ingest` (per-batch tables) with the same key names, as the service pins no keys. Each
 * run checks that every sample was aggregated and no message failed.
 */
import { parseArgs } from 'node:util'
import { encodeTelemetryBatch, type Sample } from '../consumer/codec'
import { TelemetryDecoder } from '../consumer/decode'
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

/** Samples per Avro message (one Kafka record value) in the steady 'avro' row. */
const AVRO_SAMPLES_PER_MESSAGE = 100
/** The service's default --max-future-skew (5m): its ingest passes now + this as maxEventTime. */
const MAX_FUTURE_SKEW_MS = 5 * 60_000

/** One batch's `ingestAvro` arguments, as consumer/pipeline.ts ingestNatively builds them. */
interface AvroBatch {
  values: Buffer
  bounds: Uint32Array
  bodyStarts: Uint32Array
  roots: Uint32Array
  offsets: Float64Array
  samples: number
}

/**
 * `batches` as plain Avro TelemetryBatch messages of `perMessage` samples (message offsets from
 * `firstOffset`, one per message), located and laid out per batch like ingestNatively does.
 * Returns the encoded bytes and the seconds the locate step (everything after encoding) took.
 */
function avroBatches(
  batches: Batch[],
  names: string[],
  decoder: TelemetryDecoder,
  perMessage: number,
  firstOffset: number,
): { batches: AvroBatch[]; messages: number; bytes: number; locateSeconds: number } {
  const out: AvroBatch[] = []
  let messages = 0
  let bytes = 0
  let locateSeconds = 0
  for (const b of batches) {
    const n = b.timestamps.length
    const encoded: Buffer[] = []
    for (let start = 0; start < n; start += perMessage) {
      const samples: Sample[] = []
      for (let i = start; i < Math.min(n, start + perMessage); i++)
        samples.push({
          seriesKey: names[b.keyIds[i]!]!,
          eventTime: b.timestamps[i]!,
          value: b.values[i]!,
        })
      encoded.push(encodeTelemetryBatch({ sourceId: 'bench-core', samples }))
    }
    const t = performance.now()
    const located = encoded.map((value, i) => {
      const where = decoder.locate(value)
      if (!where.ok) throw new Error(`message ${i}: ${where.failure.message}`)
      return { value, body: where.body, root: where.root, offset: firstOffset + messages + i }
    })
    const m = located.length
    const bounds = new Uint32Array(m + 1)
    const bodyStarts = new Uint32Array(m)
    const roots = new Uint32Array(m)
    const offsets = new Float64Array(m)
    located.forEach((x, i) => {
      bounds[i + 1] = bounds[i]! + x.value.length
      bodyStarts[i] = x.body
      roots[i] = x.root
      offsets[i] = x.offset
    })
    const values = m === 1 ? located[0]!.value : Buffer.concat(located.map((x) => x.value))
    locateSeconds += (performance.now() - t) / 1000
    out.push({ values, bounds, bodyStarts, roots, offsets, samples: n })
    messages += m
    bytes += values.length
  }
  return { batches: out, messages, bytes, locateSeconds }
}

/**
 * The steady 'avro' row, one run: a fresh native aggregator, the fill untimed through `ingest`,
 * then one timed `ingestAvro` per batch. Throws unless every sample was aggregated.
 */
async function timeAvroRun(
  g: Geometry,
  fill: Batch[],
  batches: AvroBatch[],
  decoder: TelemetryDecoder,
): Promise<number> {
  const agg = new PartitionAggregator(g)
  for (const b of fill) {
    agg.ingest(b.keys, b.keyIndex, b.timestamps, b.values, b.offsets)
    await yieldToLoop()
  }
  const words = decoder.program.words
  let seconds = 0
  let samples = 0
  let aggregated = 0
  let failed = 0
  for (const b of batches) {
    const maxEventTime = Date.now() + MAX_FUTURE_SKEW_MS
    const t = performance.now()
    const out = agg.ingestAvro(
      words,
      b.values,
      b.bounds,
      b.bodyStarts,
      b.roots,
      b.offsets,
      decoder.maxSamplesPerBatch,
      maxEventTime,
    )
    seconds += (performance.now() - t) / 1000
    samples += b.samples
    aggregated += out.result.aggregated
    failed += out.failedMessages.length
    await yieldToLoop()
  }
  agg.free()
  if (aggregated !== samples || failed !== 0)
    throw new Error(
      `avro steady run: ${aggregated} of ${samples} samples aggregated, ${failed} messages failed`,
    )
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
      'steady-only': { type: 'boolean', default: false },
      'avro-only': { type: 'boolean', default: false },
    },
  })
  const batchSize = Number(values.batch)
  const runs = Number(values.runs)
  const keyCounts = values.keys.split(',').map(Number)
  const avroOnly = values['avro-only']
  const steadyOnly = values['steady-only'] || avroOnly
  if (steadyOnly && (values['no-steady'] || values['quantiles-only']))
    throw new Error(
      '--steady-only runs only the steady-state rows: not with --no-steady or --quantiles-only',
    )
  const withMain = !values['quantiles-only']
  const withQuantiles = !values['no-quantiles'] && !steadyOnly
  if (withMain && !steadyOnly) await verify()
  if (withQuantiles) await verifyQuantiles()
  const geometries: [string, Geometry][] = [
    ['tumbling 60s', { sizeMs: 60_000, advanceMs: 60_000, graceMs: 2_000 }],
    ['hopping 60s/15s', { sizeMs: 60_000, advanceMs: 15_000, graceMs: 2_000 }],
  ]
  const rows: {
    /** avro: Avro messages through ingestAvro (native only; the TS rates are NaN). */
    form: KeyForm | 'avro'
    keys: number
    samples: number
    geometry: string
    /** fill: most samples open a new (key, window); steady: every window open before timing. */
    phase: 'fill' | 'steady'
    rate: Record<Impl, number>
  }[] = []
  /** The steady 'avro' rows' input, for the note under the table. */
  const avroNotes: string[] = []
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
    if (steadyOnly && keys < 1_000_000) continue
    const samples = keys >= 1_000_000 ? Number(values['samples-1m']) : Number(values.samples)
    // 10M samples span 10 minutes of event time (16.7 samples per ms); smaller runs keep the rate.
    const spanMs = samples * 0.06
    const names = keyNames(keys)
    if (withMain && !steadyOnly) {
      const batches = makeWorkload({ samples, keys, batchSize, spanMs })
      for (const [geometry, g] of geometries)
        for (const form of ['ids', 'tables'] as const) {
          const rate = await compare(g, batches, form, names)
          const phase = keys >= 1_000_000 ? 'fill' : 'steady'
          rows.push({ form, keys, samples, geometry, phase, rate })
          console.error(`done: ${keys} keys, ${geometry}, ${form}`)
        }
    }
    if (withMain && keys >= 1_000_000 && !values['no-steady']) {
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
      for (const form of avroOnly ? [] : (['ids', 'tables'] as const)) {
        const rate = await compare(g, steady, form, names, fill)
        rows.push({ form, keys, samples: steadySamples, geometry, phase: 'steady', rate })
        console.error(`done: ${keys} keys, ${geometry}, ${form}, steady state`)
      }
      // The same samples as the service receives them: Avro messages, one ingestAvro per batch.
      const decoder = new TelemetryDecoder()
      const avro = avroBatches(steady, names, decoder, AVRO_SAMPLES_PER_MESSAGE, keys)
      const secs: number[] = []
      for (let run = 0; run < runs; run++)
        secs.push(await timeAvroRun(g, fill, avro.batches, decoder))
      rows.push({
        form: 'avro',
        keys,
        samples: steadySamples,
        geometry,
        phase: 'steady',
        rate: { native: steadySamples / median(secs), 'map-ts': NaN, 'typed-ts': NaN },
      })
      avroNotes.push(
        `Avro messages: ${fmt(keys)} keys, ${fmt(avro.messages)} plain TelemetryBatch messages of ${AVRO_SAMPLES_PER_MESSAGE} samples (${(avro.bytes / avro.messages).toFixed(0)} bytes each, ${(avro.bytes / steadySamples).toFixed(1)} per sample), ${fmt(avro.batches.length)} ingestAvro calls of ${fmt(avro.messages / avro.batches.length)} messages; timed: ingestAvro only (runs ${secs.map((t) => `${(steadySamples / t / 1e6).toFixed(2)}M`).join(', ')}); untimed: encoding, and the locate step (locate, concatenated values, bounds, bodyStarts, roots, offsets) at ${((avro.locateSeconds * 1e9) / steadySamples).toFixed(1)} ns/sample`,
      )
      console.error(`done: ${keys} keys, ${geometry}, avro, steady state`)
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
    const form = {
      ids: 'pinned ids',
      tables: 'per-batch tables',
      avro: 'Avro messages (ingestAvro)',
    }
    const rate = (x: number) => (Number.isNaN(x) ? '–' : fmt(x))
    const ratio = (x: number) => (Number.isNaN(x) ? '–' : `${x.toFixed(1)}x`)
    for (const r of rows) {
      console.log(
        `| ${form[r.form]} | ${fmt(r.keys)} | ${fmt(r.samples)} | ${r.geometry} | ${r.phase} | ${rate(r.rate.native)} | ${rate(r.rate['map-ts'])} | ${rate(r.rate['typed-ts'])} | ${ratio(r.rate.native / r.rate['map-ts'])} | ${ratio(r.rate.native / r.rate['typed-ts'])} |`,
      )
    }
    for (const note of avroNotes) console.log(note)
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
  const tsRows = rows.filter((r) => r.form !== 'avro')
  if (tsRows.length > 0) {
    const head =
      tsRows.find(
        (r) => r.form === 'ids' && r.keys === 10_000 && r.geometry.startsWith('tumbling'),
      ) ?? tsRows[0]!
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
