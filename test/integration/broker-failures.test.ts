/**
 * Internal clients whose broker calls fail or hang (issue 10, section 2): replicas provisioning
 * at the same moment, offset fetches answered "coordinator not available", the changelog
 * reader's consumer crashing for good, kafkajs' loop hanging, and SIGTERM with the broker
 * frozen. Faults are injected into kafkajs (in this process) or into a broker the test starts.
 *
 *   npx vitest run --project integration test/integration/broker-failures.test.ts
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { createRequire } from 'node:module'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import type { Admin } from 'kafkajs'
import { changelogRecords, ChangelogReader } from '../../consumer/changelog'
import { createKafka } from '../../consumer/kafka'
import { createLogger } from '../../consumer/logger'
import { packageRoot } from '../../consumer/paths'
import { BrokerRetriesExhaustedError } from '../../consumer/retry'
import {
  AggregatorService,
  defaultChangelogTopic,
  defaultDeadLetterTopic,
  type ServiceConfig,
} from '../../consumer/service'
import { provisionTopics } from '../../consumer/topics'
import { startLocalBroker, type LocalBroker } from '../../scripts/local-kafka'
import { createTopic, kafkaBrokers, uniqueTopic } from '../helpers/kafka'

const logger = createLogger((process.env['KWA_TEST_LOG_LEVEL'] as 'info' | undefined) ?? 'silent')
const partitions = 2

/** kafkajs' own modules, as loaded by the service (node's module cache: one instance). */
const kafkajsRequire = createRequire(require.resolve('kafkajs'))
const { KafkaJSGroupCoordinatorNotFound } = kafkajsRequire('./src/errors') as {
  KafkaJSGroupCoordinatorNotFound: new (message: string) => Error
}
const ConsumerGroup = kafkajsRequire('./src/consumer/consumerGroup') as {
  prototype: { fetch: (this: { groupId: string }, nodeId: number) => Promise<unknown[]> }
}

type FetchFault = (groupId: string) => 'crash' | 'hang' | 'idle' | undefined
let fetchFault: FetchFault = () => undefined
const hungFetches: (() => void)[] = []
const originalFetch = ConsumerGroup.prototype.fetch

/**
 * Every kafkajs consumer's fetch goes through here: `crash` throws what kafkajs throws when the
 * group coordinator stays unavailable (non-retriable: the consumer crashes for good), `hang`
 * never answers (until the test ends), `idle` answers nothing.
 */
beforeAll(() => {
  ConsumerGroup.prototype.fetch = function (this: { groupId: string }, nodeId: number) {
    switch (fetchFault(this.groupId)) {
      case 'crash':
        return Promise.reject(
          new KafkaJSGroupCoordinatorNotFound('Failed to find group coordinator'),
        )
      case 'hang':
        return new Promise((resolve) => hungFetches.push(() => resolve([])))
      case 'idle':
        return new Promise((resolve) => setTimeout(() => resolve([]), 100))
      case undefined:
        return originalFetch.call(this, nodeId)
    }
  }
})

afterAll(() => {
  ConsumerGroup.prototype.fetch = originalFetch
})

const isRestoreGroup = (groupId: string) => groupId.includes('.restore.')

async function eventually(what: string, done: () => boolean, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!done()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
}

async function probe(url: string): Promise<{ status: number; body: Record<string, unknown> }> {
  const response = await fetch(url)
  return { status: response.status, body: (await response.json()) as Record<string, unknown> }
}

describe('internal clients on a failing broker', () => {
  const services: AggregatorService[] = []

  afterEach(async () => {
    fetchFault = () => undefined
    for (const release of hungFetches.splice(0)) release()
    await Promise.all(services.splice(0).map((s) => s.stop()))
  })

  async function replica(name: string, extra: Partial<ServiceConfig> = {}) {
    const brokers = kafkaBrokers()
    const input = uniqueTopic(`${name}-in`)
    await createTopic(brokers, input, partitions)
    const service = new AggregatorService(
      {
        brokers: [brokers],
        clientId: 'kwa-broker-failures-test',
        groupId: uniqueTopic(`${name}-group`),
        inputTopic: input,
        outputTopic: uniqueTopic(`${name}-out`),
        window: { sizeMs: 2_000, advanceMs: 2_000, graceMs: 0 },
        sessionTimeoutMs: 10_000,
        statsIntervalMs: 0,
        http: { host: '127.0.0.1', port: 0 },
        ...extra,
      },
      logger,
    )
    services.push(service)
    return service
  }

  async function ready(service: AggregatorService): Promise<void> {
    await service.start()
    await eventually('the replica to be ready', () => service.health().ready, 30_000)
  }

  it('replicas provisioning the same topics at the same moment all succeed', async () => {
    const brokers = kafkaBrokers()
    const input = uniqueTopic('race-in')
    const groupId = uniqueTopic('race-group')
    await createTopic(brokers, input, 3)
    const plan = {
      input,
      output: uniqueTopic('race-out'),
      deadLetter: defaultDeadLetterTopic(input),
      changelog: defaultChangelogTopic(groupId),
    }
    const admins: Admin[] = Array.from({ length: 4 }, (_, i) =>
      createKafka({ brokers: [brokers], clientId: `race-${i}`, logger }).admin(),
    )
    await Promise.all(admins.map((a) => a.connect()))
    try {
      await Promise.all(admins.map((a) => provisionTopics(a, plan, { create: true })))
      const metadata = await admins[0]?.fetchTopicMetadata({ topics: [plan.changelog] })
      expect(metadata?.topics[0]?.partitions).toHaveLength(3)
    } finally {
      await Promise.all(admins.map((a) => a.disconnect()))
    }
  })

  it('offset fetches answered "coordinator not available" are retried; the restore succeeds', async () => {
    const service = await replica('fetch-retry')
    const admin = (service as unknown as { admin: Admin }).admin
    const fetchOffsets = admin.fetchOffsets.bind(admin)
    let calls = 0
    admin.fetchOffsets = (request) => {
      // Fails the first attempts of every restore's fetch.
      if (++calls % 3 !== 0) {
        return Promise.reject(
          Object.assign(new Error('The group coordinator is not available'), {
            name: 'KafkaJSProtocolError',
            type: 'GROUP_COORDINATOR_NOT_AVAILABLE',
            retriable: true,
          }),
        )
      }
      return fetchOffsets(request)
    }
    await ready(service)
    expect(calls).toBeGreaterThanOrEqual(3 * partitions)
    expect(service.health().live).toBe(true)
  })

  it('offset fetches that keep failing past the bound fail the replica (healthz 503)', async () => {
    const service = await replica('fetch-exhausted', { bounds: { restoreRetryMs: 1_000 } })
    const admin = (service as unknown as { admin: Admin }).admin
    admin.fetchOffsets = () =>
      Promise.reject(
        Object.assign(new Error('The group coordinator is not available'), {
          name: 'KafkaJSProtocolError',
          type: 'GROUP_COORDINATOR_NOT_AVAILABLE',
          retriable: true,
        }),
      )
    await service.start()
    const failed = await service.failed
    expect(failed).toBeInstanceOf(BrokerRetriesExhaustedError)
    const health = await probe(`${service.httpUrl}/healthz`)
    expect(health.status).toBe(503)
    expect(String(health.body['error'])).toMatch(/^fetching the committed offsets of group/)
  })

  it('a changelog reader that crashes for good fails the replica at once (healthz 503)', async () => {
    const service = await replica('reader-crash')
    await ready(service)
    const crashedAt = Date.now()
    fetchFault = (groupId) => (isRestoreGroup(groupId) ? 'crash' : undefined)
    const failed = await service.failed
    expect(Date.now() - crashedAt).toBeLessThan(10_000)
    expect(failed.message).toMatch(/changelog reader .* crashed and kafkajs will not restart it/)
    const health = await probe(`${service.httpUrl}/healthz`)
    expect(health).toMatchObject({ status: 503, body: { status: 'failed' } })
    expect((await probe(`${service.httpUrl}/readyz`)).status).toBe(503)
  })

  it('a reader crash rejects the restore in progress at once, and every later one', async () => {
    const brokers = kafkaBrokers()
    const topic = uniqueTopic('reader-crash-cl')
    await createTopic(brokers, topic, 1, { 'cleanup.policy': 'compact' })
    const kafka = createKafka({ brokers: [brokers], clientId: 'reader-crash', logger })
    const producer = kafka.producer()
    await producer.connect()
    await producer.send({
      topic,
      messages: changelogRecords(null, null, 1_000, 0, 7).map(({ key, value }) => ({ key, value })),
    })
    await producer.disconnect()

    const reader = new ChangelogReader(kafka, topic, uniqueTopic('reader-crash'), logger)
    await reader.start()
    try {
      // The reader fetches nothing: the restore waits (for up to its 120 s timeout) ...
      fetchFault = (groupId) => (isRestoreGroup(groupId) ? 'idle' : undefined)
      const restoring = reader.restore(0).catch((error: unknown) => error)
      await new Promise((resolve) => setTimeout(resolve, 1_000))
      // ... until the reader's consumer crashes.
      const crashedAt = Date.now()
      fetchFault = (groupId) => (isRestoreGroup(groupId) ? 'crash' : undefined)
      const error = await restoring
      expect(Date.now() - crashedAt).toBeLessThan(5_000)
      expect((error as Error).message).toMatch(/crashed and kafkajs will not restart it/)
      await reader.died
      await expect(reader.restore(0)).rejects.toThrow(/crashed/)
    } finally {
      await reader.stop()
    }
  })

  it('a consumer loop that hangs trips the stall watchdog (healthz 503)', async () => {
    const service = await replica('stall', { bounds: { stallMs: 3_000 } })
    await ready(service)
    const groupId = (service as unknown as { config: ServiceConfig }).config.groupId
    const hungAt = Date.now()
    fetchFault = (g) => (g === groupId ? 'hang' : undefined)
    const failed = await service.failed
    expect(Date.now() - hungAt).toBeGreaterThanOrEqual(2_500)
    expect(Date.now() - hungAt).toBeLessThan(15_000)
    expect(failed.message).toMatch(/the consumer made no progress for \d+ s/)
    expect((await probe(`${service.httpUrl}/healthz`)).status).toBe(503)
  })

  it('a healthy idle replica never trips a short stall bound', async () => {
    const service = await replica('no-stall', { bounds: { stallMs: 3_000 } })
    await ready(service)
    await new Promise((resolve) => setTimeout(resolve, 6_000))
    expect(service.health()).toMatchObject({ live: true, ready: true })
  })
})

/** `kwa run` from source, its output collected. */
function kwaRun(env: Record<string, string>): { child: ChildProcess; output: () => string } {
  const child = spawn(process.execPath, ['--import', 'tsx', 'consumer/cli.ts', 'run'], {
    cwd: packageRoot,
    env: { PATH: process.env.PATH ?? '', KWA_LOG_LEVEL: 'info', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  let output = ''
  child.stdout?.setEncoding('utf8').on('data', (chunk: string) => (output += chunk))
  child.stderr?.setEncoding('utf8').on('data', (chunk: string) => (output += chunk))
  return { child, output: () => output }
}

function exited(child: ChildProcess, timeoutMs: number): Promise<number | null> {
  return new Promise((resolve, reject) => {
    if (child.exitCode !== null) return resolve(child.exitCode)
    const timer = setTimeout(() => {
      child.kill('SIGKILL')
      reject(new Error(`kwa run did not exit within ${timeoutMs} ms`))
    }, timeoutMs)
    child.once('exit', (code) => {
      clearTimeout(timer)
      resolve(code)
    })
  })
}

describe('SIGTERM with the broker frozen', () => {
  let broker: LocalBroker | undefined
  const children: ChildProcess[] = []

  afterAll(async () => {
    for (const child of children) if (child.exitCode === null) child.kill('SIGKILL')
    broker?.signal('SIGCONT')
    await broker?.cleanup()
  })

  it('exits with code 1 within --shutdown-timeout, naming what was left undone', async () => {
    // A broker of its own: this test freezes it.
    broker = await startLocalBroker({ readyTimeoutMs: 60_000 })
    const input = uniqueTopic('frozen-in')
    await createTopic(broker.brokers, input, partitions)
    const shutdownTimeoutMs = 4_000
    const env = (name: string) => ({
      KAFKA_BROKERS: broker?.brokers ?? '',
      KWA_INPUT_TOPIC: input,
      KWA_OUTPUT_TOPIC: `${input}-out`,
      KWA_GROUP_ID: uniqueTopic(`frozen-${name}`),
      KWA_WINDOW_SIZE: '2s',
      KWA_HTTP_PORT: '0',
      KWA_SESSION_TIMEOUT: '10s',
      KWA_SHUTDOWN_TIMEOUT: `${shutdownTimeoutMs}ms`,
    })
    const isReady = (output: string) =>
      output.split('\n').filter((l) => l.includes('"partition restored"')).length >= partitions

    // On a healthy broker a stop is clean: exit 0.
    const healthy = kwaRun(env('healthy'))
    children.push(healthy.child)
    await eventually('the first replica to be ready', () => isReady(healthy.output()), 45_000)
    healthy.child.kill('SIGTERM')
    expect(await exited(healthy.child, shutdownTimeoutMs + 5_000), healthy.output()).toBe(0)

    const frozen = kwaRun(env('frozen'))
    children.push(frozen.child)
    await eventually('the second replica to be ready', () => isReady(frozen.output()), 45_000)
    broker.signal('SIGSTOP')
    const signalled = Date.now()
    frozen.child.kill('SIGTERM')
    const code = await exited(frozen.child, shutdownTimeoutMs + 5_000)
    const elapsed = Date.now() - signalled
    broker.signal('SIGCONT')
    const output = frozen.output()
    expect(code, output).toBe(1)
    expect(elapsed).toBeLessThan(shutdownTimeoutMs + 2_000)
    const line = output.split('\n').find((l) => l.includes('shutdown did not finish'))
    expect(line, output).toBeDefined()
    const logged = JSON.parse(line ?? '{}') as { pending?: string; msg?: string }
    expect(logged.pending).toBe('finishing the batch in flight and leaving the group')
    expect(logged.msg).toContain('nothing is lost')
  }, 120_000)
})
