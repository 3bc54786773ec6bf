import type { Admin } from 'kafkajs'
import { describe, expect, it } from 'vitest'
import { KwaError } from '../consumer/errors'
import {
  BrokerRetriesExhaustedError,
  isTransientBrokerError,
  retryWithBackoff,
  RETRY_MAX_DELAY_MS,
} from '../consumer/retry'
import { CHANGELOG_CONFIGS, isTopicError, provisionTopics } from '../consumer/topics'

/** kafkajs' errors as its decoders build them (name, type, retriable; errors of an aggregate). */
type ProtocolError = Error & { type: string; retriable: boolean }
const protocolError = (type: string, retriable: boolean): ProtocolError =>
  Object.assign(new Error(type.toLowerCase()), { name: 'KafkaJSProtocolError', type, retriable })
const createTopicError = (cause: ProtocolError, topic: string) =>
  Object.assign(protocolError(cause.type, cause.retriable), {
    name: 'KafkaJSCreateTopicError',
    topic,
  })
const aggregate = (errors: Error[]) =>
  Object.assign(new Error('Topic creation errors'), { name: 'KafkaJSAggregateError', errors })
const timedOut = () => protocolError('REQUEST_TIMED_OUT', true)
const alreadyExists = (topic: string) =>
  createTopicError(protocolError('TOPIC_ALREADY_EXISTS', false), topic)
const named = (name: string) => Object.assign(new Error(name), { name })

/** A fake clock: sleeping moves it forward at once. */
function fakeTime() {
  let now = 0
  const sleeps: number[] = []
  return {
    sleeps,
    now: () => now,
    sleep: (ms: number) => {
      sleeps.push(ms)
      now += ms
      return Promise.resolve()
    },
    advance: (ms: number) => (now += ms),
  }
}

describe('isTransientBrokerError', () => {
  it.each([
    ['coordinator not available', protocolError('GROUP_COORDINATOR_NOT_AVAILABLE', true)],
    ['not controller', protocolError('NOT_CONTROLLER', true)],
    ['request timed out', timedOut()],
    ['leader not available', protocolError('LEADER_NOT_AVAILABLE', true)],
    ['coordinator not found (kafkajs gave up)', named('KafkaJSGroupCoordinatorNotFound')],
    ['retries exceeded', named('KafkaJSNumberOfRetriesExceeded')],
    ['connection closed', named('KafkaJSConnectionClosedError')],
    ['waiting for leaders timed out', named('KafkaJSTimeout')],
    ['a retriable KwaError', new KwaError('later', { retriable: true })],
    ['aggregate of transient errors', aggregate([createTopicError(timedOut(), 'a')])],
  ])('%s: retried', (_, error) => {
    expect(isTransientBrokerError(error)).toBe(true)
  })

  it.each([
    ['authorization', protocolError('TOPIC_AUTHORIZATION_FAILED', false)],
    ['authentication', named('KafkaJSSASLAuthenticationError')],
    ['a configuration error', new KwaError('changelog mismatch')],
    ['a plain error', new Error('bug')],
    ['aggregate with a permanent error', aggregate([alreadyExists('a')])],
    ['not an error', 'oops'],
  ])('%s: not retried', (_, error) => {
    expect(isTransientBrokerError(error)).toBe(false)
  })
})

describe('retryWithBackoff', () => {
  it('retries transient errors with growing delays until the call succeeds', async () => {
    const time = fakeTime()
    let calls = 0
    const result = await retryWithBackoff(
      () => (++calls < 4 ? Promise.reject(timedOut()) : Promise.resolve('done')),
      { what: 'test call', boundMs: 60_000, ...time },
    )
    expect(result).toBe('done')
    expect(calls).toBe(4)
    expect(time.sleeps).toHaveLength(3)
    // Doubling (±20% jitter): 200, 400, 800.
    expect(time.sleeps[0]).toBeGreaterThanOrEqual(160)
    expect(time.sleeps[2]).toBeGreaterThanOrEqual(640)
    expect(time.sleeps[2]).toBeLessThanOrEqual(960)
  })

  it('gives up at the bound with an error naming the call and the last answer', async () => {
    const time = fakeTime()
    let calls = 0
    const failing = retryWithBackoff(
      () => {
        calls++
        return Promise.reject(protocolError('GROUP_COORDINATOR_NOT_AVAILABLE', true))
      },
      { what: 'fetching offsets', boundMs: 30_000, ...time },
    )
    const error = await failing.catch((e: unknown) => e)
    expect(error).toBeInstanceOf(BrokerRetriesExhaustedError)
    expect((error as Error).message).toMatch(
      /^fetching offsets failed: the broker still answered "group_coordinator_not_available" after \d+ attempt/,
    )
    expect((error as BrokerRetriesExhaustedError).retriable).toBe(false)
    expect(time.now()).toBeLessThan(30_000)
    expect(Math.max(...time.sleeps)).toBeLessThanOrEqual(RETRY_MAX_DELAY_MS * 1.2)
    expect(calls).toBeGreaterThan(5)
  })

  it('throws a permanent error at once', async () => {
    const time = fakeTime()
    let calls = 0
    const permanent = new KwaError('mismatch')
    await expect(
      retryWithBackoff(
        () => {
          calls++
          return Promise.reject(permanent)
        },
        { what: 'x', boundMs: 60_000, ...time },
      ),
    ).rejects.toBe(permanent)
    expect(calls).toBe(1)
    expect(time.sleeps).toEqual([])
  })

  it('abandons an attempt the broker never answers at the bound', async () => {
    const started = Date.now()
    const error = await retryWithBackoff(() => new Promise(() => undefined), {
      what: 'hanging call',
      boundMs: 300,
    }).catch((e: unknown) => e)
    expect(error).toBeInstanceOf(BrokerRetriesExhaustedError)
    expect((error as Error).message).toContain('no answer from the broker')
    expect(Date.now() - started).toBeLessThan(2_000)
  })
})

interface Topic {
  partitions: number
  configs: Record<string, string>
}
type FakeTopics = Map<string, Topic>

/** An Admin that answers from an in-memory cluster, with scripted failures. */
function fakeAdmin(
  topics: FakeTopics,
  script: { createTopics?: ((names: string[]) => Error | undefined)[] } = {},
) {
  const calls = { createTopics: 0, listTopics: 0 }
  const admin = {
    listTopics: () => {
      calls.listTopics++
      return Promise.resolve([...topics.keys()])
    },
    fetchTopicMetadata: ({ topics: names }: { topics: string[] }) =>
      Promise.resolve({
        topics: names.map((name) => ({
          name,
          partitions: Array.from({ length: topics.get(name)?.partitions ?? 0 }, (_, i) => ({
            partitionId: i,
          })),
        })),
      }),
    describeConfigs: ({ resources }: { resources: { name: string }[] }) =>
      Promise.resolve({
        resources: resources.map(({ name }) => ({
          resourceName: name,
          configEntries: Object.entries(topics.get(name)?.configs ?? {}).map(
            ([configName, configValue]) => ({ configName, configValue }),
          ),
        })),
      }),
    createTopics: ({
      topics: specs,
    }: {
      topics: {
        topic: string
        numPartitions: number
        configEntries?: { name: string; value: string }[]
      }[]
    }) => {
      const failure = script.createTopics?.[calls.createTopics]?.(specs.map((t) => t.topic))
      calls.createTopics++
      for (const spec of specs) {
        topics.set(spec.topic, {
          partitions: spec.numPartitions,
          configs: Object.fromEntries((spec.configEntries ?? []).map((e) => [e.name, e.value])),
        })
      }
      return failure === undefined ? Promise.resolve(true) : Promise.reject(failure)
    },
  }
  return { admin: admin as unknown as Admin, calls }
}

const plan = { input: 'in', output: 'out', deadLetter: 'in-dl', changelog: 'cl' }

describe('provisionTopics on a busy or racing broker', () => {
  it('a topic another replica created at the same moment is success', async () => {
    const topics: FakeTopics = new Map<string, Topic>([['in', { partitions: 3, configs: {} }]])
    // Created by "the other replica" (they exist afterwards) while our create timed out for one.
    const { admin, calls } = fakeAdmin(topics, {
      createTopics: [
        (names) =>
          aggregate([
            ...names.slice(1).map(alreadyExists),
            createTopicError(timedOut(), names[0] ?? ''),
          ]),
      ],
    })
    await provisionTopics(admin, plan, { create: true, retryBoundMs: 10_000 })
    expect(calls.createTopics).toBe(1)
    expect(topics.get('cl')).toEqual({ partitions: 3, configs: CHANGELOG_CONFIGS })
  })

  it('retries a create that timed out and re-checks what exists', async () => {
    const topics: FakeTopics = new Map<string, Topic>([['in', { partitions: 2, configs: {} }]])
    const { admin, calls } = fakeAdmin(topics, {
      createTopics: [() => aggregate([createTopicError(timedOut(), 'out')])],
    })
    // The timed-out create did happen (as on a slow controller): the retry finds every topic
    // there and creates nothing more.
    await provisionTopics(admin, plan, { create: true, retryBoundMs: 10_000 })
    expect(calls.createTopics).toBe(1)
    expect(calls.listTopics).toBeGreaterThanOrEqual(2)
    expect([...topics.keys()].sort()).toEqual(['cl', 'in', 'in-dl', 'out'])
  })

  it('escalates after the bound when the controller stays unavailable', async () => {
    const topics: FakeTopics = new Map<string, Topic>([['in', { partitions: 2, configs: {} }]])
    const { admin } = fakeAdmin(topics)
    admin.listTopics = () => Promise.reject(protocolError('NOT_CONTROLLER', true))
    const error = await provisionTopics(admin, plan, { create: true, retryBoundMs: 1_000 }).catch(
      (e: unknown) => e,
    )
    expect(error).toBeInstanceOf(BrokerRetriesExhaustedError)
    expect((error as Error).message).toMatch(/^provisioning topics failed: .*not_controller/)
    expect(isTopicError(error)).toBe(false)
  })

  it('a mismatched changelog is refused at once, not retried', async () => {
    const topics: FakeTopics = new Map<string, Topic>([
      ['in', { partitions: 4, configs: {} }],
      ['cl', { partitions: 2, configs: { 'cleanup.policy': 'compact' } }],
    ])
    const { admin, calls } = fakeAdmin(topics)
    const error = await provisionTopics(admin, plan, { create: true, retryBoundMs: 60_000 }).catch(
      (e: unknown) => e,
    )
    expect(isTopicError(error)).toBe(true)
    expect(calls.listTopics).toBe(1)
    expect(calls.createTopics).toBe(0)
  })
})
