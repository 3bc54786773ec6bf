/**
 * Natively encoded records read back with kafkajs' own record decoder, which shares no code with
 * the encoder (native/src/records.rs).
 */
import type { OutputRecord } from '../../consumer/pipeline'
import type { EncodedRun, RecordGroup } from '../../consumer/encoded-records'

// eslint-disable-next-line @typescript-eslint/no-require-imports
const Decoder = require('kafkajs/src/protocol/decoder') as new (buffer: Buffer) => {
  canReadBytes(n: number): boolean
  readVarInt(): number
  readBytes(n: number): Buffer
}
// eslint-disable-next-line @typescript-eslint/no-require-imports
const decodeRecord = require('kafkajs/src/protocol/recordBatch/record/v0/decoder') as (
  decoder: InstanceType<typeof Decoder>,
  batch: { firstOffset: string; firstTimestamp: string },
) => {
  offset: string
  timestamp: string
  key: Buffer | null
  value: Buffer | null
  headers: object
}

export interface DecodedRecord {
  partition: number
  /** The record's offset delta. */
  offset: number
  timestampDelta: number
  key: Buffer | null
  value: Buffer | null
  headers: object
}

/** Every record of the runs, in order. */
export function decodeRuns(runs: readonly EncodedRun[]): DecodedRecord[] {
  const records: DecodedRecord[] = []
  for (const run of runs) {
    const decoder = new Decoder(run.encodedRecords)
    let inRun = 0
    while (decoder.canReadBytes(1)) {
      const body = new Decoder(decoder.readBytes(decoder.readVarInt()))
      const r = decodeRecord(body, { firstOffset: '0', firstTimestamp: '0' })
      records.push({
        partition: run.partition,
        offset: Number(r.offset),
        timestampDelta: Number(r.timestamp),
        key: r.key,
        value: r.value,
        headers: r.headers,
      })
      inRun++
    }
    if (inRun !== run.count) throw new Error(`run of ${run.count} records holds ${inRun}`)
  }
  return records
}

/** The results as output records in row order (one partition), as a consumer reads them. */
export const outputRecords = (results: RecordGroup<unknown>): OutputRecord[] =>
  decodeRuns(results.encode(1)).map((r) => ({
    key: (r.key as Buffer).toString('utf8'),
    value: r.value as Buffer,
  }))

/** A group's records as kafkajs messages read back (keys and values as bytes), in order. */
export const readBack = (
  group: RecordGroup<unknown>,
): { key: Buffer | null; value: Buffer | null }[] =>
  decodeRuns(group.encode(1)).map(({ key, value }) => ({ key, value }))
