import { setImmediate as nextTurn } from 'node:timers/promises'
import { describe, expect, it } from 'vitest'
import { PartitionAggregator } from '../consumer/native'

/**
 * Key-cardinality flood: every sample brings a series key never seen before, so memory can only
 * stay bounded if keys are dropped once their windows close. Native state must follow the open
 * windows (bounded by maxOpenWindows), not the number of keys ever seen.
 */

const MAX_OPEN = 100_000
const BATCH = 10_000
const SAMPLES_PER_PHASE = 1_000_000
const KEY_BYTES = 64
/** Every LATE_EVERY-th sample is stamped LATE_BY ms behind the stream: late, by construction. */
const LATE_EVERY = 100
const LATE_BY = 5_000
/** Hopping 1 s / 500 ms windows: every sample needs 2 aggregates. */
const config = { sizeMs: 1_000, advanceMs: 500, graceMs: 0, maxOpenWindows: MAX_OPEN }
const T0 = 1_700_000_000_000

/**
 * Bound on bytesHeld: per open aggregate its (id, aggregate) hash entry (56 bytes + 1 control
 * byte, at most ~2.3x for hash-table slack) and first-offset entry (16); per held key (at most
 * one per aggregate) its text twice plus its id-table entries (~60 with slack). 2 × 64 + 256
 * per open aggregate covers all of it; without key eviction the 2M keys alone would take
 * over 2M × 2 × 64 bytes = 256 MB.
 *
 * RSS is noisy (V8 heap, allocator caches), so its bound is generous; the loop yields to the
 * event loop after each batch, as the consumer does, since a tight synchronous loop keeps every
 * returned result's native buffers until it ends.
 */
const MAX_BYTES_HELD = MAX_OPEN * (2 * KEY_BYTES + 256)
const MAX_RSS_GROWTH = 300 * 1024 * 1024

function seriesKey(n: number): string {
  return `tenant-42/site-7/device/${String(n).padStart(12, '0')}/temp`.padEnd(KEY_BYTES, '~')
}

interface Phase {
  name: string
  /** Distinct keys per ms of event time: 2 × 1000 × this aggregates would be needed per window. */
  keysPerMs: number
}

describe('memory under a key-cardinality flood', () => {
  it('keeps native memory proportional to the open windows', async () => {
    expect(seriesKey(0)).toHaveLength(KEY_BYTES)
    const rssBefore = process.memoryUsage().rss
    const aggregator = new PartitionAggregator(config)
    const keyIndex = Uint32Array.from({ length: BATCH }, (_, i) => i)
    const timestamps = new Float64Array(BATCH)
    const values = new Float64Array(BATCH)
    const offsets = new Float64Array(BATCH)
    const peak = { bytesHeld: 0, openWindows: 0, seriesKeys: 0 }
    const totals = { aggregated: 0, late: 0, rejected: 0, lateExpected: 0 }
    const phases: Phase[] = [
      // ~25k keys per window: under the limit, windows close and their keys go.
      { name: 'churn', keysPerMs: 25 },
      // 250k keys per window would need 500k aggregates: the limit rejects the excess (reason 7).
      { name: 'over the limit', keysPerMs: 250 },
    ]
    let sample = 0
    let eventTime = T0
    try {
      for (const phase of phases) {
        let rejectedInPhase = 0
        const phaseStart = eventTime
        for (let done = 0; done < SAMPLES_PER_PHASE; done += BATCH) {
          const keys = new Array<string>(BATCH)
          let lateInBatch = 0
          for (let i = 0; i < BATCH; i++) {
            const n = sample + i
            // A fresh key for every sample: no key repeats, within a window or at all.
            keys[i] = seriesKey(n)
            eventTime = phaseStart + Math.floor((done + i) / phase.keysPerMs)
            const late = n % LATE_EVERY === LATE_EVERY - 1
            if (late) lateInBatch++
            timestamps[i] = late ? eventTime - LATE_BY : eventTime
            values[i] = (n % 1_000) / 10
            offsets[i] = n
          }
          sample += BATCH
          const out = aggregator.ingest(keys, keyIndex, timestamps, values, offsets)
          const stats = aggregator.stats
          const context = `${phase.name}, batch ending at sample ${sample}`
          expect(out.aggregated + out.late + out.rejected, context).toBe(BATCH)
          expect(out.late, context).toBe(lateInBatch)
          expect(
            out.rejectedReasons.every((r) => r === 7),
            context,
          ).toBe(true)
          expect(stats.openWindows, context).toBeLessThanOrEqual(MAX_OPEN)
          expect(stats.seriesKeys, context).toBeLessThanOrEqual(stats.openWindows)
          expect(stats.bytesHeld, context).toBeLessThan(MAX_BYTES_HELD)
          totals.aggregated += out.aggregated
          totals.late += out.late
          totals.rejected += out.rejected
          totals.lateExpected += lateInBatch
          rejectedInPhase += out.rejected
          peak.bytesHeld = Math.max(peak.bytesHeld, stats.bytesHeld)
          peak.openWindows = Math.max(peak.openWindows, stats.openWindows)
          peak.seriesKeys = Math.max(peak.seriesKeys, stats.seriesKeys)
          // Yield like a consumer awaiting its next fetch: Node runs the finalizers that free
          // the native buffers behind returned typed arrays only when the event loop turns.
          await nextTurn()
        }
        if (phase.name === 'churn') expect(rejectedInPhase).toBe(0)
        else expect(rejectedInPhase).toBeGreaterThan(0.5 * SAMPLES_PER_PHASE)
        // Leave this phase's windows behind before the next one starts.
        eventTime += 2 * config.sizeMs
      }

      const stats = aggregator.stats
      expect(sample).toBe(2 * SAMPLES_PER_PHASE)
      expect(totals.late).toBe(totals.lateExpected)
      expect(stats).toMatchObject({
        aggregatedTotal: totals.aggregated,
        lateTotal: totals.late,
        rejectedTotal: totals.rejected,
      })
      expect(stats.rejectedByReason[7]).toBe(totals.rejected)
      // The limit was reached, and most keys ever seen are gone again.
      expect(peak.openWindows).toBe(MAX_OPEN)
      expect(totals.aggregated).toBeGreaterThan(10 * peak.seriesKeys)

      // One more sample far ahead closes every flooded window: memory shrinks to almost nothing.
      const out = aggregator.ingest(
        ['after-the-flood'],
        Uint32Array.of(0),
        Float64Array.of(eventTime + 10 * config.sizeMs),
        Float64Array.of(1),
        Float64Array.of(sample),
      )
      expect(out.aggregated).toBe(1)
      const after = aggregator.stats
      expect([after.openWindows, after.seriesKeys]).toEqual([2, 1])
      expect(after.bytesHeld).toBeLessThan(peak.bytesHeld / 100)

      const rssDelta = process.memoryUsage().rss - rssBefore
      const mb = (bytes: number): string => `${(bytes / 1024 / 1024).toFixed(1)} MB`
      console.log(
        `memory flood: ${sample} samples / ${sample} distinct ${KEY_BYTES}-byte keys, ` +
          `maxOpenWindows ${MAX_OPEN}: peak bytesHeld ${peak.bytesHeld} (${mb(peak.bytesHeld)}), ` +
          `peak openWindows ${peak.openWindows}, peak seriesKeys ${peak.seriesKeys}, ` +
          `${(peak.bytesHeld / peak.openWindows).toFixed(1)} bytes per open window, ` +
          `rejected (7) ${totals.rejected}, bytesHeld after flush ${after.bytesHeld}, ` +
          `RSS delta ${mb(rssDelta)}`,
      )
      expect(rssDelta).toBeLessThan(MAX_RSS_GROWTH)
    } finally {
      aggregator.free()
    }
  })
})
