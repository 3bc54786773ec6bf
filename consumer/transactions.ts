import { Partitioners, type Kafka, type Message, type Producer } from 'kafkajs'
import { KwaError } from './errors'
import type { Logger } from './logger'

/** What one batch commits atomically. */
export interface TransactionContent {
  records: { topic: string; messages: Message[] }[]
  offsets: { consumerGroupId: string; topic: string; partition: number; offset: string }
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
}

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
const fencedTypes = new Set([
  'INVALID_PRODUCER_EPOCH',
  'PRODUCER_FENCED',
  'TRANSACTIONAL_ID_AUTHORIZATION_FAILED',
])

const errorType = (error: unknown): string | undefined => {
  const type = (error as { type?: unknown } | null)?.type
  return typeof type === 'string' ? type : undefined
}

export class FencedError extends KwaError {}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

/**
 * The transactional producer of one input partition. Its transactional id is stable per input
 * partition, so whoever owns the partition next fences this one (kafkajs has no KIP-447
 * group-generation fencing, so the transactional id is what stops zombies).
 */
export class PartitionTransactor {
  private producer: Producer

  constructor(
    private readonly kafka: Kafka,
    readonly transactionalId: string,
    private readonly log: Logger,
    private readonly maxAttempts = 5,
  ) {
    this.producer = this.newProducer()
  }

  private newProducer(): Producer {
    return this.kafka.producer({
      transactionalId: this.transactionalId,
      idempotent: true,
      maxInFlightRequests: 1,
      allowAutoTopicCreation: false,
      createPartitioner: Partitioners.DefaultPartitioner,
    })
  }

  /** Initialises the producer id: fences any previous owner and aborts its open transaction. */
  async connect(): Promise<void> {
    await this.producer.connect()
  }

  async disconnect(): Promise<void> {
    await this.producer.disconnect()
  }

  /**
   * Sends the records and the offsets in one transaction and commits it. A transient error before
   * the commit aborts and retries with backoff. A failed commit leaves the outcome unknown: the
   * producer is re-initialised (which completes or aborts the transaction) and the error is
   * thrown, so the caller restores its state from what was really committed.
   */
  async commit(content: TransactionContent): Promise<TransactionTimings> {
    for (let attempt = 1; ; attempt++) {
      const transaction = await this.producer.transaction()
      let committing = false
      try {
        for (const { topic, messages } of content.records) {
          if (messages.length > 0) await transaction.send({ topic, messages })
        }
        const { consumerGroupId, topic, partition, offset } = content.offsets
        const commitStarted = process.hrtime.bigint()
        await transaction.sendOffsets({
          consumerGroupId,
          topics: [{ topic, partitions: [{ partition, offset }] }],
        })
        content.beforeCommit?.()
        committing = true
        await transaction.commit()
        return {
          attempts: attempt,
          commitSeconds: Number(process.hrtime.bigint() - commitStarted) / 1e9,
        }
      } catch (error) {
        content.onAbort?.()
        const type = errorType(error)
        if (fencedTypes.has(type ?? '')) {
          // Retriable, and without the kafkajs cause (which kafkajs would judge instead): the
          // consumer must rejoin the group and learn what it owns now, not crash.
          const reason = error instanceof Error ? error.message : String(error)
          throw new FencedError(`${this.transactionalId} was fenced by a newer owner (${reason})`, {
            retriable: true,
          })
        }
        if (committing || !transientTypes.has(type ?? '') || attempt >= this.maxAttempts) {
          await this.reinitialise()
          throw error
        }
        this.log.warn(
          { transactionalId: this.transactionalId, attempt, err: error },
          'transaction retried',
        )
        await transaction.abort().catch(() => this.reinitialise())
        await sleep(Math.min(2_000, 100 * 2 ** attempt))
      }
    }
  }

  /** A fresh producer with the same id: the broker completes or aborts whatever was pending. */
  private async reinitialise(): Promise<void> {
    await this.producer.disconnect().catch(() => undefined)
    this.producer = this.newProducer()
    await this.producer.connect().catch((error: unknown) => {
      this.log.warn(
        { transactionalId: this.transactionalId, err: error },
        'producer re-initialisation failed',
      )
    })
  }
}
