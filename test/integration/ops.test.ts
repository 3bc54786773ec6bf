/**
 * Operability on a real broker: Prometheus metrics that account for every sample, health and
 * readiness through joins, rebalances and shutdown, and a graceful SIGTERM of a `kwa run`
 * process (exit 0 within --shutdown-timeout, nothing lost or duplicated).
 *
 *   npx vitest run --project integration test/integration/ops.test.ts
 */
import { Partitioners } from 'kafkajs'
import { describe, expect, it } from 'vitest'
import { createKafka } from '../../consumer/kafka'
import { createLogger } from '../../consumer/logger'
import { encodeTelemetryBatch, type Sample } from '../../consumer/schemas'
import { AggregatorService, type ServiceConfig } from '../../consumer/service'
import { ChaosHarness, formatResult, type Replica } from '../chaos/harness'
import { eventually as pollUntil } from '../helpers/cli'
import { kafkaBrokers, readAll } from '../helpers/kafka'
import { inProcessReplicas } from '../helpers/service'
import { has, parseExposition, sumOf, type Exposition } from '../helpers/prometheus'
import { mulberry32 } from '../reference'

const partitions = 4
const window = { sizeMs: 2_000, advanceMs: 1_000, graceMs: 500 }
const logger = createLogger((process.env['KWA_TEST_LOG_LEVEL'] as 'info' | undefined) ?? 'silent')
const t0 = 1_700_000_000_000

/** test/helpers/cli's, polling every 100 ms for up to 2 minutes by default. */
const eventually = (what: string, done: () => boolean | Promise<boolean>, timeoutMs = 120_000) =>
  pollUntil(what, done, timeoutMs, 100)

async function scrape(service: AggregatorService): Promise<Exposition> {
  const response = await fetch(`${service.httpUrl}/metrics`)
  expect(response.status).toBe(200)
  return parseExposition(await response.text())
}

async function probe(url: string): Promise<{ status: number; body: { status?: string } }> {
  const response = await fetch(url)
  return { status: response.status, body: (await response.json()) as { status?: string } }
}

/** What the input holds besides good samples, per partition: one of each kind of bad sample. */
const injected = {
  non_finite_value: (p: number): Sample => ({ seriesKey: `s-${p}-0`, eventTime: t0, value: NaN }),
  empty_key: (): Sample => ({ seriesKey: '', eventTime: t0, value: 1 }),
  invalid_timestamp: (p: number): Sample => ({ seriesKey: `s-${p}-0`, eventTime: 5, value: 1 }),
  // Year 2100: beyond --max-future-skew of the wall clock.
  future_timestamp: (p: number): Sample => ({
    seriesKey: `s-${p}-1`,
    eventTime: 4_102_444_800_000,
    value: 1,
  }),
}

/**
 * `messages` telemetry batches per partition: series pinned to partitions, event time moving
 * 100 ms per message, 5% of samples up to 3 s late; the first message of each partition also
 * carries one sample of each rejection reason in `injected`.
 */
function generateInput(seed: number, messages: number): Sample[][][] {
  const random = mulberry32(seed)
  return Array.from({ length: partitions }, (_, p) =>
    Array.from({ length: messages }, (_, m) => {
      const samples = Array.from({ length: 10 + Math.floor(random() * 20) }, () => {
        const delay = random() < 0.05 ? Math.floor(random() * 3_000) : 0
        return {
          seriesKey: `s-${p}-${Math.floor(random() * 8)}`,
          eventTime: t0 + m * 100 - delay,
          value: Math.round(random() * 1000) / 8,
        }
      })
      if (m === 0) samples.push(...Object.values(injected).map((make) => make(p)))
      return samples
    }),
  )
}

async function produce(brokers: string, topic: string, input: Sample[][][]): Promise<void> {
  const kafka = createKafka({ brokers: [brokers], clientId: 'ops-test-producer', logger })
  const producer = kafka.producer({ createPartitioner: Partitioners.DefaultPartitioner })
  await producer.connect()
  try {
    const messages = input.flatMap((batches, partition) =>
      batches.map((samples, i) => ({
        partition,
        value: encodeTelemetryBatch({ sourceId: `ops-${partition}-${i}`, samples }),
      })),
    )
    // One message that is not a TelemetryBatch at all.
    messages.push({ partition: 1, value: Buffer.from('not avro at all') })
    for (let i = 0; i < messages.length; i += 100) {
      await producer.send({ topic, acks: -1, messages: messages.slice(i, i + 100) })
    }
  } finally {
    await producer.disconnect()
  }
}

describe('operations on a real broker', () => {
  const replicas = inProcessReplicas({ clientId: 'kwa-ops-test', partitions, window, logger })
  const setup = (name: string, extra: Partial<ServiceConfig> = {}) =>
    replicas(name, {
      // The CLI's defaults (the service's own are looser).
      limits: { minEventTimeMs: Date.UTC(2000, 0, 1), maxFutureSkewMs: 5 * 60_000 },
      http: { host: '127.0.0.1', port: 0 },
      ...extra,
    })

  it('metrics account for every sample, and windows_emitted matches the output topic', async () => {
    const { brokers, input, output, replica } = await setup('ops-metrics')
    const service = replica()
    await service.start()

    const data = generateInput(0x0b5, 150)
    await produce(brokers, input, data)
    const produced = data.flat(2).length
    expect(produced).toBeGreaterThan(5_000)
    expect(produced).toBeLessThan(20_000)

    // Until every input record is processed: all samples counted, no lag left.
    let m = await scrape(service)
    await eventually('every sample to be counted', async () => {
      m = await scrape(service)
      return (
        sumOf(m, 'kwa_samples_in_total') >= produced && sumOf(m, 'kwa_poison_messages_total') >= 1
      )
    })
    await eventually('no consumer lag', async () => {
      m = await scrape(service)
      return sumOf(m, 'kwa_consumer_lag') === 0 && has(m, 'kwa_consumer_lag')
    })

    const samplesIn = sumOf(m, 'kwa_samples_in_total')
    const aggregated = sumOf(m, 'kwa_samples_aggregated_total')
    const late = sumOf(m, 'kwa_samples_late_total')
    const rejected = sumOf(m, 'kwa_samples_rejected_total')
    expect(samplesIn).toBe(produced)
    expect(aggregated + late + rejected).toBe(samplesIn)
    expect(aggregated).toBeGreaterThan(0)
    expect(late).toBeGreaterThan(0)
    for (const reason of Object.keys(injected)) {
      expect(sumOf(m, 'kwa_samples_rejected_total', { reason }), reason).toBe(partitions)
    }
    expect(rejected).toBe(partitions * Object.keys(injected).length)
    // Every reason has a series from the start, even at zero.
    expect(sumOf(m, 'kwa_samples_rejected_total', { reason: 'window_limit' })).toBe(0)
    expect(sumOf(m, 'kwa_poison_messages_total')).toBe(1)
    expect(sumOf(m, 'kwa_samples_in_total')).toBe(service.totals.samples)
    expect(sumOf(m, 'kwa_batches_total')).toBeGreaterThanOrEqual(1)
    expect(sumOf(m, 'kwa_batch_duration_seconds_count')).toBe(sumOf(m, 'kwa_batches_total'))
    // Exactly once: one transaction (and one commit) per batch, no abort on a healthy broker.
    expect(sumOf(m, 'kwa_transaction_duration_seconds_count')).toBe(sumOf(m, 'kwa_batches_total'))
    expect(sumOf(m, 'kwa_commit_duration_seconds_count')).toBe(sumOf(m, 'kwa_batches_total'))
    expect(sumOf(m, 'kwa_transaction_aborts_total')).toBe(0)
    expect(sumOf(m, 'kwa_restore_duration_seconds_count')).toBeGreaterThanOrEqual(partitions)
    expect(sumOf(m, 'kwa_ready')).toBe(1)
    // Open windows are held per owned partition, natively.
    for (let p = 0; p < partitions; p++) {
      expect(sumOf(m, 'kwa_windows_open', { partition: String(p) })).toBeGreaterThan(0)
      expect(sumOf(m, 'kwa_native_bytes_held', { partition: String(p) })).toBeGreaterThan(0)
      expect(sumOf(m, 'kwa_consumer_lag', { topic: input, partition: String(p) })).toBe(0)
    }
    // Node.js runtime: GC pauses, process metrics.
    expect(m.types.get('nodejs_gc_duration_seconds')).toBe('histogram')
    expect(has(m, 'process_cpu_seconds_total')).toBe(true)

    const emitted = sumOf(m, 'kwa_windows_emitted_total')
    expect(emitted).toBeGreaterThan(100)
    const records = await readAll(brokers, output, {
      expected: emitted,
      idleMs: 2_000,
      timeoutMs: 60_000,
    })
    expect(records.length).toBe(emitted)
  })

  it('healthz and readyz through start, join, rebalances and stop; rebalances are counted', async () => {
    const { replica } = await setup('ops-health')
    const first = replica()
    const starting = first.start()
    await eventually('the HTTP server', () => first.httpUrl !== undefined, 30_000)
    const url = first.httpUrl ?? ''
    // Listening comes first: alive at once, not ready before the group is joined.
    expect((await probe(`${url}/healthz`)).status).toBe(200)
    const early = await probe(`${url}/readyz`)
    expect(early).toMatchObject({ status: 503, body: { status: 'starting' } })
    await starting

    // Ready without any input: every assigned partition is restored right after the join.
    await eventually(
      'the first replica to be ready',
      async () => (await probe(`${url}/readyz`)).status === 200,
    )
    expect((await probe(`${url}/readyz`)).body).toMatchObject({
      status: 'ready',
      partitions: [0, 1, 2, 3],
    })
    let m = await scrape(first)
    expect(sumOf(m, 'kwa_ready')).toBe(1)
    expect(sumOf(m, 'kwa_rebalances_total')).toBe(0)
    expect(sumOf(m, 'kwa_restore_duration_seconds_count')).toBe(partitions)

    // A second replica joins: the first one rebalances, keeps (without a restore) the partitions
    // it still owns (sticky assignment), and is ready again.
    const second = replica()
    await second.start()
    await eventually(
      'both replicas to share the partitions',
      () =>
        first.assignment.length > 0 &&
        second.assignment.length > 0 &&
        first.assignment.length + second.assignment.length === partitions,
    )
    await eventually('both replicas to be ready', async () => {
      const [a, b] = await Promise.all([probe(`${url}/readyz`), probe(`${second.httpUrl}/readyz`)])
      return a.status === 200 && b.status === 200
    })
    m = await scrape(first)
    expect(sumOf(m, 'kwa_rebalances_total')).toBeGreaterThanOrEqual(1)
    expect(first.assignment.length).toBe(partitions / 2)
    expect(sumOf(m, 'kwa_restore_duration_seconds_count')).toBe(partitions)
    expect(sumOf(m, 'kwa_partitions_kept_total')).toBe(first.assignment.length)
    expect(sumOf(await scrape(second), 'kwa_ready')).toBe(1)

    // The second one leaves: the first takes every partition back and is ready again.
    await second.stop()
    await eventually(
      'the first replica to own every partition',
      () => first.assignment.length === partitions,
    )
    await eventually(
      'the first replica to be ready again',
      async () => (await probe(`${url}/readyz`)).status === 200,
    )
    expect(sumOf(await scrape(first), 'kwa_rebalances_total')).toBeGreaterThanOrEqual(2)

    // Not ready from the moment shutdown begins; the server is gone once stopped.
    const stopping = first.stop()
    expect(await probe(`${url}/readyz`)).toMatchObject({
      status: 503,
      body: { status: 'stopping' },
    })
    expect((await probe(`${url}/healthz`)).status).toBe(200)
    await stopping
    await expect(fetch(`${url}/readyz`)).rejects.toThrow()
  })

  it('healthz answers 503 once the service failed', async () => {
    const { brokers, input, replica } = await setup('ops-failed', { onPoison: 'fail' })
    const service = replica()
    await service.start()
    const url = service.httpUrl ?? ''
    await produce(brokers, input, [[], [], [], []])
    await service.failed
    expect(await probe(`${url}/healthz`)).toMatchObject({ status: 503, body: { status: 'failed' } })
    expect((await probe(`${url}/readyz`)).status).toBe(503)
  })
})

/** The `http server listening` URL a replica process logged. */
function replicaUrl(replica: Replica): string | undefined {
  for (const line of replica.recentLines(200).split('\n')) {
    if (!line.includes('"http server listening"')) continue
    return (JSON.parse(line) as { url?: string }).url
  }
  return undefined
}

describe('graceful shutdown of kwa run', () => {
  const shutdownTimeoutMs = 20_000

  it('SIGTERM mid-stream: exit 0 within --shutdown-timeout, the other replica takes over, nothing lost or duplicated', async () => {
    const harness = await ChaosHarness.attach(kafkaBrokers(), { delivery: 'exactly-once' })
    let stopped: { ms: number; cause?: string; code?: number | null; signal?: string | null } = {
      ms: -1,
    }
    let takenOver = false
    let readyBefore = 0
    try {
      const result = await harness.run(
        'ops-graceful-sigterm',
        async (s) => {
          const env = { KWA_SHUTDOWN_TIMEOUT: `${shutdownTimeoutMs}ms` }
          const first = s.startReplica({ env })
          const second = s.startReplica({ env })
          await s.waitForGroup(60_000)
          await s.sleep(5_000)
          // The replica process serves its own metrics and health on a free port.
          const url = replicaUrl(first)
          if (url !== undefined) readyBefore = (await fetch(`${url}/readyz`)).status

          const signalled = Date.now()
          await first.stop(shutdownTimeoutMs + 10_000)
          const last = first.exits[first.exits.length - 1]
          stopped = {
            ms: Date.now() - signalled,
            cause: last?.cause,
            code: last?.exit.code,
            signal: last?.exit.signal,
          }
          takenOver = (await s.waitForGroup(60_000)) && second.assignment?.length === partitions
          await s.sleep(5_000)
        },
        { input: { messagesPerSecond: 20, samplesPerMessage: 20 } },
      )
      const report = formatResult(result)
      console.log(`${report}\n  SIGTERM to exit: ${stopped.ms} ms`)
      expect(readyBefore, 'the replica process served /readyz').toBe(200)
      expect(stopped, report).toMatchObject({ cause: 'sigterm', code: 0, signal: null })
      expect(stopped.ms).toBeLessThan(shutdownTimeoutMs)
      expect(takenOver, 'the second replica owns every partition').toBe(true)
      const { counts, hanging, readersDisagree } = result.verification
      expect(counts.windows, report).toBeGreaterThan(200)
      expect(
        {
          missing: counts.missing,
          duplicated: counts.duplicated,
          wrong: counts.wrong,
          hanging,
          readersDisagree,
        },
        report,
      ).toEqual({ missing: 0, duplicated: 0, wrong: 0, hanging: [], readersDisagree: [] })
    } finally {
      await harness.close()
    }
  }, 240_000)
})
