import type { Admin, Consumer, EachBatchPayload, Producer } from 'kafkajs'
import { Partitioners } from 'kafkajs'
import { decodeCheckpoint, type Checkpoint } from './checkpoint'
import { createKafka } from './kafka'
import { namespace, type Logger } from './logger'
import {
  addCounts,
  emptyCounts,
  PartitionPipeline,
  type BatchCounts,
  type WindowConfig,
} from './pipeline'

export interface ServiceConfig {
  brokers: string[]
  clientId: string
  groupId: string
  inputTopic: string
  outputTopic: string
  window: WindowConfig
  sessionTimeoutMs: number
  /** How often to log running totals; 0 turns it off. */
  statsIntervalMs?: number
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
  /** The group generation this pipeline was restored in. */
  generation: number
}

/**
 * One replica of the aggregator: a kafkajs consumer group member on the input topic.
 *
 * Per batch: consume → decode → aggregate → publish → commit. In-memory state is rebuilt from
 * the committed checkpoint whenever it may differ from it: at every new group generation
 * (kafkajs rebalances eagerly and resumes from committed offsets) and after any failed batch.
 */
export class AggregatorService {
  private readonly log: Logger
  private readonly consumer: Consumer
  private readonly producer: Producer
  private readonly admin: Admin
  private readonly owned = new Map<number, OwnedPartition>()
  /** Partitions sought back to their checkpoint, awaiting the batch that starts there. */
  private readonly seeking = new Map<number, string>()
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
    const kafka = createKafka({ brokers: config.brokers, clientId: config.clientId, logger })
    this.consumer = kafka.consumer({
      groupId: config.groupId,
      sessionTimeout: config.sessionTimeoutMs,
      heartbeatInterval: Math.max(100, Math.floor(config.sessionTimeoutMs / 10)),
      // A short long-poll: an idle replica stops (and hands over its partitions) within 0.5 s.
      maxWaitTimeInMs: 500,
      allowAutoTopicCreation: false,
    })
    this.producer = kafka.producer({
      allowAutoTopicCreation: false,
      createPartitioner: Partitioners.DefaultPartitioner,
    })
    this.admin = kafka.admin()
  }

  /** Partitions of the input topic this replica owns in the current generation. */
  get assignment(): readonly number[] {
    return this.assigned
  }

  get groupGeneration(): number {
    return this.generation
  }

  async start(): Promise<void> {
    await Promise.all([this.producer.connect(), this.admin.connect(), this.consumer.connect()])
    this.consumer.on(this.consumer.events.GROUP_JOIN, ({ payload }) => {
      this.generation++
      this.assigned = [...(payload.memberAssignment[this.config.inputTopic] ?? [])].sort(
        (a, b) => a - b,
      )
      this.releaseUnassigned()
      this.log.info({ generation: this.generation, partitions: this.assigned }, 'joined group')
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
      await Promise.all([this.producer.disconnect(), this.admin.disconnect()])
      for (const partition of [...this.owned.keys()]) this.release(partition)
      this.logStats()
      this.log.info('stopped')
    })()
    return this.stopping
  }

  private async handleBatch(payload: EachBatchPayload): Promise<void> {
    const { batch } = payload
    if (!payload.isRunning() || payload.isStale() || batch.isEmpty()) return
    const pipeline = await this.pipelineFor(batch.partition, batch.firstOffset() ?? '0')
    if (pipeline === undefined) return
    try {
      const outcome = pipeline.process(batch.messages)
      if (outcome.results.length > 0) {
        await this.producer.send({
          topic: this.config.outputTopic,
          acks: -1,
          messages: outcome.results,
        })
      }
      await this.consumer.commitOffsets([
        { topic: batch.topic, partition: batch.partition, ...outcome.commit },
      ])
      payload.resolveOffset(outcome.lastOffset)
      addCounts(this.totals, outcome.counts)
    } catch (error) {
      // State now runs ahead of the committed checkpoint: drop it, restore on the next batch.
      this.release(batch.partition)
      const where = { topic: batch.topic, partition: batch.partition, offset: batch.firstOffset() }
      if (isRebalancing(error)) {
        this.log.info(
          where,
          'rebalance during batch; partition will be restored from its checkpoint',
        )
      } else {
        this.log.error(
          { ...where, err: error },
          'batch failed; partition will be restored from its checkpoint',
        )
      }
      throw error
    }
    await payload.heartbeat()
  }

  /**
   * The pipeline of a partition, restored from its committed checkpoint when this generation has
   * none. Returns undefined after seeking the partition back to its checkpoint.
   */
  private async pipelineFor(
    partition: number,
    firstOffset: string,
  ): Promise<PartitionPipeline | undefined> {
    const owned = this.owned.get(partition)
    if (owned !== undefined && owned.generation === this.generation) return owned.pipeline
    this.release(partition)

    const generation = this.generation
    const committed = await this.fetchCommitted(partition)
    const where = { topic: this.config.inputTopic, partition, offset: firstOffset }
    if (committed !== undefined && committed.offset !== firstOffset) {
      if (this.seeking.get(partition) !== committed.offset) {
        this.seeking.set(partition, committed.offset)
        this.consumer.seek({ topic: this.config.inputTopic, partition, offset: committed.offset })
        return undefined
      }
      // Sought once and still elsewhere: the records were deleted (retention); go on from here.
      this.log.warn(
        { ...where, committed: committed.offset },
        'checkpoint offset no longer readable',
      )
    }
    this.seeking.delete(partition)
    const pipeline = new PartitionPipeline(
      this.config.inputTopic,
      partition,
      this.config.window,
      committed?.checkpoint ?? null,
      this.log,
    )
    this.owned.set(partition, { pipeline, generation })
    this.log.info({ ...where, checkpoint: committed?.checkpoint ?? null }, 'partition restored')
    return pipeline
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
    try {
      checkpoint = decodeCheckpoint(entry.metadata)
    } catch (error) {
      this.log.warn(
        { topic: this.config.inputTopic, partition, err: error },
        'ignoring foreign commit metadata',
      )
    }
    return { offset: entry.offset, checkpoint }
  }

  private release(partition: number): void {
    this.owned.get(partition)?.pipeline.free()
    this.owned.delete(partition)
  }

  private releaseUnassigned(): void {
    for (const partition of [...this.owned.keys()]) {
      if (!this.assigned.includes(partition)) this.release(partition)
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
