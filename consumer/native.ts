import path from 'node:path'
import type * as Binding from '../native/index.js'
import type { ClosedWindows } from '../native/index.js'
import { packageRoot } from './paths'

/**
 * The only module that loads the napi-rs binding (`native/`, built by `npm run build:native`).
 * Loaded by path from the package root so it works from source and from dist/ alike.
 */
// eslint-disable-next-line @typescript-eslint/no-require-imports
const binding = require(path.join(packageRoot, 'native', 'index.js')) as typeof Binding

/** The binding's IngestResult, with `closed` as ClosedWindows (the keys split, see `unpack`). */
export type IngestResult = Omit<Binding.IngestResult, 'closed'> & { closed: ClosedWindows }
/** The binding's AvroIngestResult, with `result` an IngestResult as above. */
export type AvroIngestResult = Omit<Binding.AvroIngestResult, 'result'> & { result: IngestResult }

/**
 * The binding returns closed windows' series keys as a few strings of text with each key's end
 * (a string per row through N-API costs several times a `slice` here); this splits them.
 */
function unpack(packed: Binding.PackedClosedWindows): ClosedWindows {
  const { keyText, keyEnds, keySegmentRows, ...columns } = packed
  const seriesKeys = new Array<string>(keyEnds.length)
  let row = 0
  keyText.forEach((text, segment) => {
    const rows = row + (keySegmentRows[segment] as number)
    for (let start = 0; row < rows; row++) {
      const end = keyEnds[row] as number
      seriesKeys[row] = text.slice(start, end)
      start = end
    }
  })
  return { seriesKeys, ...columns }
}

const unpackResult = (result: Binding.IngestResult): IngestResult => ({
  ...result,
  closed: unpack(result.closed),
})

const noIndexes = Object.freeze(new Uint32Array(0))
const noReasons = Object.freeze(new Uint8Array(0))
const noValues = Object.freeze(new Float64Array(0))
const noneClosed: ClosedWindows = Object.freeze({
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
function allAggregated(samples: number): IngestResult {
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
  ): IngestResult {
    return this.ingestDeferred(keys, keyIndex, timestamps, values, offsets, maxEventTime)
      ? unpackResult(this.takeResult())
      : allAggregated(keyIndex.length)
  }

  /** See the binding's `ingestIdsDeferred` for the rules. */
  ingestIds(
    keyIds: Uint32Array,
    timestamps: Float64Array,
    values: Float64Array,
    offsets: Float64Array,
    maxEventTime?: number | null,
  ): IngestResult {
    return this.ingestIdsDeferred(keyIds, timestamps, values, offsets, maxEventTime)
      ? unpackResult(this.takeResult())
      : allAggregated(keyIds.length)
  }

  /** See the binding's `ingestAvroPacked` for the rules. */
  ingestAvro(
    ...args: Parameters<Binding.PartitionAggregator['ingestAvroPacked']>
  ): AvroIngestResult {
    const out = this.ingestAvroPacked(...args)
    return { ...out, result: unpackResult(out.result) }
  }

  /** See the binding's `advanceStreamTimePacked`. */
  advanceStreamTime(streamTime: number): ClosedWindows {
    return unpack(this.advanceStreamTimePacked(streamTime))
  }
}

/** See the binding's `encodeResults` and `encodeChangelog`. */
export const { encodeResults, encodeChangelog } = binding

export type {
  AggregatorConfig,
  AggregatorStats,
  ClosedWindows,
  OutputRecords,
  SampleRows,
  WindowStates,
} from '../native/index.js'
