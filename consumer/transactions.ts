import { Partitioners, type Kafka, type Message, type Producer, type TopicMessages } from 'kafkajs'
import { aclResource, asAuthorizationError, authorizationFailure, KwaError } from './errors'
import type { Logger } from './logger'
import { isGroupMessage, recordCount } from './encoded-records'

/** What one batch commits atomically. */
export interface TransactionContent {
  records: { topic: string; messages: Message[] }[]
  offsets: { consumerGroupId: string; topic: string; partition: number; offset: string }
  /**
   * A partition all of whose records in `records` are written here (the changelog partition):
   * the commit reports its end offset after the transaction (see TransactionTimings.endOffset).
   */
  track?: { topic: string; partition: number }
  /**
   * Sent last, to the tracked partition, once the records are: given the offset of the first
   * record this attempt wrote there (undefined: none), as a snapshot's position record needs.
   */
  last?: (firstTracked: bigint | undefined) => Message
  /** Fault injection for the chaos suite: runs after the sends, before the commit. */
  beforeCommit?: () => void
  /** Called for every attempt that does not commit (aborted to retry, or failed). */
  onAbort?: () => void
}

/** How a committed transaction went. */
export interface TransactionTimings {
  /** Attempts, the committed one included. */
  attempts: number
  /** sendOffsets and commit of the committed attempt, in seconds. */
  commitSeconds: number
  /**
   * The tracked partition's end offset right after the commit: its last record's offset + 2 (the
   * commit marker follows it). Undefined when nothing was tracked or written there.
   */
  endOffset?: bigint
  /** The offset of the first record the committed attempt wrote to the tracked partition. */
  firstTracked?: bigint
}

/**
 * Records per produce request are bounded by bytes: a transaction may gather many batches (and
 * a changelog write every open window of a partition), more than a broker's message.max.bytes
 * (1 MiB by default) takes in one record batch.
 */
const MAX_REQUEST_BYTES = 512 * 1024

/** Splits items into runs of at most MAX_REQUEST_BYTES by `bytes` (at least one item each). */
function splitBySize<T>(items: Iterable<T>, bytes: (item: T) => number): T[][] {
  const runs: T[][] = []
  let run: T[] = []
  let total = 0
  for (const item of items) {
    const size = bytes(item)
    if (run.length > 0 && total + size > MAX_REQUEST_BYTES) {
      runs.push(run)
      run = []
      total = 0
    }
    run.push(item)
    total += size
  }
  if (run.length > 0) runs.push(run)
  return runs
}

/**
 * Group messages (each standing for many records) in pieces of at most MAX_REQUEST_BYTES; two
 * consecutive pieces exceed it together, so no request holds two (kafkajs takes one per partition).
 */
const inPieces = (messages: readonly Message[]): Message[] =>
  messages.flatMap((m) =>
    isGroupMessage(m) ? m.group.split(MAX_REQUEST_BYTES).flatMap((g) => g.messages()) : [m],
  )

/** Splits messages into runs of at most MAX_REQUEST_BYTES of keys and values (at least one). */
export const chunkBySize = (messages: readonly Message[]): Message[][] =>
  splitBySize(inPieces(messages), messageBytes)

/**
 * `topicMessages` as `sendBatch` requests of at most MAX_REQUEST_BYTES each (a message larger
 * than that alone), in order: when a window closes for many series at once, its results would
 * not fit one record batch (kafkajs sends one per partition per request).
 */
export function requestsBySize(topicMessages: readonly TopicMessages[]): TopicMessages[][] {
  const addressed = topicMessages.flatMap(({ topic, messages }) =>
    inPieces(messages).map((message) => ({ topic, message })),
  )
  return splitBySize(addressed, ({ message }) => messageBytes(message)).map((run) => {
    // Consecutive messages of one topic, as one entry.
    const request: TopicMessages[] = []
    for (const { topic, message } of run) {
      const last = request.at(-1)
      if (last?.topic === topic) last.messages.push(message)
      else request.push({ topic, messages: [message] })
    }
    return request
  })
}

/**
 * At least once: `topicMessages` in one request, as a rule. A window closing for many series at
 * once can make a partition's record batch larger than the broker takes (`max.message.bytes`,
 * 1 MiB by default: 250k results per partition at 1M series); refused as such, they go again in
 * requests of at most 512 KiB, in order (`onSplit` is told how many records). Splitting always
 * would cost a round trip per 512 KiB.
 */
export async function sendResults(
  producer: Producer,
  topicMessages: TopicMessages[],
  onSplit: (records: number) => void,
): Promise<void> {
  if (!topicMessages.some((t) => t.messages.length > 0)) return
  try {
    await producer.sendBatch({ acks: -1, topicMessages })
  } catch (error) {
    if (authorizationFailure(error) !== undefined)
      throw await refusedTopic(producer, topicMessages, error)
    if (!isTooLarge(error)) throw error
    onSplit(topicMessages.reduce((n, t) => n + recordCount(t.messages), 0))
    for (const request of requestsBySize(topicMessages))
      await producer.sendBatch({ acks: -1, topicMessages: request })
  }
}

/**
 * The broker refused a request to several topics without saying which: one topic at a time
 * finds it (at least once, a record sent twice is allowed; the batch fails either way).
 */
async function refusedTopic(
  producer: Producer,
  topicMessages: TopicMessages[],
  error: unknown,
): Promise<unknown> {
  const sent = topicMessages.filter((t) => t.messages.length > 0)
  for (const request of sent) {
    const failure: unknown =
      sent.length === 1
        ? error
        : await producer.sendBatch({ acks: -1, topicMessages: [request] }).then(
            () => undefined,
            (e: unknown) => e,
          )
    const refused = asAuthorizationError(failure, `write to topic ${request.topic}`, {
      topic: { operation: 'Write', resource: aclResource.topic(request.topic) },
      cluster: { operation: 'IdempotentWrite', resource: aclResource.cluster },
    })
    if (refused !== undefined) return refused
  }
  return error
}

/** Broker answers to a record batch over `max.message.bytes` (kafkajs wraps them in `cause`). */
const tooLargeTypes = new Set(['MESSAGE_TOO_LARGE', 'RECORD_LIST_TOO_LARGE'])

/** Whether `error` (or one of its causes) is the broker refusing a record batch as too large. */
export function isTooLarge(error: unknown): boolean {
  for (let e = error, depth = 0; e instanceof Error && depth < 8; depth++) {
    if (tooLargeTypes.has((e as { type?: unknown }).type as string)) return true
    e = e.cause
  }
  return false
}

/** A message's bytes in a request: key, value and a bound on its framing. */
const messageBytes = (message: Message): number =>
  isGroupMessage(message)
    ? message.group.bytes
    : 64 + byteLength(message.key) + byteLength(message.value)

const byteLength = (data: Message['key'] | Message['value']): number =>
  data === null || data === undefined ? 0 : Buffer.byteLength(data)

/** Errors after which a transaction can simply be tried again (kafkajs#1068, #430). */
const transientTypes = new Set([
  'CONCURRENT_TRANSACTIONS',
  'COORDINATOR_LOAD_IN_PROGRESS',
  'COORDINATOR_NOT_AVAILABLE',
  'NOT_COORDINATOR',
  'NOT_COORDINATOR_FOR_GROUP',
  'REQUEST_TIMED_OUT',
  'NOT_LEADER_FOR_PARTITION',
  'LEADER_NOT_AVAILABLE',
  'NOT_ENOUGH_REPLICAS',
  'NETWORK_EXCEPTION',
])
/** Another producer with our transactional id took over: this replica is a zombie. */
const fencedTypes = new Set(['INVALID_PRODUCER_EPOCH', 'PRODUCER_FENCED'])

const errorType = (error: unknown): string | undefined => {
  const type = (error as { type?: unknown } | null)?.type
  return typeof type === 'string' ? type : undefined
}

/** Fenced, also when kafkajs reports it as the cause of giving up after its own retries. */
const isFenced = (error: unknown): boolean => {
  const cause = (error as { cause?: unknown } | null)?.cause
  return fencedTypes.has(errorType(error) ?? '') || fencedTypes.has(errorType(cause) ?? '')
}

export class FencedError extends KwaError {}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

/**
 * The transactional producer of one input partition. Its transactional id is stable per input
 * partition, so whoever owns the partition next fences this one (kafkajs has no KIP-447
 * group-generation fencing, so the transactional id is what stops zombies).
 */
export class PartitionTransactor {
  private readonly producer: Producer

  constructor(
    kafka: Kafka,
    readonly transactionalId: string,
    private readonly log: Logger,
    private readonly maxAttempts = 5,
  ) {
    this.producer = kafka.producer({
      transactionalId,
      idempotent: true,
      maxInFlightRequests: 1,
      allowAutoTopicCreation: false,
      createPartitioner: Partitioners.DefaultPartitioner,
      // kafkajs' default for an idempotent producer (retries without end, from 300 ms, doubling)
      // but from 50 ms and at most 1 s apart: a fence answered CONCURRENT_TRANSACTIONS while the
      // previous owner's commit completes (a few ms) otherwise waits seconds. The caller bounds it.
      retry: { retries: Number.MAX_SAFE_INTEGER, initialRetryTime: 50, maxRetryTime: 1_000 },
    })
  }

  /**
   * Initialises the producer id with the transactional id: fences any previous owner and
   * completes its open transaction (answered CONCURRENT_TRANSACTIONS until then). kafkajs 2.2.4's
   * `connect()` alone does not: it asks for a producer id without the transactional id, and sends
   * the fencing InitProducerId only at the first `transaction()`. So that is done here, with an
   * empty transaction, which kafkajs ends without a request.
   */
  async connect(): Promise<void> {
    try {
      await this.producer.connect()
      const transaction = await this.producer.transaction()
      await transaction.abort()
    } catch (error) {
      throw (
        this.refused(error, `initialise the transactional producer ${this.transactionalId}`) ??
        error
      )
    }
  }

  /** `error` as an AuthorizationError naming what `doing` needs, if it is a refusal. */
  private refused(error: unknown, doing: string, topic?: string, group?: string) {
    return asAuthorizationError(error, doing, {
      transactionalId: {
        operation: 'Write',
        resource: aclResource.transactionalId(this.transactionalId),
      },
      cluster: { operation: 'IdempotentWrite', resource: aclResource.cluster },
      ...(topic !== undefined && {
        topic: { operation: 'Write', resource: aclResource.topic(topic) },
      }),
      ...(group !== undefined && {
        group: { operation: 'Read', resource: aclResource.group(group) },
      }),
    })
  }

  async disconnect(): Promise<void> {
    await this.producer.disconnect()
  }

  /**
   * Sends the records and the offsets in one transaction and commits it. A transient error before
   * the commit aborts and retries with backoff, as long as the abort succeeds. Anything else (a
   * failed commit: outcome unknown) disconnects the producer and throws, so the caller restores
   * its state from what was really committed; the producer is never re-initialised here.
   */
  async commit(content: TransactionContent): Promise<TransactionTimings> {
    for (let attempt = 1; ; attempt++) {
      const transaction = await this.producer.transaction()
      let committing = false
      let step: { doing: string; topic?: string; group?: string } = { doing: 'begin a transaction' }
      let firstTracked: bigint | undefined
      let lastTracked: bigint | undefined
      const send = async (topic: string, chunk: Message[]) => {
        step = { doing: `write to topic ${topic} in a transaction`, topic }
        const written = await transaction.send({ topic, messages: chunk })
        const track = content.track
        if (track === undefined || track.topic !== topic) return
        const meta = written.find((m) => m.partition === track.partition)
        if (meta?.baseOffset === undefined) return
        // One record batch per partition and request: its records are consecutive.
        firstTracked ??= BigInt(meta.baseOffset)
        lastTracked = BigInt(meta.baseOffset) + BigInt(recordCount(chunk)) - 1n
      }
      try {
        for (const { topic, messages } of content.records) {
          for (const chunk of chunkBySize(messages)) await send(topic, chunk)
        }
        if (content.last !== undefined && content.track !== undefined)
          await send(content.track.topic, [content.last(firstTracked)])
        const { consumerGroupId, topic, partition, offset } = content.offsets
        const commitStarted = process.hrtime.bigint()
        step = {
          doing: `commit the offsets of group ${consumerGroupId} in a transaction`,
          group: consumerGroupId,
        }
        await transaction.sendOffsets({
          consumerGroupId,
          topics: [{ topic, partitions: [{ partition, offset }] }],
        })
        content.beforeCommit?.()
        committing = true
        step = { doing: `commit transaction ${this.transactionalId}` }
        await transaction.commit()
        return {
          attempts: attempt,
          commitSeconds: Number(process.hrtime.bigint() - commitStarted) / 1e9,
          endOffset: lastTracked === undefined ? undefined : lastTracked + 2n,
          firstTracked,
        }
      } catch (error) {
        content.onAbort?.()
        const refused = this.refused(error, step.doing, step.topic, step.group)
        if (refused !== undefined) {
          await this.producer.disconnect().catch(() => undefined)
          throw refused
        }
        if (isFenced(error)) {
          // Retriable, and without the kafkajs cause (which kafkajs would judge instead): the
          // consumer must rejoin the group and learn what it owns now, not crash.
          const reason = error instanceof Error ? error.message : String(error)
          throw new FencedError(`${this.transactionalId} was fenced by a newer owner (${reason})`, {
            retriable: true,
          })
        }
        const type = errorType(error)
        if (!committing && transientTypes.has(type ?? '') && attempt < this.maxAttempts) {
          // An abort that succeeds proves this producer's epoch is still the newest: nobody
          // fenced it, so nothing was committed since the state was restored, and the same
          // records can be sent again.
          const aborted = await transaction.abort().then(
            () => true,
            () => false,
          )
          if (aborted) {
            this.log.warn(
              { transactionalId: this.transactionalId, attempt, err: error },
              'transaction retried',
            )
            await sleep(Math.min(2_000, 100 * 2 ** attempt))
            continue
          }
        }
        // Outcome unknown, or perhaps fenced: the state may no longer be what is committed.
        // Never re-initialise the producer here: a new epoch would fence a newer owner and let
        // this stale state commit. The caller drops the partition and restores it (fence, then
        // changelog); that fence completes or aborts whatever this transaction left pending.
        await this.producer.disconnect().catch(() => undefined)
        throw error
      }
    }
  }
}
