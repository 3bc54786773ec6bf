import type { Kafka, Producer, TopicMessages } from 'kafkajs'
import { describe, expect, it } from 'vitest'
import { asAuthorizationError, AuthorizationError, authorizationFailure } from '../consumer/errors'
import { createLogger } from '../consumer/logger'
import { isTransientBrokerError } from '../consumer/retry'
import {
  FencedError,
  PartitionTransactor,
  isTooLarge,
  requestsBySize,
  sendResults,
  type TransactionContent,
} from '../consumer/transactions'

/** A kafkajs error as the protocol layer throws it. */
const protocolError = (type: string) => Object.assign(new Error(type), { type })

/**
 * A fake kafkajs producer: each transaction's steps answer from a script, and every producer the
 * fake Kafka makes is counted (a second one would be a re-initialisation).
 */
function fakeKafka(script: { send?: Error[]; abort?: Error[]; commit?: Error[] }) {
  const calls: string[] = []
  const next = (step: 'send' | 'abort' | 'commit') => {
    calls.push(step)
    const outcome = script[step]?.shift()
    return outcome === undefined ? Promise.resolve() : Promise.reject(outcome)
  }
  let producers = 0
  const kafka = {
    producer: () => {
      producers++
      return {
        connect: () => Promise.resolve(calls.push('connect')),
        disconnect: () => Promise.resolve(calls.push('disconnect')),
        transaction: () =>
          Promise.resolve({
            send: () => next('send'),
            sendOffsets: () => Promise.resolve(),
            commit: () => next('commit'),
            abort: () => next('abort'),
          }),
      }
    },
  } as unknown as Kafka
  return { kafka, calls, producers: () => producers }
}

const content: TransactionContent = {
  records: [{ topic: 'out', messages: [{ value: 'x' }] }],
  offsets: { consumerGroupId: 'g', topic: 'in', partition: 0, offset: '10' },
}
const logger = createLogger('silent')

describe('PartitionTransactor', () => {
  it('retries a transient error after an abort that succeeds, with the same producer', async () => {
    const fake = fakeKafka({ send: [protocolError('CONCURRENT_TRANSACTIONS')] })
    const transactor = new PartitionTransactor(fake.kafka, 'g.in.0', logger)
    const timings = await transactor.commit(content)
    expect(timings.attempts).toBe(2)
    expect(fake.producers()).toBe(1)
    expect(fake.calls).toEqual(['send', 'abort', 'send', 'commit'])
  })

  it('never re-initialises when the abort fails: a newer owner may have committed since', async () => {
    const fake = fakeKafka({
      send: [protocolError('CONCURRENT_TRANSACTIONS')],
      abort: [protocolError('INVALID_TXN_STATE')],
    })
    const transactor = new PartitionTransactor(fake.kafka, 'g.in.0', logger)
    await expect(transactor.commit(content)).rejects.toThrow('CONCURRENT_TRANSACTIONS')
    expect(fake.producers()).toBe(1)
    expect(fake.calls).toEqual(['send', 'abort', 'disconnect'])
  })

  it('fails a commit of unknown outcome without retrying or re-initialising', async () => {
    const fake = fakeKafka({ commit: [protocolError('REQUEST_TIMED_OUT')] })
    const transactor = new PartitionTransactor(fake.kafka, 'g.in.0', logger)
    await expect(transactor.commit(content)).rejects.toThrow('REQUEST_TIMED_OUT')
    expect(fake.producers()).toBe(1)
    expect(fake.calls).toEqual(['send', 'commit', 'disconnect'])
  })

  it('reports fencing, also as the cause of kafkajs giving up', async () => {
    for (const error of [
      protocolError('PRODUCER_FENCED'),
      Object.assign(new Error('retries exceeded'), {
        cause: protocolError('INVALID_PRODUCER_EPOCH'),
      }),
    ]) {
      const fake = fakeKafka({ send: [error] })
      const transactor = new PartitionTransactor(fake.kafka, 'g.in.0', logger)
      await expect(transactor.commit(content)).rejects.toBeInstanceOf(FencedError)
      expect(fake.producers()).toBe(1)
    }
  })
})

describe('refusals for want of an ACL', () => {
  it('name the topic a transaction could not write to, and are not taken for fencing', async () => {
    const fake = fakeKafka({ send: [protocolError('TOPIC_AUTHORIZATION_FAILED')] })
    const transactor = new PartitionTransactor(fake.kafka, 'g.in.0', logger)
    const error: unknown = await transactor.commit(content).catch((e: unknown) => e)
    expect(error).toBeInstanceOf(AuthorizationError)
    expect((error as Error).message).toContain('allow Write on topic "out"')
    expect(fake.calls).toEqual(['send', 'disconnect'])
  })

  it('name the transactional id, also behind kafkajs\' coordinator "not found"', async () => {
    const notFound = Object.assign(new Error('Failed to find group coordinator'), {
      name: 'KafkaJSGroupCoordinatorNotFound',
      cause: protocolError('TRANSACTIONAL_ID_AUTHORIZATION_FAILED'),
    })
    const fake = fakeKafka({ send: [notFound] })
    const transactor = new PartitionTransactor(fake.kafka, 'g.in.0', logger)
    await expect(transactor.commit(content)).rejects.toThrow(
      'allow Write on transactional id "g.in.0"',
    )
    expect(isTransientBrokerError(notFound)).toBe(false)
  })

  it('at least once: one request to several topics is retried topic by topic to find the one refused', async () => {
    const sent: string[] = []
    const producer = {
      sendBatch: ({ topicMessages }: { topicMessages: TopicMessages[] }) => {
        sent.push(topicMessages.map((t) => t.topic).join('+'))
        return topicMessages.some((t) => t.topic === 'late')
          ? Promise.reject(
              new Error('retries exceeded', { cause: protocolError('TOPIC_AUTHORIZATION_FAILED') }),
            )
          : Promise.resolve([])
      },
    } as unknown as Producer
    const topicMessages = [
      { topic: 'out', messages: [{ value: 'r' }] },
      { topic: 'dlq', messages: [] },
      { topic: 'late', messages: [{ value: 'l' }] },
    ]
    await expect(sendResults(producer, topicMessages, () => undefined)).rejects.toThrow(
      'not authorized to write to topic late: allow Write on topic "late"',
    )
    expect(sent).toEqual(['out+dlq+late', 'out', 'late'])
  })

  it('pass everything else through as it is', () => {
    expect(asAuthorizationError(protocolError('NOT_LEADER_FOR_PARTITION'), 'x', {})).toBeUndefined()
    const aggregate = Object.assign(new Error('create failed'), {
      errors: [protocolError('TOPIC_ALREADY_EXISTS'), protocolError('TOPIC_AUTHORIZATION_FAILED')],
    })
    expect(authorizationFailure(aggregate)).toBe('TOPIC_AUTHORIZATION_FAILED')
    const refused = asAuthorizationError(aggregate, 'create topic t', {
      topic: { operation: 'Create', resource: 'topic "t"' },
    })
    expect(refused?.message).toMatch(/^not authorized to create topic t: allow Create on topic "t"/)
    // Already named further down: kept as it is.
    expect(asAuthorizationError(new Error('wrapped', { cause: refused }), 'y', {})).toBe(refused)
  })
})

describe('requestsBySize', () => {
  const message = (i: number, bytes: number) => ({ key: `k${i}`, value: Buffer.alloc(bytes) })
  const size = (m: { key: string; value: Buffer }) => 64 + Buffer.byteLength(m.key) + m.value.length

  it('packs small topics into one request, in order', () => {
    const topics = [
      { topic: 'out', messages: [message(1, 10), message(2, 10)] },
      { topic: 'late', messages: [] },
      { topic: 'dlq', messages: [message(3, 10)] },
    ]
    expect(requestsBySize(topics)).toEqual([
      [
        { topic: 'out', messages: [message(1, 10), message(2, 10)] },
        { topic: 'dlq', messages: [message(3, 10)] },
      ],
    ])
    expect(requestsBySize([{ topic: 'out', messages: [] }])).toEqual([])
  })

  it('splits a window close for many series into requests of at most 512 KiB', () => {
    // 250k results of ~40 bytes: about 25 MB, as a 1M-series close publishes per partition.
    const results = Array.from({ length: 250_000 }, (_, i) => message(i, 40))
    const late = [message(-1, 100)]
    const requests = requestsBySize([
      { topic: 'out', messages: results },
      { topic: 'late', messages: late },
    ])
    expect(requests.length).toBeGreaterThan(40)
    for (const request of requests) {
      const bytes = request.flatMap((t) => t.messages).reduce((n, m) => n + size(m as never), 0)
      expect(bytes).toBeLessThanOrEqual(512 * 1024)
    }
    // Every message once, in order, under its topic.
    const sent = (topic: string) =>
      requests.flatMap((r) => r.filter((t) => t.topic === topic).flatMap((t) => t.messages))
    expect(sent('out')).toEqual(results)
    expect(sent('late')).toEqual(late)
  })

  it('sends a message larger than the bound alone', () => {
    const big = message(0, 600 * 1024)
    const requests = requestsBySize([
      { topic: 'out', messages: [message(1, 1), big, message(2, 1)] },
    ])
    expect(requests.map((r) => r.flatMap((t) => t.messages).length)).toEqual([1, 1, 1])
  })
})

describe('isTooLarge', () => {
  it('finds the broker refusing a record batch as too large, through kafkajs causes', () => {
    const protocol = Object.assign(new Error('The request included a message larger than...'), {
      type: 'MESSAGE_TOO_LARGE',
    })
    // kafkajs' retrier wraps a non-retriable error: KafkaJSNonRetriableError { cause }.
    const wrapped = new Error('wrapped', { cause: protocol })
    expect(isTooLarge(protocol)).toBe(true)
    expect(isTooLarge(wrapped)).toBe(true)
    expect(isTooLarge(Object.assign(new Error('x'), { type: 'RECORD_LIST_TOO_LARGE' }))).toBe(true)
    expect(isTooLarge(new Error('x', { cause: protocolError('NOT_LEADER_FOR_PARTITION') }))).toBe(
      false,
    )
    expect(isTooLarge('MESSAGE_TOO_LARGE')).toBe(false)
  })
})
