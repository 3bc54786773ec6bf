import type { Message } from 'kafkajs'
import type { OutputRecords } from './native'

/** One partition's records, as the patched kafkajs takes them (patches/kafkajs+2.2.4.patch). */
export interface EncodedRun {
  partition: number
  count: number
  /** Kafka record format v2 bodies, offset deltas from 0. */
  encodedRecords: Buffer
}

/**
 * A kafkajs message that stands for all the records of `group`: the patched kafkajs calls
 * `encodeRecords` with the topic's partition count when it builds a request, and takes one run
 * per partition (plain messages to the same partition may follow a run, never precede it).
 */
export interface GroupMessage extends Message {
  value: null
  group: RecordGroup<unknown>
  encodeRecords(partitions: number): EncodedRun[]
}

export const isGroupMessage = (message: Message): message is GroupMessage =>
  (message as Partial<GroupMessage>).group instanceof RecordGroup

/** Records `messages` stand for: a group message counts its records. */
export const recordCount = (messages: readonly Message[]): number =>
  messages.reduce((n, m) => n + (isGroupMessage(m) ? m.group.count : 1), 0)

/** A native encoder's runs as kafkajs takes them. */
export function runsOf(out: OutputRecords): EncodedRun[] {
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

/**
 * Records kept as the aggregator's columns (parts of rows, in order) until kafkajs builds the
 * request, then encoded natively in one call: nothing is built per record in JS (that cost about
 * 2.6 µs a record, more than aggregating its samples: docs/benchmarks.md).
 */
export abstract class RecordGroup<Part> {
  protected readonly parts: Part[] = []
  private rows = 0
  private byteBound: number | undefined

  /** The records, by partition, among `partitions` (the topic's partition count). */
  abstract encode(partitions: number): EncodedRun[]
  protected abstract partRows(part: Part): number
  /** An upper bound on row `i`'s record bytes in a request. */
  protected abstract rowBytes(part: Part, i: number): number
  protected abstract slice(part: Part, from: number, to: number): Part
  /** An empty group like this one. */
  protected abstract empty(): RecordGroup<Part>

  get count(): number {
    return this.rows
  }

  /** Appends rows (after those already here). */
  add(part: Part): void {
    const rows = this.partRows(part)
    if (rows === 0) return
    this.parts.push(part)
    this.rows += rows
    this.byteBound = undefined
  }

  /** An upper bound on the records' bytes in a request. */
  get bytes(): number {
    if (this.byteBound === undefined) {
      let total = 0
      for (const part of this.parts) {
        for (let i = 0, n = this.partRows(part); i < n; i++) total += this.rowBytes(part, i)
      }
      this.byteBound = total
    }
    return this.byteBound
  }

  /** As kafkajs messages: none, or one standing for all the records. */
  messages(): Message[] {
    if (this.rows === 0) return []
    const message: GroupMessage = {
      value: null,
      group: this,
      encodeRecords: (partitions) => this.encode(partitions),
    }
    return [message]
  }

  /**
   * In pieces of at most `maxBytes` each (by `bytes`; a record larger than that alone), in order;
   * none when empty. Two consecutive pieces together exceed `maxBytes`, so a request bounded by
   * it never holds two (kafkajs takes one run per partition and request).
   */
  split(maxBytes: number): RecordGroup<Part>[] {
    if (this.rows === 0) return []
    if (this.byteBound !== undefined && this.byteBound <= maxBytes) return [this]
    // One pass over the rows: each piece's bound (and, unsplit, this one's) is known after it.
    const pieces: RecordGroup<Part>[] = []
    let piece = this.empty()
    let size = 0
    const close = () => {
      piece.byteBound = size
      pieces.push(piece)
    }
    for (const part of this.parts) {
      let from = 0
      const n = this.partRows(part)
      for (let i = 0; i < n; i++) {
        const row = this.rowBytes(part, i)
        if (size > 0 && size + row > maxBytes) {
          piece.add(this.slice(part, from, i))
          close()
          piece = this.empty()
          size = 0
          from = i
        }
        size += row
      }
      piece.add(this.slice(part, from, n))
    }
    if (pieces.length === 0) {
      this.byteBound = size
      return [this]
    }
    close()
    return pieces
  }
}
