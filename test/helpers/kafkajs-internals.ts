/**
 * kafkajs' own produce encoder and record decoders, typed for the tests that check the kafkajs
 * patch and the records encoded natively against them.
 */
import { createRequire } from 'node:module'

const require = createRequire(__filename)

export const produceRequest =
  require('kafkajs/src/protocol/requests/produce/v3/request.js') as (args: {
    acks: number
    timeout: number
    transactionalId?: string
    producerId: number
    producerEpoch: number
    compression: number
    topicData: {
      topic: string
      partitions: { partition: number; firstSequence: number; messages: unknown[] }[]
    }[]
  }) => { encode: () => Promise<{ buffer: Buffer }> }

export const Decoder = require('kafkajs/src/protocol/decoder.js') as new (buffer: Buffer) => {
  readString(): string
  readInt16(): number
  readInt32(): number
  readBytes(): Buffer
}

export interface DecodedBatch {
  inTransaction: boolean
  lastOffsetDelta: number
  firstSequence: number
  records: {
    key: Buffer | null
    value: Buffer | null
    timestamp: string
    offset: string
    headers: Record<string, Buffer>
  }[]
}

export const decodeRecordBatch = require('kafkajs/src/protocol/recordBatch/v0/decoder.js') as (
  decoder: InstanceType<typeof Decoder>,
) => Promise<DecodedBatch>

/**
 * A produce request for one topic encoded by kafkajs and read back: its transactional id, and
 * each partition's record batch (raw and decoded), in request order.
 */
export async function produceRoundTrip(
  topic: string,
  partitions: { partition: number; firstSequence?: number; messages: unknown[] }[],
  transactionalId?: string,
): Promise<{
  transactionalId: string | null
  batches: { partition: number; raw: Buffer; decoded: DecodedBatch }[]
}> {
  const request = produceRequest({
    acks: -1,
    timeout: 30_000,
    transactionalId,
    producerId: 7,
    producerEpoch: 1,
    compression: 0,
    topicData: [{ topic, partitions: partitions.map((p) => ({ firstSequence: 0, ...p })) }],
  })
  const decoder = new Decoder((await request.encode()).buffer)
  const id = decoder.readString()
  decoder.readInt16() // acks
  decoder.readInt32() // timeout
  if (decoder.readInt32() !== 1) throw new Error('one topic expected')
  if (decoder.readString() !== topic) throw new Error(`topic ${topic} expected`)
  const batches = []
  for (let n = decoder.readInt32(); n > 0; n--) {
    const partition = decoder.readInt32()
    const raw = decoder.readBytes()
    batches.push({ partition, raw, decoded: await decodeRecordBatch(new Decoder(raw)) })
  }
  return { transactionalId: id, batches }
}

/** CRC-32C (Castagnoli), bit by bit: the reference for the record batch checksum. */
export function crc32c(bytes: Buffer): number {
  let crc = 0xffffffff
  for (const byte of bytes) {
    crc ^= byte
    for (let bit = 0; bit < 8; bit++) crc = crc & 1 ? (crc >>> 1) ^ 0x82f63b78 : crc >>> 1
  }
  return (crc ^ 0xffffffff) >>> 0
}
