/**
 * Cost of crossing the JS → native boundary: the same samples ingested with one call per batch,
 * for batch sizes 1 (one call per sample) to 100k; ns per sample, median of several runs. Keys
 * cross as pinned ids (`ingestIds`, as in the service, whose keys never cross as text), and for
 * comparison as per-batch tables of key strings (`ingest`).
 * 10k keys, 60 s tumbling windows, grace 2 s. The event loop turns every ~10k samples (and after
 * every batch of 10k or more), freeing the typed arrays each call returns.
 *
 * The batches are built before timing, so a call reads its columns from memory (cold). In the
 * service the decoder has just written them, so they are in the CPU caches: the "warm input"
 * column reads each batch's columns untimed right before its call and times the calls alone
 * (pinned ids). With cold input, small batches also pay for restarting the hardware's stream
 * prefetch on every batch's four columns, which is not the boundary's cost.
 *
 *   npm run bench:boundary -- [--samples 2000000] [--per-sample 200000] [--runs 5]
 */
import { parseArgs } from 'node:util'
import { PartitionAggregator } from '../consumer/native'
import {
  type Batch,
  type KeyForm,
  fmt,
  keyNames,
  makeWorkload,
  median,
  yieldToLoop,
  benchEnvironment,
} from './lib'

const geometry = { sizeMs: 60_000, advanceMs: 60_000, graceMs: 2_000 }
const keys = 10_000
const sizes = [1, 10, 100, 1_000, 10_000, 100_000]

/** An aggregator with the key dictionary pinned (ids equal to key numbers). */
function aggregator(): PartitionAggregator {
  const agg = new PartitionAggregator(geometry)
  const ids = agg.pinKeys(keyNames(keys))
  if (ids.some((id, k) => id !== k)) throw new Error('pinned ids are not the key numbers')
  return agg
}

async function timeBatches(batches: Batch[], batchSize: number, form: KeyForm): Promise<number> {
  const agg = aggregator()
  const every = Math.max(1, Math.ceil(10_000 / batchSize))
  const t = performance.now()
  for (let i = 0; i < batches.length; i++) {
    const b = batches[i]!
    if (form === 'ids') agg.ingestIds(b.keyIds, b.timestamps, b.values, b.offsets)
    else agg.ingest(b.keys, b.keyIndex, b.timestamps, b.values, b.offsets)
    if ((i + 1) % every === 0) await yieldToLoop()
  }
  const ms = performance.now() - t
  agg.free()
  return ms
}

/**
 * The calls alone, each batch's columns read (untimed) right before its call, as the decoder
 * leaves them in the service: ms for all batches (pinned ids).
 */
async function timeWarmBatches(batches: Batch[], batchSize: number): Promise<number> {
  const agg = aggregator()
  const every = Math.max(1, Math.ceil(10_000 / batchSize))
  let ms = 0
  let sink = 0
  for (let i = 0; i < batches.length; i++) {
    const b = batches[i]!
    // One read per cache line of each column (8 f64s or 16 u32s per 64-byte line).
    for (let j = 0; j < b.timestamps.length; j += 8)
      sink += b.timestamps[j]! + b.values[j]! + b.offsets[j]! + b.keyIds[j]!
    const t = performance.now()
    agg.ingestIds(b.keyIds, b.timestamps, b.values, b.offsets)
    ms += performance.now() - t
    if ((i + 1) % every === 0) await yieldToLoop()
  }
  agg.free()
  if (Number.isNaN(sink)) throw new Error('unreachable: the columns are finite')
  return ms
}

/** One call per sample, reusing four one-element arrays (what a per-record caller would do). */
async function timePerSample(input: Batch, form: KeyForm): Promise<number> {
  const agg = aggregator()
  const keyIds = new Uint32Array(1)
  const keyIndex = new Uint32Array(1)
  const timestamps = new Float64Array(1)
  const values = new Float64Array(1)
  const offsets = new Float64Array(1)
  const t = performance.now()
  for (let i = 0; i < input.keyIndex.length; i++) {
    timestamps[0] = input.timestamps[i]!
    values[0] = input.values[i]!
    offsets[0] = input.offsets[i]!
    if (form === 'ids') {
      keyIds[0] = input.keyIds[i]!
      agg.ingestIds(keyIds, timestamps, values, offsets)
    } else {
      agg.ingest([input.keys[input.keyIndex[i]!]!], keyIndex, timestamps, values, offsets)
    }
    if ((i + 1) % 10_000 === 0) await yieldToLoop()
  }
  const ms = performance.now() - t
  agg.free()
  return ms
}

async function main(): Promise<void> {
  console.log(benchEnvironment())
  const { values } = parseArgs({
    options: {
      samples: { type: 'string', default: '2000000' },
      'per-sample': { type: 'string', default: '200000' },
      runs: { type: 'string', default: '5' },
    },
  })
  const samples = Number(values.samples)
  const perSample = Number(values['per-sample'])
  const runs = Number(values.runs)
  // Same generator and event-time rate as bench/core.ts (16.7 samples per ms).
  const inputs = new Map<number, Batch[]>()
  for (const b of sizes) {
    const n = b === 1 ? perSample : samples
    inputs.set(b, makeWorkload({ samples: n, keys, batchSize: b === 1 ? n : b, spanMs: n * 0.06 }))
  }
  const ns = new Map<string, number[]>()
  for (let run = 0; run < runs; run++) {
    for (let j = 0; j < sizes.length; j++) {
      const b = sizes[(run + j) % sizes.length]!
      const input = inputs.get(b)!
      const n = b === 1 ? perSample : samples
      for (const form of ['ids', 'tables'] as const) {
        const ms =
          b === 1 ? await timePerSample(input[0]!, form) : await timeBatches(input, b, form)
        const key = `${form}/${b}`
        ns.set(key, [...(ns.get(key) ?? []), (ms * 1e6) / n])
      }
      if (b > 1) {
        const ms = await timeWarmBatches(input, b)
        ns.set(`warm/${b}`, [...(ns.get(`warm/${b}`) ?? []), (ms * 1e6) / n])
      }
    }
  }
  const med = (b: number, form: KeyForm | 'warm' = 'ids') => median(ns.get(`${form}/${b}`)!)
  console.log(
    `\n${fmt(keys)} keys, tumbling 60 s; ${fmt(samples)} samples per batch size (${fmt(perSample)} for batch 1); median of ${runs} runs`,
  )
  console.log(
    '| batch size | calls | ns/sample (pinned ids) | vs batch 100k | runs (ns/sample) | ns/sample (key tables) | vs batch 100k | ns/sample (pinned ids, warm input) | vs batch 100k |',
  )
  console.log('|---|---|---|---|---|---|---|---|---|')
  for (const b of sizes) {
    const n = b === 1 ? perSample : samples
    console.log(
      `| ${fmt(b)}${b === 1 ? ' (per-sample calls)' : ''} | ${fmt(Math.ceil(n / b))} | ${med(b).toFixed(1)} | ${(med(b) / med(100_000)).toFixed(2)}x | ${ns
        .get(`ids/${b}`)!
        .map((x) => x.toFixed(1))
        .join(
          ', ',
        )} | ${med(b, 'tables').toFixed(1)} | ${(med(b, 'tables') / med(100_000, 'tables')).toFixed(2)}x | ${b === 1 ? '–' : med(b, 'warm').toFixed(1)} | ${b === 1 ? '–' : `${(med(b, 'warm') / med(100_000, 'warm')).toFixed(2)}x`} |`,
    )
  }
  console.log(
    `boundary: batch-1k ${med(1_000).toFixed(1)} ns/sample, batch-100k ${med(100_000).toFixed(1)} ns/sample, per-sample-calls ${med(1).toFixed(1)} ns/sample`,
  )
  console.log(
    `boundary (warm input): batch-1k ${med(1_000, 'warm').toFixed(1)} ns/sample, batch-100k ${med(100_000, 'warm').toFixed(1)} ns/sample`,
  )
}

main().then(
  () => process.exit(0),
  (error: unknown) => {
    console.error(error)
    process.exit(1)
  },
)
