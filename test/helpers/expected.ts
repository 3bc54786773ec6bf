/**
 * Integration tests' expectations from what is really in the input topic: the windows a
 * recomputation closes, and the comparison of a replica's results with them.
 */
import { expect } from 'vitest'
import { decodeTelemetryBatch, type WindowAggregate } from '../../consumer/schemas'
import { referenceRun, windowId, type RefConfig, type ReferenceRun } from '../reference'
import type { ReadMessage } from './kafka'

/** The recomputation of input `messages` (TelemetryBatch values) over `partitions` partitions. */
export function referenceOfInput(
  messages: readonly ReadMessage[],
  partitions: number,
  config: RefConfig,
): { reference: ReferenceRun; samples: number } {
  const samplesByPartition = Array.from({ length: partitions }, (_, p) =>
    messages
      .filter((m) => m.partition === p)
      .flatMap((m) => decodeTelemetryBatch(m.value as Buffer).samples),
  )
  return {
    reference: referenceRun(samplesByPartition, config),
    samples: samplesByPartition.flat().length,
  }
}

/** Every closed window once, each as recomputed (`label` names the run in failures). */
export function expectMatchesReference(
  results: readonly WindowAggregate[],
  reference: ReferenceRun,
  label: string,
): void {
  expect(results, label).toHaveLength(reference.closed.size)
  for (const result of results) {
    const want = reference.closed.get(windowId(result.seriesKey, result.windowStart))
    expect(want, `${label}: window ${result.seriesKey}@${result.windowStart}`).toBeDefined()
    expect([result.count, result.min, result.max]).toEqual([want?.count, want?.min, want?.max])
    expect(result.sum).toBeCloseTo(want?.sum ?? NaN, 6)
  }
}
