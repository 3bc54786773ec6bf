import type { Admin, Consumer, EachBatchPayload, Kafka, Message, Producer } from 'kafkajs'
import { Partitioners } from 'kafkajs'
import { ChangelogReader, RESTORE_READ_TIMEOUT_MS } from './changelog'
import { TelemetryDecoder, type TelemetryDecoderOptions } from './decode'
import { isPoisonMessageError, KwaError } from './errors'
import { rejectionReason, rejectionReasons } from './dead-letter'
import { OpsServer, type Health } from './http'
import { reasonLabel, ServiceMetrics } from './metrics'
import { provisionTopics } from './topics'
import { decodeCheckpoint, type Checkpoint } from './checkpoint'
import { createKafka, type KafkaSecurity } from './kafka'
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
import { isBrokerRetriesExhausted, retryWithBackoff, START_RETRY_BOUND_MS } from './retry'
import { FencedError, PartitionTransactor } from './transactions'
import { StallWatchdog } from './watchdog'

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
  /** Partitions whose batches are processed at once (default 8). */
  concurrency?: number
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
  /** Serve /metrics, /healthz and /readyz here from start() to stop() (port 0: any free one). */
  http?: { host: string; port: number }
  /** TLS and SASL for every client of the replica; default plaintext. */
  security?: KafkaSecurity
  /** Create missing output/dead-letter/late/changelog topics at start (default), or only check. */
  createTopics?: boolean
  /** Overrides of the bounds derived by failureBounds() (tests). */
  bounds?: Partial<FailureBounds>
}

/**
 * How long a replica waits on a slow or absent broker before it gives up (docs/OPERATIONS.md,
 * "Failure handling and bounds"). Giving up means failing: /healthz 503 and exit code 1.
 */
export interface FailureBounds {
  /** Retrying transient errors at start: connecting, provisioning topics, the reader's join. */
  startRetryMs: number
  /** Retrying a restore's offset fetches (the group's committed offsets, the changelog's end). */
  restoreRetryMs: number
  /** Reading one changelog partition to its end (then the restore fails and is retried). */
  restoreReadMs: number
  /** The main consumer silent (no fetch, heartbeat, join, batch) while not stopping. */
  stallMs: number
}

/** The watchdog never trips sooner: a fetch or a rejoin may take most of a minute on its own. */
export const MIN_STALL_BOUND_MS = 60_000

/**
 * The bounds for a session timeout. A restore runs inside kafkajs' fetch loop (eachBatch), so
 * the loop may legitimately be silent for a changelog read plus the restore's offset fetches:
 * the stall bound exceeds restoreReadMs plus a session timeout (restore progress also counts as
 * activity, so a long restore that makes progress never trips it). Retrying a restore's fetches
 * longer than a session timeout is pointless: by then the group has moved on without us.
 */
export function failureBounds(
  sessionTimeoutMs: number,
  overrides: Partial<FailureBounds> = {},
): FailureBounds {
  const restoreReadMs = overrides.restoreReadMs ?? RESTORE_READ_TIMEOUT_MS
  return {
    startRetryMs: overrides.startRetryMs ?? START_RETRY_BOUND_MS,
    restoreRetryMs: overrides.restoreRetryMs ?? sessionTimeoutMs,
    restoreReadMs,
    stallMs: overrides.stallMs ?? Math.max(MIN_STALL_BOUND_MS, restoreReadMs + sessionTimeoutMs),
  }
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
  /**
   * Restored right after a join, before any batch: the committed offset it was restored at. The
   * first batch must start there (else it is restored again, the usual way).
   */
  expectedOffset?: string
}

/**
 * Where a restored partition resumes. Exactly once, the changelog's position is the truth: it
 * commits in the same transaction as the group's offset, and after the fence it is complete,
 * whereas an OffsetFetch may still answer an older offset. kafkajs speaks no OffsetFetch with
 * require_stable (KIP-447), and Kafka's classic group coordinator materialises a committed
 * transaction's offsets asynchronously, after its markers: for a moment a new owner sees the
 * changelog of a transaction and the offset from before it. A group offset ahead of the
 * changelog was moved by an operator (kafka-consumer-groups --reset-offsets, to skip input):
 * it is followed. One behind it is stale, or a reset backwards that the state already holds.
 */
export function resumePosition(
  changelog: string | null,
  committed: string | null,
): { offset: string | null; reset?: string } {
  if (changelog === null) return { offset: committed }
  if (committed === null || BigInt(committed) <= BigInt(changelog)) return { offset: changelog }
  return {
    offset: committed,
    reset: 'group offset is ahead of the changelog (reset by an operator?): skipping to it',
  }
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
  private readonly bounds: FailureBounds
  /** Fails the service when kafkajs' loop goes silent (see FailureBounds.stallMs). */
  private readonly watchdog: StallWatchdog
  /** What stop() is waiting for right now (for the shutdown-timeout message). */
  private shutdownStep: string | undefined
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
  /** Prometheus metrics of this replica (its own registry). */
  readonly metrics: ServiceMetrics
  private http: OpsServer | undefined
  /** Set when the service cannot go on: /healthz answers 503. */
  private failedWith: Error | undefined
  /** The group is rebalancing (or the consumer restarting): not ready until the next join. */
  private rebalancing = false
  /** Input records not yet processed, per owned partition, as of its last batch. */
  private readonly lag = new Map<number, number>()
  /** Restores of the partitions assigned at the last join (so readiness never waits on input). */
  private warmup: Promise<void> | undefined
  /** Per partition, the restore in progress: one at a time, batch or warm-up. */
  private readonly restoring = new Map<number, Promise<unknown>>()

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
    this.bounds = failureBounds(config.sessionTimeoutMs, config.bounds)
    this.watchdog = new StallWatchdog({
      boundMs: this.bounds.stallMs,
      onStall: (quietMs) => this.stalled(quietMs),
    })
    this.kafka = createKafka({
      brokers: config.brokers,
      clientId: config.clientId,
      security: config.security,
      logger,
    })
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
    this.metrics = new ServiceMetrics({
      ready: () => this.health().ready,
      partitions: () =>
        [...this.owned].map(([partition, { pipeline }]) => ({ partition, ...pipeline.stats })),
      lag: () =>
        [...this.lag].map(([partition, lag]) => ({
          topic: this.config.inputTopic,
          partition,
          lag,
        })),
    })
    // Every reason from the start at 0, so that rates and alerts see a series.
    for (const reason of Object.values(rejectionReasons)) {
      this.metrics.samplesRejected.inc({ reason: reasonLabel(reason) }, 0)
    }
  }

  /** What a stop in progress still waits for; undefined when not stopping or stopped. */
  get pendingShutdownStep(): string | undefined {
    return this.shutdownStep
  }

  /** Partitions of the input topic this replica owns in the current generation. */
  get assignment(): readonly number[] {
    return this.assigned
  }

  /** Base URL of the /metrics, /healthz and /readyz server once listening (with `http`). */
  get httpUrl(): string | undefined {
    return this.http?.url
  }

  /**
   * Liveness and readiness. Ready: joined the group, not rebalancing, every assigned partition
   * restored in this generation, not stopping. Live: not failed.
   */
  health(): Health {
    const pending = this.assigned.filter((p) => this.owned.get(p)?.generation !== this.generation)
    const detail: Record<string, unknown> = {
      generation: this.generation,
      partitions: this.assigned,
    }
    const state = (status: string, ready = false): Health => ({
      live: true,
      ready,
      status,
      detail,
    })
    if (this.failedWith !== undefined) {
      return {
        ...state('failed'),
        live: false,
        detail: { ...detail, error: this.failedWith.message },
      }
    }
    if (this.stopping !== undefined) return state('stopping')
    if (this.generation === 0) return state('starting')
    if (this.rebalancing) return state('rebalancing')
    if (pending.length > 0) return { ...state('restoring'), detail: { ...detail, pending } }
    return state('ready', true)
  }

  async start(): Promise<void> {
    if (this.config.http !== undefined) {
      this.http = await OpsServer.start(
        this.config.http,
        {
          health: () => this.health(),
          metrics: async () => ({
            contentType: this.metrics.contentType,
            body: await this.metrics.scrape(),
          }),
        },
        namespace(this.log, 'Http'),
      )
    }
    await retryWithBackoff(
      () => Promise.all([this.producer.connect(), this.admin.connect(), this.consumer.connect()]),
      { what: 'connecting to the brokers', boundMs: this.bounds.startRetryMs, log: this.log },
    )
    await provisionTopics(
      this.admin,
      {
        input: this.config.inputTopic,
        output: this.config.outputTopic,
        deadLetter: this.deadLetterTopic,
        late: this.config.lateTopic,
        changelog: this.delivery === 'exactly-once' ? this.changelogTopic : undefined,
      },
      {
        create: this.config.createTopics ?? true,
        log: this.log,
        retryBoundMs: this.bounds.startRetryMs,
      },
    )
    if (this.delivery === 'exactly-once') this.changelog = await this.startChangelogReader()
    this.watchConsumerActivity()
    this.consumer.on(this.consumer.events.GROUP_JOIN, ({ payload }) => {
      this.generation++
      this.assigned = [...(payload.memberAssignment[this.config.inputTopic] ?? [])].sort(
        (a, b) => a - b,
      )
      this.fenced.clear()
      this.releaseUnassigned()
      this.rebalancing = false
      if (this.generation > 1) this.metrics.rebalances.inc()
      this.log.info({ generation: this.generation, partitions: this.assigned }, 'joined group')
      this.warmup = this.restoreAssigned(this.generation)
    })
    this.consumer.on(this.consumer.events.REBALANCING, () => {
      this.rebalancing = true
    })
    this.consumer.on(this.consumer.events.CRASH, ({ payload }) => {
      if (payload.restart) {
        // kafkajs restarts the consumer and joins again: not ready until then.
        this.rebalancing = true
        return
      }
      // kafkajs gave up: exit (and let the orchestrator restart us) rather than idle silently.
      this.log.fatal({ err: payload.error }, 'consumer crashed and will not restart')
      this.fail(payload.error)
    })
    await this.consumer.subscribe({ topic: this.config.inputTopic, fromBeginning: true })
    // Watching from before the first join: a join that never completes is a stall too.
    this.watchdog.start()
    await this.consumer.run({
      autoCommit: false,
      eachBatchAutoResolve: false,
      partitionsConsumedConcurrently: this.config.concurrency ?? 8,
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

  /**
   * Finishes the batch in flight, leaves the group, frees native state. Idempotent. Each step
   * that waits on the broker is named in `pendingShutdownStep`, so that a stop cut short by
   * --shutdown-timeout can say what it left undone.
   */
  stop(): Promise<void> {
    this.stopping ??= (async () => {
      // From here on /readyz answers 503.
      const started = Date.now()
      this.watchdog.stop()
      this.log.info(
        { partitions: this.assigned },
        'stopping: finishing the batch in flight, then leaving the group',
      )
      clearInterval(this.statsTimer)
      // Stops fetching, waits for the batch in flight (published and committed), sends LeaveGroup.
      this.shutdownStep = 'finishing the batch in flight and leaving the group'
      await this.consumer.disconnect()
      // Aborts a warm-up restore still reading the changelog, then frees what it restored.
      this.shutdownStep = 'stopping the changelog reader'
      await this.changelog?.stop()
      this.shutdownStep = 'ending the restore in progress'
      await this.warmup
      this.shutdownStep = 'disconnecting the producers'
      await Promise.all([...this.owned.keys()].map((partition) => this.release(partition)))
      await Promise.all([this.producer.disconnect(), this.admin.disconnect()])
      this.logStats()
      this.shutdownStep = 'closing the HTTP server'
      await this.http?.close()
      this.shutdownStep = undefined
      this.log.info({ durationMs: Date.now() - started }, 'stopped')
    })()
    return this.stopping
  }

  /** The service cannot go on: /healthz answers 503 and `failed` settles. */
  private fail(error: Error): void {
    this.watchdog.stop()
    this.failedWith ??= error
    this.failure?.(error)
  }

  /**
   * Starts the changelog reader, retrying transient failures of its join within the start bound
   * (a fresh reader each time: a crashed kafkajs consumer is not worth reviving).
   */
  private async startChangelogReader(): Promise<ChangelogReader> {
    let latest: ChangelogReader | undefined
    let started: ChangelogReader
    try {
      started = await retryWithBackoff(
        async () => {
          await latest?.stop().catch(() => undefined)
          const reader = new ChangelogReader(
            this.kafka,
            this.changelogTopic,
            this.config.groupId,
            this.log,
            {
              fetchRetryBoundMs: this.bounds.restoreRetryMs,
              onProgress: () => this.watchdog.touch(),
            },
          )
          latest = reader
          await reader.start()
          return reader
        },
        { what: 'starting the changelog reader', boundMs: this.bounds.startRetryMs, log: this.log },
      )
    } catch (error) {
      // Also an attempt abandoned at the bound, which may still be joining.
      await latest?.stop().catch(() => undefined)
      throw error
    }
    // Failing beats recreating the reader here: a crash kafkajs will not restart means the
    // coordinator stayed unavailable through kafkajs' retries, so a new reader would most likely
    // crash too, and a restarted process starts from a clean, fully checked state (provisioning,
    // fencing, restores) with the orchestrator's backoff. Either way nothing committed is lost.
    void started.died.then((error) => {
      if (this.stopping !== undefined || this.changelog !== started) return
      this.log.fatal({ topic: this.changelogTopic, err: error }, 'changelog reader died; failing')
      this.fail(error)
    })
    return started
  }

  /** Any sign of life of kafkajs' fetch loop resets the stall watchdog. */
  private watchConsumerActivity(): void {
    const events = this.consumer.events
    for (const event of [
      events.FETCH_START,
      events.FETCH,
      events.HEARTBEAT,
      events.GROUP_JOIN,
      events.REBALANCING,
      events.START_BATCH_PROCESS,
      events.END_BATCH_PROCESS,
      events.COMMIT_OFFSETS,
    ]) {
      this.consumer.on(event, () => this.watchdog.touch())
    }
  }

  private stalled(quietMs: number): void {
    if (this.stopping !== undefined || this.failedWith !== undefined) return
    const error = new KwaError(
      `the consumer made no progress for ${Math.round(quietMs / 1000)} s (no fetch, heartbeat, ` +
        `join, batch or restore progress; bound ${Math.round(this.bounds.stallMs / 1000)} s): ` +
        'stuck on the broker',
    )
    this.log.fatal(
      { partitions: this.assigned, quietMs, boundMs: this.bounds.stallMs },
      'consumer stalled; failing',
    )
    this.fail(error)
  }

  /**
   * Restores every partition assigned at a join right away, one after the other, so that the
   * replica is ready (and its first batches fast) without waiting for input. A failure here is
   * only logged: the partition's next batch restores it the usual way.
   */
  private async restoreAssigned(generation: number): Promise<void> {
    for (const partition of this.assigned) {
      if (generation !== this.generation || this.stopping !== undefined) return
      try {
        await this.exclusive(partition, () => this.ownedPartition(partition, undefined))
      } catch (error) {
        if (this.stopping !== undefined) return
        if (isBrokerRetriesExhausted(error)) {
          this.log.fatal(
            { topic: this.config.inputTopic, partition, err: error },
            'restore after join gave up on the broker; failing',
          )
          this.fail(error)
          return
        }
        this.log.info(
          { topic: this.config.inputTopic, partition, err: error },
          'restore after join failed; the next batch restores the partition',
        )
      }
    }
  }

  /** Runs `restore` after any other restore of the same partition (batch or warm-up). */
  private exclusive<T>(partition: number, restore: () => Promise<T>): Promise<T> {
    const previous = this.restoring.get(partition) ?? Promise.resolve()
    const next = previous.then(restore, restore)
    const settled = next.catch(() => undefined)
    this.restoring.set(partition, settled)
    void settled.then(() => {
      if (this.restoring.get(partition) === settled) this.restoring.delete(partition)
    })
    return next
  }

  private async handleBatch(payload: EachBatchPayload): Promise<void> {
    const { batch } = payload
    if (!payload.isRunning() || payload.isStale() || batch.isEmpty()) return
    const firstOffset = batch.firstOffset() ?? '0'
    const owned = await this.exclusive(batch.partition, () =>
      this.ownedPartition(batch.partition, firstOffset),
    )
    if (owned === undefined) return
    const stopTimer = this.metrics.batchDuration.startTimer()
    // Fetches unknown writer schemas; a registry outage fails the batch, to be retried.
    await this.decoder.prepare(batch.messages.map((m) => m.value))
    try {
      const outcome = owned.pipeline.process(batch.messages)
      if (owned.transactor === undefined) await this.publishThenCommit(batch.partition, outcome)
      else await this.commitTransaction(owned.transactor, batch.partition, outcome)
      payload.resolveOffset(outcome.lastOffset)
      addCounts(this.totals, outcome.counts)
      this.recordBatch(batch.highWatermark, batch.partition, outcome)
      const seconds = stopTimer()
      this.log.debug(
        {
          topic: batch.topic,
          partition: batch.partition,
          offset: firstOffset,
          lastOffset: outcome.lastOffset,
          ...outcome.counts,
          ms: Math.round(seconds * 1000),
        },
        'batch committed',
      )
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
        this.fail(error)
        return
      } else if (isBrokerRetriesExhausted(error) || this.failedWith !== undefined) {
        // Gave up on the broker, or failed meanwhile (e.g. the changelog reader died): the CLI
        // stops the replica; kafkajs must not judge (and log) the error as a crash of its own.
        this.log.fatal({ ...where, err: error }, 'batch failed for good; stopping')
        this.consumer.pause([{ topic: this.config.inputTopic }])
        this.fail(error instanceof Error ? error : new KwaError(String(error)))
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
    const stopTimer = this.metrics.commitDuration.startTimer()
    await this.consumer.commitOffsets([
      { topic: this.config.inputTopic, partition, ...outcome.commit },
    ])
    stopTimer()
  }

  /** Exactly once: results, changelog entries and the next offset in one transaction. */
  private async commitTransaction(
    transactor: PartitionTransactor,
    partition: number,
    outcome: BatchOutcome,
  ): Promise<void> {
    const crashProbability = this.config.crashAfterSendProbability ?? 0
    const stopTimer = this.metrics.transactionDuration.startTimer()
    const timings = await transactor.commit({
      records: [
        ...this.records(outcome),
        { topic: this.changelogTopic, messages: outcome.changelog },
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
      onAbort: () => this.metrics.transactionAborts.inc(),
    })
    stopTimer()
    this.metrics.commitDuration.observe(timings.commitSeconds)
  }

  /** The metrics of a committed batch. */
  private recordBatch(highWatermark: string, partition: number, outcome: BatchOutcome): void {
    const m = this.metrics
    const c = outcome.counts
    m.batches.inc()
    m.samplesIn.inc(c.samples)
    m.samplesAggregated.inc(c.aggregated)
    m.samplesLate.inc(c.late)
    m.poisonMessages.inc(c.badMessages)
    m.windowsEmitted.inc(c.windowsClosed)
    for (const [code, samples] of outcome.rejectedByReason) {
      m.samplesRejected.inc({ reason: reasonLabel(rejectionReason(code)) }, samples)
    }
    const lag = BigInt(highWatermark) - BigInt(outcome.nextOffset)
    this.lag.set(partition, lag > 0n ? Number(lag) : 0)
  }

  /**
   * The state of a partition, restored from what is committed when this generation has none.
   * `firstOffset` is that of the batch to process (undefined for the warm-up restore right after
   * a join). Returns undefined when that batch must not be processed: the partition was sought to
   * where its state resumes, or moved away meanwhile.
   */
  private async ownedPartition(
    partition: number,
    firstOffset: string | undefined,
  ): Promise<OwnedPartition | undefined> {
    let owned = this.owned.get(partition)
    if (owned === undefined || owned.generation !== this.generation) {
      owned = await this.restore(partition)
      if (owned === undefined) return undefined
    }
    const expected = owned.expectedOffset
    if (firstOffset === undefined || expected === undefined || firstOffset === expected) {
      if (firstOffset !== undefined) {
        owned.expectedOffset = undefined
        this.seeking.delete(partition)
      }
      return owned
    }
    const where = { topic: this.config.inputTopic, partition, offset: firstOffset }
    if (BigInt(firstOffset) > BigInt(expected) && this.seeking.get(partition) === expected) {
      // Sought there once and the input still starts beyond: control records, or records
      // deleted by retention.
      this.log.warn({ ...where, committed: expected }, 'input resumes beyond the committed offset')
      owned.expectedOffset = undefined
      this.seeking.delete(partition)
      return owned
    }
    // Behind: those records are in the restored state already, so they are never processed,
    // however often kafkajs' own (possibly stale) fetch position comes back there.
    this.log.info(
      { ...where, committed: expected },
      'batch is not at the committed offset; seeking',
    )
    this.seeking.set(partition, expected)
    this.consumer.seek({ topic: this.config.inputTopic, partition, offset: expected })
    return undefined
  }

  /**
   * Restores a partition from what is committed, remembering the offset its state resumes at.
   * Exactly once: fence (initialise the partition's producer), read the changelog, then the
   * group's offset. Undefined when the partition moved away meanwhile.
   */
  private async restore(partition: number): Promise<OwnedPartition | undefined> {
    await this.release(partition)
    if (this.fenced.has(partition)) {
      // Re-initialising now would fence the new owner in turn: wait for the group to rebalance.
      throw new KwaError(`partition ${partition} moved to another replica; awaiting rebalance`, {
        retriable: true,
      })
    }
    const generation = this.generation
    const stopTimer = this.metrics.restoreDuration.startTimer()

    // Exactly once: fence the previous owner first, so nothing it does can commit after we read.
    let transactor: PartitionTransactor | undefined
    if (this.delivery === 'exactly-once') {
      transactor = new PartitionTransactor(
        this.kafka,
        `${this.config.groupId}.${this.config.inputTopic}.${partition}`,
        this.log,
      )
    }
    try {
      if (transactor !== undefined) {
        const fencing = transactor
        // Answered CONCURRENT_TRANSACTIONS while the previous owner's transaction completes.
        await retryWithBackoff(() => fencing.connect(), {
          what: `initialising the producer ${fencing.transactionalId} (fencing)`,
          boundMs: this.bounds.restoreRetryMs,
          log: this.log,
          where: { topic: this.config.inputTopic, partition },
        })
      }
      // After the fence the changelog holds every committed transaction, the last one's input
      // position included; the group's offset may still answer from before it (resumePosition).
      // The offset is read first: read after the changelog, it could come from a transaction of
      // an owner that fenced this one meanwhile, and pass for an operator's reset.
      const committed = await this.fetchCommitted(partition)
      const restored = await this.changelog?.restore(partition, this.bounds.restoreReadMs)
      const position = resumePosition(restored?.nextOffset ?? null, committed?.offset ?? null)
      const where = { topic: this.config.inputTopic, partition, offset: position.offset }
      if (position.reset !== undefined) {
        this.log.warn(
          { ...where, changelog: restored?.nextOffset, committed: committed?.offset },
          position.reset,
        )
      }
      const pipeline = new PartitionPipeline(
        this.config.inputTopic,
        partition,
        this.pipelineOptions,
        restored !== undefined ? { restored } : { checkpoint: committed?.checkpoint ?? null },
        this.log,
      )
      const state: OwnedPartition = {
        pipeline,
        transactor,
        generation,
        expectedOffset: position.offset ?? undefined,
      }
      this.owned.set(partition, state)
      const seconds = stopTimer()
      this.watchdog.touch()
      if (generation !== this.generation && !this.assigned.includes(partition)) {
        // Moved away while restoring: no later join will release it.
        await this.release(partition)
        return undefined
      }
      this.log.info(
        {
          ...where,
          ...(restored !== undefined
            ? { windows: restored.states.seriesKeys.length, streamTime: restored.streamTime }
            : { checkpoint: committed?.checkpoint ?? null }),
          ms: Math.round(seconds * 1000),
        },
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
    const [topic] = await retryWithBackoff(
      () =>
        this.admin.fetchOffsets({ groupId: this.config.groupId, topics: [this.config.inputTopic] }),
      {
        what: `fetching the committed offsets of group ${this.config.groupId}`,
        boundMs: this.bounds.restoreRetryMs,
        log: this.log,
        where: { topic: this.config.inputTopic, partition },
      },
    )
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
    for (const partition of [...this.lag.keys()]) {
      if (!this.assigned.includes(partition)) this.lag.delete(partition)
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
