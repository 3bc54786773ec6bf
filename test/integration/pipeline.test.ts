import { describe, expect, it } from 'vitest'
import { createKafka } from '../../consumer/kafka'
import { createLogger } from '../../consumer/logger'
import { decodeWindowAggregate, type Sample, type WindowAggregate } from '../../consumer/schemas'
import {
  AggregatorService,
  defaultChangelogTopic,
  deliveryModes,
  type ServiceConfig,
} from '../../consumer/service'
import { readCommittedWithLibrdkafka } from '../chaos/harness'
import { createTopic, kafkaBrokers, readAll, uniqueTopic } from '../helpers/kafka'
import { inProcessReplicas, produceTelemetry as produce } from '../helpers/service'
import { matchesReference, mulberry32, referenceRun, windowId, type RefWindow } from '../reference'

const partitions = 4
const window = { sizeMs: 10_000, advanceMs: 5_000, graceMs: 2_000 }
const logger = createLogger((process.env['KWA_TEST_LOG_LEVEL'] as 'info' | undefined) ?? 'silent')
const t0 = 1_700_000_000_000

/**
 * Random telemetry for `partitions` partitions: series pinned to a partition, event time moving
 * forward 100 ms per message with 5% of samples up to 3 s in the past and 0.5% up to 20 s (late
 * for some or all of their windows), and dyadic values (k/1024) so every sum is exact in binary and can be compared exactly.
 */
function generateInput(seed: number, messagesPerPartition: number): Sample[][][] {
  const random = mulberry32(seed)
  const keysPerPartition = 100
  return Array.from({ length: partitions }, (_, p) =>
    Array.from({ length: messagesPerPartition }, (_, m) => {
      const now = t0 + m * 100
      const n = 20 + Math.floor(random() * 180)
      return Array.from({ length: n }, () => {
        const key = `host-${p + partitions * Math.floor(random() * keysPerPartition)}/cpu`
        const r = random()
        const delay =
          r < 0.005 ? Math.floor(random() * 20_000) : r < 0.05 ? Math.floor(random() * 3_000) : 0
        const value = Math.round((random() - 0.5) * 2_000_000) / 1024
        return { seriesKey: key, eventTime: now - delay, value }
      })
    }),
  )
}

/** Waits until `done()` or fails after `timeoutMs`, saying what it waited for. */
async function eventually(
  what: string,
  done: () => boolean | Promise<boolean>,
  timeoutMs = 120_000,
) {
  const deadline = Date.now() + timeoutMs
  while (!(await done())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 250))
  }
}

interface Comparison {
  missing: string[]
  extra: string[]
  wrong: string[]
  duplicates: number
}

/** Every published (key, window) against the recomputation from the input. */
function compare(expected: Map<string, RefWindow>, published: WindowAggregate[]): Comparison {
  const seen = new Map<string, WindowAggregate>()
  const result: Comparison = { missing: [], extra: [], wrong: [], duplicates: 0 }
  for (const actual of published) {
    const id = windowId(actual.seriesKey, actual.windowStart)
    const want = expected.get(id)
    if (want === undefined) {
      result.extra.push(id)
      continue
    }
    const ok = matchesReference(actual, want)
    if (!ok) result.wrong.push(`${id}: got ${JSON.stringify(actual)}, want ${JSON.stringify(want)}`)
    if (seen.has(id)) result.duplicates++
    seen.set(id, actual)
  }
  for (const id of expected.keys()) if (!seen.has(id)) result.missing.push(id)
  return result
}

/** Windows whose quantiles are not within the accuracy of the exact ones (rank floor(q(n-1))). */
function quantileErrors(
  expected: Map<string, RefWindow>,
  published: WindowAggregate[],
  { quantiles, accuracy }: { quantiles: number[]; accuracy: number },
): string[] {
  const errors: string[] = []
  for (const actual of published) {
    const id = windowId(actual.seriesKey, actual.windowStart)
    const sorted = Float64Array.from(expected.get(id)?.values ?? []).sort()
    const got = actual.quantiles ?? []
    if (got.length !== quantiles.length) errors.push(`${id}: quantiles ${JSON.stringify(got)}`)
    for (const { q, value } of got) {
      const exact = sorted[Math.floor(q * (sorted.length - 1))] as number
      if (!(Math.abs(value - exact) <= accuracy * Math.abs(exact) * (1 + 1e-12)))
        errors.push(`${id}: q=${q} estimate ${value}, exact ${exact}`)
    }
  }
  return errors
}

describe.each(deliveryModes)('pipeline on a real broker, %s', (delivery) => {
  const replicas = inProcessReplicas({ clientId: 'kwa-test', partitions, window, logger })

  async function setup(name: string, extra: Partial<ServiceConfig> = {}) {
    const { brokers, input, output, started } = await replicas(name, { delivery, ...extra })
    const published = async (expected = 0) =>
      (
        await readAll(brokers, output, {
          expected,
          idleMs: expected > 0 ? 2_000 : 0,
          timeoutMs: 180_000,
        })
      ).map((m) => decodeWindowAggregate(m.value as Buffer))
    return { brokers, input, output, replica: started, published }
  }

  const owned = (replicas: AggregatorService[]) => replicas.flatMap((r) => [...r.assignment]).sort()

  it('two replicas in one group publish every window exactly once, equal to a recomputation', async () => {
    const { brokers, input, replica, published } = await setup('steady')
    const replicas = [await replica(), await replica()]
    await eventually('both replicas to share all partitions', () => {
      const all = owned(replicas)
      return replicas.every((r) => r.assignment.length > 0) && all.join() === '0,1,2,3'
    })

    const data = generateInput(0x5eed, 800)
    await produce(brokers, input, data, 0, 800)
    const reference = referenceRun(
      data.map((batches) => batches.flat()),
      window,
    )
    const samples = data.flat(2).length
    expect(reference.closed.size).toBeGreaterThan(5_000)
    expect(reference.late).toBeGreaterThan(0)

    // Waits for the expected count, then 2 s without more (an extra would arrive with the rest).
    const results = await published(reference.closed.size)
    const diff = compare(reference.closed, results)
    expect(diff.missing.slice(0, 5)).toEqual([])
    expect(diff.extra.slice(0, 5)).toEqual([])
    expect(diff.wrong.slice(0, 5)).toEqual([])
    expect(diff.duplicates).toBe(0)
    expect(results.length).toBe(reference.closed.size)

    const totals = replicas.map((r) => r.totals)
    const sum = (key: keyof (typeof totals)[number]) => totals.reduce((n, t) => n + t[key], 0)
    expect(sum('samples')).toBe(samples)
    expect(sum('aggregated') + sum('late') + sum('rejected')).toBe(samples)
    expect(sum('late')).toBe(reference.late)
    expect(sum('replayed')).toBe(0)
  })

  it('partitions that move between replicas mid-stream keep their open windows (and quantiles)', async () => {
    // With --quantiles: the sketches move with the windows (exactly once, in the changelog).
    const quantiles = { quantiles: [0, 0.5, 0.9, 0.99], accuracy: 0.01 }
    const { brokers, input, replica, published } = await setup('moving', { quantiles })
    const data = generateInput(0xbeef, 900)
    const reference = referenceRun(
      data.map((batches) => batches.flat()),
      { ...window, keepValues: true },
    )

    const first = await replica()
    await produce(brokers, input, data, 0, 300)
    await eventually('the first replica to aggregate', () => first.totals.samples > 0)
    const second = await replica()
    await eventually(
      'a rebalance onto both replicas',
      () => first.assignment.length === 2 && second.assignment.length === 2,
    )
    await produce(brokers, input, data, 300, 600)
    await eventually('the second replica to aggregate', () => second.totals.samples > 0)
    await first.stop()
    await eventually(
      'the second replica to own every partition',
      () => second.assignment.length === partitions,
    )
    await produce(brokers, input, data, 600, 900)

    let results: WindowAggregate[] = []
    await eventually(`${reference.closed.size} distinct windows`, async () => {
      results = await published()
      return (
        new Set(results.map((r) => windowId(r.seriesKey, r.windowStart))).size >=
        reference.closed.size
      )
    })
    await new Promise((resolve) => setTimeout(resolve, 2_000))
    results = await published()

    const diff = compare(reference.closed, results)
    expect(diff.missing.slice(0, 5)).toEqual([])
    expect(diff.extra.slice(0, 5)).toEqual([])
    expect(diff.wrong.slice(0, 5)).toEqual([])
    expect(quantileErrors(reference.closed, results, quantiles).slice(0, 5)).toEqual([])
    if (delivery === 'exactly-once') {
      expect(diff.duplicates).toBe(0)
    } else {
      // At least once: a window published just before a handover may be published again, but
      // every copy carries the same, correct value; moved partitions were rebuilt by replay.
      expect(second.totals.replayed).toBeGreaterThan(0)
    }
  })
})

describe('exactly once, a partition caught up with its input', () => {
  const replicas = inProcessReplicas({ clientId: 'kwa-test', partitions, window, logger })
  const commitIntervalMs = 60_000

  // Transactional input ends with a commit marker, past the last message.
  it.each(['plain', 'transactional'])(
    'commits without waiting out the commit interval (%s input)',
    async (kind) => {
      const { brokers, input, output, started } = await replicas(`caught-up-${kind}`, {
        delivery: 'exactly-once',
        commitIntervalMs,
      })
      const replica = await started()
      await eventually(
        'the replica to own every partition',
        () => replica.assignment.length === partitions,
      )
      const data = generateInput(0xca7c4, 200)
      // The first batch after an assignment commits at once anyway: let it pass before timing.
      const transactionalId = kind === 'transactional' ? uniqueTopic('upstream') : undefined
      await produce(brokers, input, data, 0, 1, { transactionalId })
      const first = data.reduce((n, batches) => n + (batches[0]?.length ?? 0), 0)
      await eventually('the first messages to commit', () => replica.totals.samples === first)

      const sent = Date.now()
      await produce(brokers, input, data, 1, 200, { transactionalId })
      const reference = referenceRun(
        data.map((batches) => batches.flat()),
        window,
      )
      expect(reference.closed.size).toBeGreaterThan(1_000)
      // Without the early commit nothing more is readable before the interval: readAll times out.
      await readAll(brokers, output, {
        expected: reference.closed.size,
        timeoutMs: commitIntervalMs,
      })
      expect(Date.now() - sent).toBeLessThan(commitIntervalMs)
      // What is committed, read by librdkafka (read_committed), against the recomputation.
      const results = (await readCommittedWithLibrdkafka(brokers, output, 30_000)).map((r) =>
        decodeWindowAggregate(Buffer.from(r.value ?? '', 'hex')),
      )
      const diff = compare(reference.closed, results)
      expect(diff.missing.slice(0, 5)).toEqual([])
      expect(diff.extra.slice(0, 5)).toEqual([])
      expect(diff.wrong.slice(0, 5)).toEqual([])
      expect(diff.duplicates).toBe(0)
      expect(replica.totals.samples).toBe(data.flat(2).length)
    },
  )
})

describe('state changelog topic', () => {
  it('is created compacted and co-partitioned, and a mismatched one is refused', async () => {
    const brokers = kafkaBrokers()
    const input = uniqueTopic('changelog-in')
    await createTopic(brokers, input, partitions)
    const config = (groupId: string, changelogTopic?: string): ServiceConfig => ({
      brokers: [brokers],
      clientId: 'kwa-test',
      groupId,
      inputTopic: input,
      outputTopic: input,
      window,
      sessionTimeoutMs: 10_000,
      statsIntervalMs: 0,
      changelogTopic,
    })

    const groupId = uniqueTopic('group')
    const created = new AggregatorService(config(groupId), logger)
    await created.start()
    await created.stop()
    const admin = createKafka({ brokers: [brokers], clientId: 'kwa-test', logger }).admin()
    await admin.connect()
    try {
      const topic = defaultChangelogTopic(groupId)
      const [metadata] = (await admin.fetchTopicMetadata({ topics: [topic] })).topics
      expect(metadata?.partitions.length).toBe(partitions)
      const described = await admin.describeConfigs({
        includeSynonyms: false,
        resources: [{ type: 2, name: topic, configNames: ['cleanup.policy'] }],
      })
      expect(described.resources[0]?.configEntries[0]?.configValue).toBe('compact')
    } finally {
      await admin.disconnect()
    }

    const mismatched = uniqueTopic('changelog-bad')
    await createTopic(brokers, mismatched, partitions - 1, { 'cleanup.policy': 'compact' })
    const refused = new AggregatorService(config(uniqueTopic('group'), mismatched), logger)
    await expect(refused.start()).rejects.toThrow(/has 3 partitions but input topic .* has 4/)
    await refused.stop()

    const notCompacted = uniqueTopic('changelog-delete')
    await createTopic(brokers, notCompacted, partitions)
    const refusedToo = new AggregatorService(config(uniqueTopic('group'), notCompacted), logger)
    await expect(refusedToo.start()).rejects.toThrow(/cleanup.policy=delete: it must be compact/)
    await refusedToo.stop()
  })
})
