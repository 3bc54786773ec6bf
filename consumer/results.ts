import { RecordGroup, runsOf, type EncodedRun } from './encoded-records'
import { encodeResults, type ClosedWindows } from './native'

/**
 * A result record's bytes in a request beyond twice its key (the message key, and the key in the
 * Avro value): the record's framing, two times and the count as varints, four doubles.
 */
const RECORD_OVERHEAD = 96
/** Each quantile: two doubles. */
const QUANTILE_BYTES = 16

/**
 * The results of closed windows for the output topic, encoded natively when kafkajs builds the
 * request (`encodeResults`): Avro values in Kafka records, each on the partition kafkajs'
 * DefaultPartitioner would pick for its key.
 */
export class ResultRecords extends RecordGroup<ClosedWindows> {
  /** `quantiles`: those the aggregator was configured with (window-aggregate-quantiles.avsc). */
  constructor(
    private readonly quantiles?: number[],
    parts: readonly ClosedWindows[] = [],
  ) {
    super()
    for (const part of parts) this.add(part)
  }

  /** Appends another's results. */
  addAll(other: ResultRecords): void {
    for (const part of other.parts) this.add(part)
  }

  encode(partitions: number): EncodedRun[] {
    return runsOf(encodeResults(this.parts, partitions, this.quantiles))
  }

  protected partRows(part: ClosedWindows): number {
    return part.seriesKeys.length
  }

  protected rowBytes(part: ClosedWindows, i: number): number {
    return (
      2 * Buffer.byteLength(part.seriesKeys[i] as string) +
      RECORD_OVERHEAD +
      (this.quantiles?.length ?? 0) * QUANTILE_BYTES
    )
  }

  protected empty(): ResultRecords {
    return new ResultRecords(this.quantiles)
  }

  protected slice(c: ClosedWindows, from: number, to: number): ClosedWindows {
    const k = this.quantiles?.length ?? 0
    return {
      seriesKeys: c.seriesKeys.slice(from, to),
      windowStart: c.windowStart.subarray(from, to),
      windowEnd: c.windowEnd.subarray(from, to),
      count: c.count.subarray(from, to),
      sum: c.sum.subarray(from, to),
      mean: c.mean.subarray(from, to),
      min: c.min.subarray(from, to),
      max: c.max.subarray(from, to),
      quantiles: c.quantiles.subarray(from * k, to * k),
    }
  }
}
