import path from 'node:path'
import { Worker } from 'node:worker_threads'
import { describe, expect, it } from 'vitest'
import { PartitionAggregator } from '../consumer/native'
import { packageRoot } from '../consumer/paths'
import { ReferenceAggregator } from './reference'

/**
 * napi-rs addons must be context-aware to load in more than one context: this runs the binding
 * in worker threads (also while the main thread has it loaded) and checks the results.
 */

interface WorkerReply {
  aggregated: number
  late: number
  closed: { key: string; start: number; end: number; count: number; sum: number }[]
  streamTime: number | null
  threadId: number
}

const loader = path.join(packageRoot, 'native', 'index.js')

// Plain CommonJS evaluated by the worker; the loader path comes in through workerData.
const script = `
const { parentPort, workerData, threadId } = require('node:worker_threads')
const { PartitionAggregator } = require(workerData.loader)
const aggregator = new PartitionAggregator({ sizeMs: 10, advanceMs: 5 })
const n = workerData.timestamps.length
// The raw binding: a batch with late samples or closed windows leaves its result to take.
const detailed = aggregator.ingestDeferred(
  workerData.keys,
  Uint32Array.from(workerData.keyIndex),
  Float64Array.from(workerData.timestamps),
  Float64Array.from(workerData.values),
  Float64Array.from({ length: n }, (_, i) => i),
)
if (!detailed) throw new Error('the batch closes windows, so it has a result to take')
const out = aggregator.takeResult()
const c = out.closed
// The raw binding packs the keys (consumer/native.ts splits them): here one segment.
if (c.keyText.length !== 1) throw new Error('one segment of key text expected')
const seriesKeys = Array.from(c.keyEnds, (end, i) => c.keyText[0].slice(i > 0 ? c.keyEnds[i - 1] : 0, end))
parentPort.postMessage({
  aggregated: out.aggregated,
  late: out.late,
  closed: seriesKeys.map((key, i) => ({
    key, start: c.windowStart[i], end: c.windowEnd[i], count: c.count[i], sum: c.sum[i],
  })),
  streamTime: aggregator.streamTime,
  threadId,
})
aggregator.free()
`

const input = {
  keys: ['a', 'b'],
  keyIndex: [0, 1, 0, 1, 0, 0, 1],
  timestamps: [1, 3, 7, 12, 2, 30, 31],
  values: [1, 2, 3, 4, 5, 6, 7],
}

function runWorker(): Promise<WorkerReply> {
  return new Promise((resolve, reject) => {
    const worker = new Worker(script, { eval: true, workerData: { loader, ...input } })
    worker.once('message', (reply: WorkerReply) => {
      resolve(reply)
      void worker.terminate()
    })
    worker.once('error', reject)
    worker.once('exit', (code) => {
      if (code !== 0) reject(new Error(`worker exited with code ${code}`))
    })
  })
}

function expected() {
  const ref = new ReferenceAggregator({ sizeMs: 10, advanceMs: 5 })
  const result = ref.ingest(
    input.keyIndex.map((k, i) => ({
      key: input.keys[k] ?? null,
      ts: input.timestamps[i] as number,
      value: input.values[i] as number,
      offset: i,
    })),
  )
  return {
    aggregated: result.aggregated,
    late: result.late,
    closed: result.closed.map(({ key, start, end, count, sum }) => ({
      key,
      start,
      end,
      count,
      sum,
    })),
    streamTime: ref.streamTime,
  }
}

describe('native binding in worker threads', () => {
  it('loads and aggregates inside a Worker', async () => {
    const reply = await runWorker()
    expect(reply.threadId).toBeGreaterThan(0)
    expect(reply).toMatchObject(expected())
    expect(reply.closed.length).toBeGreaterThan(0)
  })

  it('loads in several workers at once, alongside the main thread', async () => {
    // This test's own thread has the binding loaded too.
    const main = new PartitionAggregator({ sizeMs: 10 })
    const replies = await Promise.all([runWorker(), runWorker(), runWorker()])
    expect(new Set(replies.map((r) => r.threadId)).size).toBe(3)
    for (const reply of replies) expect(reply).toMatchObject(expected())
    expect(main.stats.openWindows).toBe(0)
    main.free()
  })
})
