/**
 * Exactly once when the group's committed offset is stale (issue 10, section 1).
 *
 * Kafka's classic group coordinator (3.x) materialises a committed transaction's offsets
 * asynchronously, after the transaction's markers are written; kafkajs cannot ask OffsetFetch for
 * stable offsets (KIP-447 `require_stable`). So a new owner, right after fencing the old one, can
 * read the changelog of a transaction and, from the group, the offset from before it. Under CPU
 * starvation that window is wide; the replica then restored the state and processed the same
 * input again (double-counted and duplicated windows).
 *
 * The test puts the broker in exactly that state, deterministically: a replica processes and
 * commits some input, stops, and the group's offsets are moved back to where a stale OffsetFetch
 * would put them. A second replica must resume where the changelog's state ends, and the output
 * must equal a recomputation of the input: nothing missing, twice or double-counted. An offset
 * moved forward (an operator skipping input) is followed.
 */
import { describe, expect, it } from 'vitest'
import { createKafka } from '../../consumer/kafka'
import { createLogger } from '../../consumer/logger'
import { decodeWindowAggregate, type Sample } from '../../consumer/schemas'
import { resumePosition } from '../../consumer/service'
import { readCommittedWithLibrdkafka } from '../chaos/harness'
import { inProcessReplicas, produceTelemetry as produce } from '../helpers/service'
import { mulberry32, referenceRun, windowId } from '../reference'

const partitions = 2
const window = { sizeMs: 10_000, advanceMs: 5_000, graceMs: 2_000 }
const logger = createLogger((process.env['KWA_TEST_LOG_LEVEL'] as 'info' | undefined) ?? 'silent')
const t0 = 1_700_000_000_000

/** Per partition, messages of 50 samples, event time 100 ms apart, integer values. */
function generateInput(seed: number, messages: number): Sample[][][] {
  const random = mulberry32(seed)
  return Array.from({ length: partitions }, (_, p) =>
    Array.from({ length: messages }, (_, m) =>
      Array.from({ length: 50 }, () => ({
        seriesKey: `host-${p + partitions * Math.floor(random() * 20)}`,
        eventTime: t0 + m * 100 - Math.floor(random() * 500),
        value: Math.floor(random() * 1000),
      })),
    ),
  )
}

async function eventually(what: string, done: () => boolean, timeoutMs = 120_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!done()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
}

describe('resumePosition', () => {
  it('trusts the changelog over an older group offset, follows a newer one', () => {
    expect(resumePosition('120', '80')).toEqual({ offset: '120' })
    expect(resumePosition('120', '120')).toEqual({ offset: '120' })
    expect(resumePosition('120', null)).toEqual({ offset: '120' })
    expect(resumePosition(null, '80')).toEqual({ offset: '80' })
    expect(resumePosition(null, null)).toEqual({ offset: null })
    const reset = resumePosition('120', '200')
    expect(reset.offset).toBe('200')
    expect(reset.reset).toMatch(/ahead of the changelog/)
    // Beyond 2^53: compared as integers, not as strings or doubles.
    expect(resumePosition('9007199254740993', '9007199254740992').offset).toBe('9007199254740993')
  })
})

describe('exactly once with a stale committed offset', () => {
  const replicas = inProcessReplicas({ clientId: 'kwa-stale-offsets', partitions, window, logger })

  async function setup(name: string) {
    const { brokers, input, output, config, started } = await replicas(name, {
      delivery: 'exactly-once',
    })
    /** Sets the group's committed offsets (the group must be empty). */
    const setOffsets = async (offset: (partition: number) => number) => {
      const admin = createKafka({ brokers: [brokers], clientId: 'stale-offsets', logger }).admin()
      await admin.connect()
      try {
        await admin.setOffsets({
          groupId: config.groupId,
          topic: input,
          partitions: Array.from({ length: partitions }, (_, partition) => ({
            partition,
            offset: String(offset(partition)),
          })),
        })
      } finally {
        await admin.disconnect()
      }
    }
    return { brokers, input, output, replica: started, setOffsets, groupId: config.groupId }
  }

  it('a new owner resumes where the changelog ends, not at an older group offset', async () => {
    const { brokers, input, output, replica, setOffsets } = await setup('stale')
    const data = generateInput(0x57a1e, 200)
    const firstPart = 120

    const first = await replica()
    await produce(brokers, input, data, 0, firstPart)
    const firstSamples = partitions * firstPart * 50
    await eventually('the first replica to commit the first part', () => {
      return first.totals.samples === firstSamples
    })
    await first.stop()

    // What a non-stable OffsetFetch answers while the last transactions' offsets are pending.
    await setOffsets(() => firstPart / 2)

    const second = await replica()
    await produce(brokers, input, data, firstPart, 200)
    await eventually('the second replica to process the rest', () => {
      return second.totals.samples >= (200 - firstPart) * partitions * 50
    })

    const reference = referenceRun(
      data.map((batches) => batches.flat()),
      window,
    )
    // Every input record is processed and committed: the output is complete. Read by librdkafka
    // (read_committed), a client that shares no code with the service.
    const published = (await readCommittedWithLibrdkafka(brokers, output)).map((r) =>
      decodeWindowAggregate(Buffer.from(r.value ?? '', 'hex')),
    )
    const seen = new Map<string, number>()
    const wrong: string[] = []
    for (const w of published) {
      const id = windowId(w.seriesKey, w.windowStart)
      seen.set(id, (seen.get(id) ?? 0) + 1)
      const want = reference.closed.get(id)
      if (want === undefined || want.count !== w.count || want.sum !== w.sum) {
        wrong.push(`${id}: count ${w.count} sum ${w.sum}, want ${JSON.stringify(want)}`)
      }
    }
    const duplicated = [...seen].filter(([, n]) => n > 1).map(([id]) => id)
    const missing = [...reference.closed.keys()].filter((id) => !seen.has(id))
    expect(reference.closed.size).toBeGreaterThan(100)
    expect({
      wrong: wrong.slice(0, 3),
      duplicated: duplicated.slice(0, 3),
      missing: missing.slice(0, 3),
    }).toEqual({ wrong: [], duplicated: [], missing: [] })
    // The second replica saw only the second part: the first was in the restored state.
    expect(second.totals.samples).toBe((200 - firstPart) * partitions * 50)
  })

  it('follows a group offset moved forward by an operator (input skipped on purpose)', async () => {
    const { brokers, input, replica, setOffsets, groupId } = await setup('skip')
    const data = generateInput(0x5c1b, 100)
    const first = await replica()
    await produce(brokers, input, data, 0, 40)
    await eventually('the first replica to commit', () => first.totals.samples === 40 * 2 * 50)
    await first.stop()
    // kafka-consumer-groups --reset-offsets --to-offset 60: skip messages 40-59.
    await produce(brokers, input, data, 40, 100)
    await setOffsets(() => 60)
    const second = await replica()
    await eventually('the second replica to process from the reset offset', () => {
      return second.totals.samples >= 40 * 2 * 50
    })
    // Stopping commits the batch in flight: at 100 after exactly 40 messages per partition.
    await second.stop()
    expect(second.totals.samples).toBe(40 * 2 * 50)
    const admin = createKafka({ brokers: [brokers], clientId: 'skip-check', logger }).admin()
    await admin.connect()
    try {
      const [offsets] = await admin.fetchOffsets({ groupId, topics: [input] })
      expect(offsets?.partitions.map((p) => p.offset).sort()).toEqual(['100', '100'])
    } finally {
      await admin.disconnect()
    }
  })
})
