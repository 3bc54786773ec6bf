import path from 'node:path'
import type * as Binding from '../native/index.js'
import { packageRoot } from './paths'

/**
 * The only module that loads the napi-rs binding (`native/`, built by `npm run build:native`).
 * Loaded by path from the package root so it works from source and from dist/ alike.
 */
// eslint-disable-next-line @typescript-eslint/no-require-imports
const binding = require(path.join(packageRoot, 'native', 'index.js')) as typeof Binding

const noIndexes = Object.freeze(new Uint32Array(0))
const noReasons = Object.freeze(new Uint8Array(0))
const noValues = Object.freeze(new Float64Array(0))
const noneClosed: Binding.ClosedWindows = Object.freeze({
  seriesKeys: Object.freeze([]) as unknown as string[],
  windowStart: noValues,
  windowEnd: noValues,
  count: noValues,
  sum: noValues,
  mean: noValues,
  min: noValues,
  max: noValues,
  quantiles: noValues,
})

/** The result of a batch whose samples were all aggregated and that closed nothing. */
function allAggregated(samples: number): Binding.IngestResult {
  return {
    aggregated: samples,
    late: 0,
    rejected: 0,
    lateIndexes: noIndexes,
    rejectedIndexes: noIndexes,
    rejectedReasons: noReasons,
    closed: noneClosed,
  }
}

/**
 * The binding's aggregator, with `ingest` and `ingestIds` returning an `IngestResult` for every
 * batch. The binding only builds one (a dozen typed arrays, about 5 µs) when the batch has
 * something beyond its count to report; a batch that aggregated every sample and closed nothing
 * gets a shared result of empty, frozen columns here.
 */
export class PartitionAggregator extends binding.PartitionAggregator {
  /** See the binding's `ingestDeferred` for the rules. */
  ingest(
    keys: string[],
    keyIndex: Uint32Array,
    timestamps: Float64Array,
    values: Float64Array,
    offsets: Float64Array,
    maxEventTime?: number | null,
  ): Binding.IngestResult {
    return this.ingestDeferred(keys, keyIndex, timestamps, values, offsets, maxEventTime)
      ? this.takeResult()
      : allAggregated(keyIndex.length)
  }

  /** See the binding's `ingestIdsDeferred` for the rules. */
  ingestIds(
    keyIds: Uint32Array,
    timestamps: Float64Array,
    values: Float64Array,
    offsets: Float64Array,
    maxEventTime?: number | null,
  ): Binding.IngestResult {
    return this.ingestIdsDeferred(keyIds, timestamps, values, offsets, maxEventTime)
      ? this.takeResult()
      : allAggregated(keyIds.length)
  }
}

/** See the binding's `encodeResults` and `encodeChangelog`. */
export const { encodeResults, encodeChangelog } = binding

export type {
  AggregatorConfig,
  AggregatorStats,
  ClosedWindows,
  IngestResult,
  OutputRecords,
  SampleRows,
  WindowStates,
} from '../native/index.js'
