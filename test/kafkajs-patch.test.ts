/**
 * The kafkajs patches (patches/kafkajs+2.2.4.patch), against independent references:
 * - produce encoding (presized, in-place varints, no per-record copies) still writes record
 *   batches that decode to the messages given, with a valid CRC-32C;
 * - murmur2 (the default partitioner's hash, now in 32-bit arithmetic) equals Java's;
 * - read_committed filtering drops exactly the records of aborted transactions, whatever order
 *   the broker lists them in (test/integration/read-committed.test.ts does it on a broker).
 */
import { createRequire } from 'node:module'
import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { crc32c, produceRoundTrip } from './helpers/kafkajs-internals'

const require = createRequire(__filename)
const murmur2 = require('kafkajs/src/producer/partitioners/default/murmur2.js') as (
  key: string | Buffer,
) => number
interface FilterMessage {
  offset: string
  key: Buffer | null
  isControlRecord: boolean
  batchContext: { producerId: string; inTransaction: boolean }
}
const filterAbortedMessages = require('kafkajs/src/consumer/filterAbortedMessages.js') as (args: {
  messages: FilterMessage[]
  abortedTransactions: { producerId: string; firstOffset: string }[]
}) => FilterMessage[]

const message = fc.record({
  key: fc.oneof(
    fc.constant(null),
    fc.string({ maxLength: 40 }),
    fc.uint8Array({ maxLength: 40 }).map((bytes) => Buffer.from(bytes)),
  ),
  value: fc.oneof(
    fc.constant(null),
    fc.uint8Array({ maxLength: 300 }).map((bytes) => Buffer.from(bytes)),
  ),
  timestampDelta: fc.integer({ min: 0, max: 5_000_000_000 }),
  headers: fc.option(
    fc.dictionary(
      // Not names on Object.prototype: the (unpatched) decoder folds headers into {}.
      fc.stringMatching(/^h-[a-z0-9]{1,6}$/),
      fc.string({ maxLength: 8 }),
      {
        maxKeys: 3,
      },
    ),
    { nil: undefined },
  ),
})

describe('kafkajs patch: produce encoding', () => {
  it('record batches decode to the messages sent, with a valid CRC-32C', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.array(message, { minLength: 1, maxLength: 60 }), {
          minLength: 1,
          maxLength: 3,
        }),
        fc.boolean(),
        async (partitions, transactional) => {
          const base = 1_700_000_000_000
          const sent = partitions.map((messages) =>
            messages.map(({ timestampDelta, ...m }) => ({
              ...m,
              timestamp: String(base + timestampDelta),
            })),
          )
          const { transactionalId, batches } = await produceRoundTrip(
            'out',
            sent.map((messages, partition) => ({ partition, messages })),
            transactional ? 'tx' : undefined,
          )
          expect(transactionalId).toBe(transactional ? 'tx' : null)
          expect(batches.map((b) => b.partition)).toEqual(sent.map((_, partition) => partition))
          for (const [partition, messages] of sent.entries()) {
            const { raw: batch, decoded } = batches[partition] as (typeof batches)[number]
            // CRC-32C of everything from the attributes on (after offset, length, epoch, magic, crc).
            expect(batch.readUInt32BE(17)).toBe(crc32c(batch.subarray(21)))
            expect(decoded.inTransaction).toBe(transactional)
            expect(
              decoded.records.map((r) => ({
                key: r.key,
                value: r.value,
                timestamp: r.timestamp,
                offset: r.offset,
                headers: Object.fromEntries(
                  Object.entries(r.headers).map(([k, v]) => [k, v.toString()]),
                ),
              })),
            ).toEqual(
              messages.map((m, i) => ({
                key: m.key === null ? null : Buffer.from(m.key),
                value: m.value,
                timestamp: m.timestamp,
                offset: String(i),
                headers: m.headers ?? {},
              })),
            )
          }
        },
      ),
      { numRuns: 200 },
    )
  })
})

describe('kafkajs patch: read_committed filtering', () => {
  it('drops exactly the aborted transactions, listed in marker order', () => {
    fc.assert(
      fc.property(
        // Each step: a producer sends a record, or ends its open transaction (commit or abort).
        fc.array(
          fc.record({
            producer: fc.integer({ min: 0, max: 3 }),
            end: fc.option(fc.boolean(), { nil: undefined }),
          }),
          {
            maxLength: 80,
          },
        ),
        fc.integer({ min: 0, max: 20 }),
        (steps, fetchFrom) => {
          const log: FilterMessage[] = []
          const expected: string[] = []
          const aborted: { producerId: string; firstOffset: string; marker: number }[] = []
          const open = new Map<number, { first: number; offsets: string[] }>()
          const append = (producer: number, control: Buffer | null) => {
            const offset = String(log.length)
            log.push({
              offset,
              key: control ?? Buffer.from('k'),
              isControlRecord: control !== null,
              batchContext: { producerId: String(producer), inTransaction: true },
            })
            return offset
          }
          for (const { producer, end } of steps) {
            const txn = open.get(producer)
            if (end === undefined || txn === undefined) {
              const offset = append(producer, null)
              if (txn === undefined)
                open.set(producer, { first: Number(offset), offsets: [offset] })
              else txn.offsets.push(offset)
              continue
            }
            open.delete(producer)
            // Control record key: version 0, type 0 = abort, 1 = commit.
            const marker = append(producer, Buffer.from([0, 0, 0, end ? 1 : 0]))
            if (end) expected.push(...txn.offsets)
            else {
              aborted.push({
                producerId: String(producer),
                firstOffset: String(txn.first),
                marker: Number(marker),
              })
            }
          }
          // Still-open transactions are beyond the last stable offset: not fetched.
          const lso = Math.min(log.length, ...[...open.values()].map((t) => t.first))
          const fetched = log.slice(Math.min(fetchFrom, lso), lso)
          const from = fetched[0] === undefined ? lso : Number(fetched[0].offset)
          // The broker lists the aborted transactions that end in or after the fetched range,
          // in the order their markers were written.
          const abortedTransactions = aborted
            .filter((a) => a.marker >= from && Number(a.firstOffset) < lso)
            .map(({ producerId, firstOffset }) => ({ producerId, firstOffset }))
          const kept = filterAbortedMessages({ messages: fetched, abortedTransactions })
            .filter((m) => !m.isControlRecord)
            .map((m) => m.offset)
          expect(kept).toEqual(
            expected
              .filter((o) => Number(o) >= from && Number(o) < lso)
              .sort((a, b) => Number(a) - Number(b)),
          )
        },
      ),
      { numRuns: 2000 },
    )
  })
})

/** Java's int murmur2 (Kafka's Utils.murmur2), in BigInt: the reference for the partitioner. */
function javaMurmur2(data: Buffer): number {
  const int = (x: bigint) => BigInt.asIntN(32, x)
  const ushr = (x: bigint, n: bigint) => BigInt.asUintN(32, x) >> n
  const m = 0x5bd1e995n
  let h = int(0x9747b28cn ^ BigInt(data.length))
  const whole = data.length - (data.length % 4)
  for (let i = 0; i < whole; i += 4) {
    let k = int(BigInt(data.readUInt32LE(i)))
    k = int(k * m)
    k = int(k ^ ushr(k, 24n))
    k = int(k * m)
    h = int(int(h * m) ^ k)
  }
  const rest = data.length % 4
  if (rest >= 3) h = int(h ^ (BigInt(data[whole + 2] as number) << 16n))
  if (rest >= 2) h = int(h ^ (BigInt(data[whole + 1] as number) << 8n))
  if (rest >= 1) h = int(int(h ^ BigInt(data[whole] as number)) * m)
  h = int(h ^ ushr(h, 13n))
  h = int(h * m)
  h = int(h ^ ushr(h, 15n))
  return Number(h)
}

describe('kafkajs patch: murmur2 partitioning', () => {
  it("matches Apache Kafka's own test vectors", () => {
    // From Kafka's UtilsTest.testMurmur2.
    const vectors: [string, number][] = [
      ['21', -973932308],
      ['foobar', -790332482],
      ['a-little-bit-long-string', -985981536],
      ['a-little-bit-longer-string', -1486304829],
      ['lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8', -58897971],
      ['abc', 479470107],
    ]
    for (const [key, hash] of vectors) {
      expect(murmur2(Buffer.from(key)), key).toBe(hash)
      expect(murmur2(key), key).toBe(hash)
    }
  })

  it('equals Java int arithmetic on random keys', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 64 }), (bytes) => {
        const data = Buffer.from(bytes)
        expect(murmur2(data)).toBe(javaMurmur2(data))
      }),
      { numRuns: 5000 },
    )
  })
})
