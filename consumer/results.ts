import type { Message } from 'kafkajs'
import { encodeResults, type ClosedWindows } from './native'

/**
 * A result record's bytes in a request beyond twice its key (the message key, and the key in the
 * Avro value): the record's framing, two times and the count as varints, four doubles.
 */
const RECORD_OVERHEAD = 96
/** Each quantile: two doubles. */
const QUANTILE_BYTES = 16

/** One partition's records, as the patched kafkajs takes them (patches/kafkajs+2.2.4.patch). */
export interface EncodedRun {
  partition: number
  count: number
  /** Kafka record format v2 bodies, offset deltas from 0. */
  encodedRecords: Buffer
}

/**
 * A kafkajs message that stands for all the records of `results`: the patched kafkajs calls
 * `encodeRecords` with the topic's partition count when it builds a request.
 */
export interface ResultsMessage extends Message {
  value: null
  results: ResultRecords
  encodeRecords(partitions: number): EncodedRun[]
}

export const isResultsMessage = (message: Message): message is ResultsMessage =>
  (message as Partial<ResultsMessage>).results instanceof ResultRecords

/** Records `messages` stand for: a results message counts its records. */
export const recordCount = (messages: readonly Message[]): number =>
  messages.reduce((n, m) => n + (isResultsMessage(m) ? m.results.count : 1), 0)

/**
 * The results of closed windows for the output topic, kept as the aggregator's columns until
 * kafkajs builds the request. Then they are encoded natively in one call (`encodeResults`: Avro
 * values in Kafka records, each on the partition kafkajs' DefaultPartitioner would pick for its
 * key), so nothing is built per result in JS: that cost about 2.6 µs a result, more than
 * aggregating its samples (docs/benchmarks.md).
 */
export class ResultRecords {
  private readonly parts: ClosedWindows[] = []
  private rows = 0
  private byteBound: number | undefined

  /** `quantiles`: those the aggregator was configured with (window-aggregate-quantiles.avsc). */
  constructor(
    private readonly quantiles?: number[],
    parts: readonly ClosedWindows[] = [],
  ) {
    for (const part of parts) this.add(part)
  }

  get count(): number {
    return this.rows
  }

  /** Appends closed windows (their rows follow those already here). */
  add(closed: ClosedWindows): void {
    if (closed.seriesKeys.length === 0) return
    this.parts.push(closed)
    this.rows += closed.seriesKeys.length
    this.byteBound = undefined
  }

  /** Appends another's results. */
  addAll(other: ResultRecords): void {
    for (const part of other.parts) this.add(part)
  }

  /** An upper bound on the records' bytes in a request. */
  get bytes(): number {
    if (this.byteBound === undefined) {
      let total = 0
      for (const part of this.parts) {
        for (const key of part.seriesKeys) total += this.rowBytes(key)
      }
      this.byteBound = total
    }
    return this.byteBound
  }

  /** The records, by output partition, among `partitions`. */
  encode(partitions: number): EncodedRun[] {
    const out = encodeResults(this.parts, partitions, this.quantiles)
    const runs: EncodedRun[] = new Array<EncodedRun>(out.partitions.length)
    for (let i = 0, start = 0; i < runs.length; i++) {
      const end = out.ends[i] as number
      runs[i] = {
        partition: out.partitions[i] as number,
        count: out.counts[i] as number,
        encodedRecords: out.bytes.subarray(start, end),
      }
      start = end
    }
    return runs
  }

  /** As kafkajs messages: none, or one standing for all the records. */
  messages(): Message[] {
    if (this.rows === 0) return []
    const message: ResultsMessage = {
      value: null,
      results: this,
      encodeRecords: (partitions) => this.encode(partitions),
    }
    return [message]
  }

  /**
   * In pieces of at most `maxBytes` each (by `bytes`; a record larger than that alone), in order;
   * none when empty.
   * Two consecutive pieces together exceed `maxBytes`, so a request bounded by it never holds two.
   */
  split(maxBytes: number): ResultRecords[] {
    if (this.rows === 0) return []
    if (this.bytes <= maxBytes) return [this]
    const pieces: ResultRecords[] = []
    let piece = new ResultRecords(this.quantiles)
    let size = 0
    for (const part of this.parts) {
      let from = 0
      for (let i = 0; i < part.seriesKeys.length; i++) {
        const row = this.rowBytes(part.seriesKeys[i] as string)
        if (size > 0 && size + row > maxBytes) {
          piece.add(this.slice(part, from, i))
          pieces.push(piece)
          piece = new ResultRecords(this.quantiles)
          size = 0
          from = i
        }
        size += row
      }
      piece.add(this.slice(part, from, part.seriesKeys.length))
    }
    if (piece.count > 0) pieces.push(piece)
    return pieces
  }

  private rowBytes(key: string): number {
    return (
      2 * Buffer.byteLength(key) + RECORD_OVERHEAD + (this.quantiles?.length ?? 0) * QUANTILE_BYTES
    )
  }

  private slice(c: ClosedWindows, from: number, to: number): ClosedWindows {
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
