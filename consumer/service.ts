import type { Admin, Consumer, EachBatchPayload, Kafka, Message, Producer } from 'kafkajs'
import { Partitioners } from 'kafkajs'
import { ChangelogReader } from './changelog'
import { TelemetryDecoder, type TelemetryDecoderOptions } from './decode'
import { isPoisonMessageError, KwaError } from './errors'
import { ensureChangelogTopic, ensureTopics } from './topics'
import { decodeCheckpoint, type Checkpoint } from './checkpoint'
import { createKafka } from './kafka'
import { namespace, type Logger } from './logger'
import {
  addCounts,
  emptyCounts,
  PartitionPipeline,
  type BatchCounts,
  type BatchOutcome,
  type PipelineOptions,
  type WindowConfig,
} from './pipeline'
import { FencedError, PartitionTransactor } from './transactions'

export type Delivery = 'exactly-once' | 'at-least-once'
export const deliveryModes = ['exactly-once', 'at-least-once'] as const

export interface ServiceConfig {
  brokers: string[]
  clientId: string
  groupId: string
  inputTopic: string
  outputTopic: string
  window: WindowConfig
  sessionTimeoutMs: number
  /** Default exactly-once. */
  delivery?: Delivery
  /** Exactly once: the compacted state topic; default `<groupId>-window-state-changelog`. */
  changelogTopic?: string
  /** Poison messages and rejected samples; default `<inputTopic>-dead-letter`. */
  deadLetterTopic?: string
  /** Late samples are published here when set. */
  lateTopic?: string
  /** Stop the service on a poison message instead of dead-lettering it. */
  onPoison?: 'dead-letter' | 'fail'
  /** Input limits (see PipelineOptions); undefined fields keep their defaults. */
  limits?: Pick<
    PipelineOptions,
    'maxFutureSkewMs' | 'minEventTimeMs' | 'maxKeyBytes' | 'maxOpenWindows'
  >
  /** Wire format, writer schemas and size limits of input messages; default plain Avro. */
  decoding?: TelemetryDecoderOptions
  /** How often to log running totals; 0 turns it off. */
  statsIntervalMs?: number
  /** Chaos testing only: probability of SIGKILLing this process between send and commit. */
  crashAfterSendProbability?: number
}

/** kafkajs' own test (errors.js `isRebalancing`): the group moved on, kafkajs will rejoin. */
const isRebalancing = (error: unknown): boolean => {
  const type = (error as { type?: unknown } | null)?.type
  return (
    type === 'REBALANCE_IN_PROGRESS' ||
    type === 'NOT_COORDINATOR_FOR_GROUP' ||
    type === 'ILLEGAL_GENERATION'
  )
}

interface OwnedPartition {
  pipeline: PartitionPipeline
  /** Exactly once: this partition's transactional producer. */
  transactor?: PartitionTransactor
  /** The group generation this pipeline was restored in. */
  generation: number
}

export const defaultChangelogTopic = (groupId: string) => `${groupId}-window-state-changelog`
export const defaultDeadLetterTopic = (inputTopic: string) => `${inputTopic}-dead-letter`

/**
 * One replica of the aggregator: a kafkajs consumer group member on the input topic.
 *
 * Per batch: consume → decode → aggregate → publish → commit. Exactly once, results, changelog
 * entries and offsets commit in one transaction; at least once, results are published before a
 * checkpointed offset is committed. Either way in-memory state is rebuilt from what is committed
 * whenever it may differ from it: at every new group generation (kafkajs rebalances eagerly and
 * resumes from committed offsets) and after any failed batch.
 */
export class AggregatorService {
  private readonly log: Logger
  private readonly kafka: Kafka
  private readonly consumer: Consumer
  private readonly producer: Producer
  private readonly admin: Admin
  private readonly delivery: Delivery
  private readonly changelogTopic: string
  private readonly deadLetterTopic: string
  private readonly pipelineOptions: PipelineOptions
  private readonly decoder: TelemetryDecoder
  private failure: ((error: Error) => void) | undefined
  /** Settles when the service cannot go on (a poison message with `onPoison: 'fail'`). */
  readonly failed: Promise<Error>
  private changelog: ChangelogReader | undefined
  private readonly owned = new Map<number, OwnedPartition>()
  /** Partitions sought back to their committed offset, awaiting the batch that starts there. */
  private readonly seeking = new Map<number, string>()
  /** Partitions whose producer a newer owner fenced in this generation: hands off until rejoin. */
  private readonly fenced = new Set<number>()
  private generation = 0
  private assigned: number[] = []
  private statsTimer: NodeJS.Timeout | undefined
  readonly totals: BatchCounts = emptyCounts()
  private stopping: Promise<void> | undefined

  constructor(
    private readonly config: ServiceConfig,
    logger: Logger,
  ) {
    this.log = namespace(logger, 'Aggregator')
    this.delivery = config.delivery ?? 'exactly-once'
    this.changelogTopic = config.changelogTopic ?? defaultChangelogTopic(config.groupId)
    this.deadLetterTopic = config.deadLetterTopic ?? defaultDeadLetterTopic(config.inputTopic)
    this.decoder = new TelemetryDecoder(config.decoding)
    this.pipelineOptions = {
      window: config.window,
      decoder: this.decoder,
      onPoison: config.onPoison,
      routeLate: config.lateTopic !== undefined,
      ...config.limits,
    }
    this.failed = new Promise((resolve) => (this.failure = resolve))
    this.kafka = createKafka({ brokers: config.brokers, clientId: config.clientId, logger })
    this.consumer = this.kafka.consumer({
      groupId: config.groupId,
      sessionTimeout: config.sessionTimeoutMs,
      heartbeatInterval: Math.max(100, Math.floor(config.sessionTimeoutMs / 10)),
      // A short long-poll: an idle replica stops (and hands over its partitions) within 0.5 s.
      maxWaitTimeInMs: 500,
      allowAutoTopicCreation: false,
      readUncommitted: false,
    })
    this.producer = this.kafka.producer({
      allowAutoTopicCreation: false,
      createPartitioner: Partitioners.DefaultPartitioner,
    })
    this.admin = this.kafka.admin()
  }

  /** Partitions of the input topic this replica owns in the current generation. */
  get assignment(): readonly number[] {
    return this.assigned
  }

  async start(): Promise<void> {
    await Promise.all([this.producer.connect(), this.admin.connect(), this.consumer.connect()])
    const sideTopics = [this.deadLetterTopic, this.config.lateTopic].filter((t) => t !== undefined)
    await ensureTopics(this.admin, this.config.inputTopic, sideTopics)
    if (this.delivery === 'exactly-once') {
      await ensureChangelogTopic(this.admin, this.config.inputTopic, this.changelogTopic)
      this.changelog = new ChangelogReader(
        this.kafka,
        this.changelogTopic,
        this.config.groupId,
        this.log,
      )
      await this.changelog.start()
    }
    this.consumer.on(this.consumer.events.GROUP_JOIN, ({ payload }) => {
      this.generation++
      this.assigned = [...(payload.memberAssignment[this.config.inputTopic] ?? [])].sort(
        (a, b) => a - b,
      )
      this.fenced.clear()
      this.releaseUnassigned()
      this.log.info({ generation: this.generation, partitions: this.assigned }, 'joined group')
    })
    this.consumer.on(this.consumer.events.CRASH, ({ payload }) => {
      if (payload.restart) return
      // kafkajs gave up: exit (and let the orchestrator restart us) rather than idle silently.
      this.log.fatal({ err: payload.error }, 'consumer crashed and will not restart')
      this.failure?.(payload.error)
    })
    await this.consumer.subscribe({ topic: this.config.inputTopic, fromBeginning: true })
    await this.consumer.run({
      autoCommit: false,
      eachBatchAutoResolve: false,
      partitionsConsumedConcurrently: 1,
      eachBatch: (payload) => this.handleBatch(payload),
    })
    const interval = this.config.statsIntervalMs ?? 10_000
    if (interval > 0) {
      this.statsTimer = setInterval(() => this.logStats(), interval)
      this.statsTimer.unref()
    }
    this.log.info(
      {
        inputTopic: this.config.inputTopic,
        outputTopic: this.config.outputTopic,
        delivery: this.delivery,
        deadLetterTopic: this.deadLetterTopic,
        lateTopic: this.config.lateTopic,
        window: this.config.window,
      },
      'started',
    )
  }

  /** Finishes the batch in flight, leaves the group, frees native state. Idempotent. */
  stop(): Promise<void> {
    this.stopping ??= (async () => {
      clearInterval(this.statsTimer)
      await this.consumer.disconnect()
      await Promise.all([...this.owned.keys()].map((partition) => this.release(partition)))
      await Promise.all([
        this.producer.disconnect(),
        this.admin.disconnect(),
        this.changelog?.stop(),
      ])
      this.logStats()
      this.log.info('stopped')
    })()
    return this.stopping
  }

  private async handleBatch(payload: EachBatchPayload): Promise<void> {
    const { batch } = payload
    if (!payload.isRunning() || payload.isStale() || batch.isEmpty()) return
    const owned = await this.ownedPartition(batch.partition, batch.firstOffset() ?? '0')
    if (owned === undefined) return
    // Fetches unknown writer schemas; a registry outage fails the batch, to be retried.
    await this.decoder.prepare(batch.messages.map((m) => m.value))
    try {
      const outcome = owned.pipeline.process(batch.messages)
      if (owned.transactor === undefined) await this.publishThenCommit(batch.partition, outcome)
      else await this.commitTransaction(owned.transactor, batch.partition, outcome)
      payload.resolveOffset(outcome.lastOffset)
      addCounts(this.totals, outcome.counts)
    } catch (error) {
      // State now runs ahead of what is committed: drop it, restore on the next batch.
      void this.release(batch.partition)
      if (error instanceof FencedError) this.fenced.add(batch.partition)
      const where = { topic: batch.topic, partition: batch.partition, offset: batch.firstOffset() }
      if (isRebalancing(error)) {
        this.log.info(where, 'rebalance during batch; partition will be restored')
      } else if (error instanceof FencedError) {
        this.log.warn({ ...where, err: error }, 'fenced by a newer owner; rejoining the group')
      } else if (isPoisonMessageError(error)) {
        this.log.fatal({ ...where, err: error }, 'poison message; stopping (--on-poison fail)')
        this.consumer.pause([{ topic: this.config.inputTopic }])
        this.failure?.(error)
        return
      } else {
        this.log.error({ ...where, err: error }, 'batch failed; partition will be restored')
      }
      throw error
    }
    await payload.heartbeat()
  }

  /** Everything a batch publishes, by topic. */
  private records(outcome: BatchOutcome): { topic: string; messages: Message[] }[] {
    const records = [
      { topic: this.config.outputTopic, messages: outcome.results },
      { topic: this.deadLetterTopic, messages: outcome.deadLetters },
    ]
    if (this.config.lateTopic !== undefined) {
      records.push({ topic: this.config.lateTopic, messages: outcome.late })
    }
    return records.filter((r) => r.messages.length > 0)
  }

  /** At least once: publish (acks=all), then commit the checkpointed offset. */
  private async publishThenCommit(partition: number, outcome: BatchOutcome): Promise<void> {
    const topicMessages = this.records(outcome)
    if (topicMessages.length > 0) await this.producer.sendBatch({ acks: -1, topicMessages })
    await this.consumer.commitOffsets([
      { topic: this.config.inputTopic, partition, ...outcome.commit },
    ])
  }

  /** Exactly once: results, changelog entries and the next offset in one transaction. */
  private async commitTransaction(
    transactor: PartitionTransactor,
    partition: number,
    outcome: BatchOutcome,
  ): Promise<void> {
    const crashProbability = this.config.crashAfterSendProbability ?? 0
    await transactor.commit({
      records: [
        ...this.records(outcome),
        {
          topic: this.changelogTopic,
          messages: outcome.changelog.map((r) => ({ ...r, partition })),
        },
      ],
      offsets: {
        consumerGroupId: this.config.groupId,
        topic: this.config.inputTopic,
        partition,
        offset: outcome.nextOffset,
      },
      beforeCommit:
        crashProbability > 0
          ? () => {
              if (Math.random() < crashProbability) process.kill(process.pid, 'SIGKILL')
            }
          : undefined,
    })
  }

  /**
   * The state of a partition, restored from what is committed when this generation has none.
   * Returns undefined after seeking the partition back to its committed offset.
   */
  private async ownedPartition(
    partition: number,
    firstOffset: string,
  ): Promise<OwnedPartition | undefined> {
    const owned = this.owned.get(partition)
    if (owned !== undefined && owned.generation === this.generation) return owned
    await this.release(partition)
    if (this.fenced.has(partition)) {
      // Re-initialising now would fence the new owner in turn: wait for the group to rebalance.
      throw new KwaError(`partition ${partition} moved to another replica; awaiting rebalance`, {
        retriable: true,
      })
    }
    const generation = this.generation
    const where = { topic: this.config.inputTopic, partition, offset: firstOffset }

    // Exactly once: fence the previous owner first, so nothing it does can commit after we read.
    let transactor: PartitionTransactor | undefined
    if (this.delivery === 'exactly-once') {
      transactor = new PartitionTransactor(
        this.kafka,
        `${this.config.groupId}.${this.config.inputTopic}.${partition}`,
        this.log,
      )
      await transactor.connect()
    }
    try {
      const committed = await this.fetchCommitted(partition)
      if (committed !== undefined && committed.offset !== firstOffset) {
        if (this.seeking.get(partition) !== committed.offset) {
          this.seeking.set(partition, committed.offset)
          this.consumer.seek({ topic: this.config.inputTopic, partition, offset: committed.offset })
          await transactor?.disconnect()
          return undefined
        }
        // Sought once and still elsewhere: the records were deleted (retention); go on from here.
        this.log.warn(
          { ...where, committed: committed.offset },
          'committed offset no longer readable',
        )
      }
      this.seeking.delete(partition)
      const restored = await this.changelog?.restore(partition)
      const pipeline = new PartitionPipeline(
        this.config.inputTopic,
        partition,
        this.pipelineOptions,
        restored !== undefined ? { restored } : { checkpoint: committed?.checkpoint ?? null },
        this.log,
      )
      const state: OwnedPartition = { pipeline, transactor, generation }
      this.owned.set(partition, state)
      this.log.info(
        restored !== undefined
          ? {
              ...where,
              windows: restored.states.seriesKeys.length,
              streamTime: restored.streamTime,
            }
          : { ...where, checkpoint: committed?.checkpoint ?? null },
        'partition restored',
      )
      return state
    } catch (error) {
      await transactor?.disconnect().catch(() => undefined)
      throw error
    }
  }

  private async fetchCommitted(
    partition: number,
  ): Promise<{ offset: string; checkpoint: Checkpoint | null } | undefined> {
    const [topic] = await this.admin.fetchOffsets({
      groupId: this.config.groupId,
      topics: [this.config.inputTopic],
    })
    const entry = topic?.partitions.find((p) => p.partition === partition)
    if (entry === undefined || Number(entry.offset) < 0) return undefined
    let checkpoint: Checkpoint | null = null
    if (this.delivery === 'at-least-once') {
      try {
        checkpoint = decodeCheckpoint(entry.metadata)
      } catch (error) {
        this.log.warn(
          { topic: this.config.inputTopic, partition, err: error },
          'ignoring foreign commit metadata',
        )
      }
    }
    return { offset: entry.offset, checkpoint }
  }

  /** Frees a partition's native state now; its producer disconnects in the background. */
  private release(partition: number): Promise<void> {
    const owned = this.owned.get(partition)
    if (owned === undefined) return Promise.resolve()
    this.owned.delete(partition)
    owned.pipeline.free()
    return (owned.transactor?.disconnect() ?? Promise.resolve()).catch((error: unknown) => {
      this.log.debug({ partition, err: error }, 'producer disconnect failed')
    })
  }

  private releaseUnassigned(): void {
    for (const partition of [...this.owned.keys()]) {
      if (!this.assigned.includes(partition)) void this.release(partition)
    }
    for (const partition of [...this.seeking.keys()]) {
      if (!this.assigned.includes(partition)) this.seeking.delete(partition)
    }
  }

  private logStats(): void {
    let openWindows = 0
    let bytesHeld = 0
    for (const { pipeline } of this.owned.values()) {
      openWindows += pipeline.stats.openWindows
      bytesHeld += pipeline.stats.bytesHeld
    }
    this.log.info({ ...this.totals, openWindows, bytesHeld, partitions: this.assigned }, 'stats')
  }
}
