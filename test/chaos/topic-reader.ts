// Reading topics back with kafkajs: positions past markers and aborted records, high watermarks.
import { randomBytes } from 'node:crypto'
import { type Batch, type Consumer } from 'kafkajs'
import { pollUntil, seconds } from './common'
import { harnessKafka, lastStableOffsets } from './kafka-clients'

// ---------------------------------------------------------------------------------------------
// Reading topics back
// ---------------------------------------------------------------------------------------------

export interface ReadRecord {
  partition: number
  offset: string
  key: Buffer | null
  value: Buffer | null
}

/**
 * Reads a topic from the beginning with a fresh consumer group, continuously, and tracks per
 * partition the position (from batches' lastOffset, which counts transaction markers and aborted
 * records that are never delivered) and the highest high watermark the fetches reported.
 */
export class TopicReader {
  readonly records: ReadRecord[] = []
  lastRecordAt = Date.now()
  private readonly positions = new Map<number, bigint>()
  private readonly highWatermarks = new Map<number, bigint>()

  private constructor(private readonly consumer: Consumer) {}

  static async open(
    brokers: string,
    topic: string,
    options: { readUncommitted: boolean },
  ): Promise<TopicReader> {
    const consumer = harnessKafka(brokers, 'kwa-chaos-reader').consumer({
      groupId: `kwa-chaos-reader-${randomBytes(6).toString('hex')}`,
      readUncommitted: options.readUncommitted,
      maxWaitTimeInMs: 100,
      allowAutoTopicCreation: false,
    })
    const reader = new TopicReader(consumer)
    await consumer.connect()
    try {
      await consumer.subscribe({ topic, fromBeginning: true })
      // Also emitted for batches of markers/aborted records only (never passed to eachBatch).
      consumer.on(consumer.events.END_BATCH_PROCESS, ({ payload }) =>
        reader.advance(payload.partition, payload.lastOffset, payload.highWatermark),
      )
      await consumer.run({
        autoCommit: false,
        eachBatch: ({ batch }) => {
          reader.add(batch)
          return Promise.resolve()
        },
      })
    } catch (error) {
      await consumer.disconnect()
      throw error
    }
    return reader
  }

  position(partition: number): bigint {
    return this.positions.get(partition) ?? 0n
  }

  highWatermark(partition: number): bigint {
    return this.highWatermarks.get(partition) ?? 0n
  }

  /** Every partition's position is at least its target. */
  reached(targets: Map<number, bigint>): boolean {
    for (const [partition, target] of targets) if (this.position(partition) < target) return false
    return true
  }

  async close(): Promise<void> {
    await this.consumer.disconnect()
  }

  private add(batch: Batch): void {
    for (const m of batch.messages) {
      this.records.push({
        partition: batch.partition,
        offset: m.offset,
        key: m.key ?? null,
        value: m.value,
      })
      this.lastRecordAt = Date.now()
    }
    this.advance(batch.partition, batch.lastOffset(), batch.highWatermark)
  }

  private advance(partition: number, lastOffset: string, highWatermark: string): void {
    const next = BigInt(lastOffset) + 1n
    if (next > this.position(partition)) this.positions.set(partition, next)
    const hw = BigInt(highWatermark)
    if (hw > this.highWatermark(partition)) this.highWatermarks.set(partition, hw)
  }
}

/** Reads a topic nobody writes to any more, up to its current end. */
export async function readToEnd(
  brokers: string,
  topic: string,
  timeoutMs = 60_000,
): Promise<ReadRecord[]> {
  const ends = await lastStableOffsets(brokers, topic)
  const reader = await TopicReader.open(brokers, topic, { readUncommitted: false })
  try {
    if (!(await pollUntil(() => reader.reached(ends), timeoutMs))) {
      throw new Error(`reading ${topic} to its end timed out after ${seconds(timeoutMs)}`)
    }
    return reader.records
  } finally {
    await reader.close()
  }
}
