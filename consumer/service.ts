import type { Admin, Consumer, EachBatchPayload, Kafka, Message, Producer } from 'kafkajs'
import { PartitionAssigners, Partitioners } from 'kafkajs'
import { stickyAssigner } from './assigner'
import { ChangelogReader, RESTORE_READ_TIMEOUT_MS } from './changelog'
import { TelemetryDecoder, type TelemetryDecoderOptions } from './decode'
import {
  aclResource,
  asAuthorizationError,
  isAuthorizationError,
  isPoisonMessageError,
  KwaError,
} from './errors'
import { rejectionReason, rejectionReasons } from './dead-letter'
import { OpsServer, type Health } from './http'
import { reasonLabel, ServiceMetrics } from './metrics'
import { provisionTopics } from './topics'
import { decodeCheckpoint, type Checkpoint } from './checkpoint'
import { createKafka, type KafkaSecurity } from './kafka'
import { checkTls } from './tls'
import { namespace, type Logger } from './logger'
import { ResultRecords } from './results'
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
import {
  FencedError,
  PartitionTransactor,
  sendResults,
  type TransactionTimings,
} from './transactions'
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
  /**
   * Exactly once: how long a partition gathers batches into one transaction (default 1000 ms;
   * 0: a transaction per batch). A window updated by many batches is written to the changelog once
   * per transaction; results are published when it commits.
   */
  commitIntervalMs?: number
  /**
   * Idle close: a partition that got no input for this long has its stream time advanced by the
   * wall clock (idleStreamTime), so its last windows close. Undefined: off.
   */
  idleCloseMs?: number
  /** Per-window quantiles (DDSketch) and their relative accuracy; undefined: none. */
  quantiles?: PipelineOptions['quantiles']
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
  /** The group generation this state was restored, or proven current, in. */
  generation: number
  /**
   * Restored (or kept) right after a join, before any batch: the offset its state resumes at. The
   * first batch must start there (else the partition is sought there).
   */
  expectedOffset?: string
  /** Exactly once: batches processed but not committed yet (one transaction per interval). */
  pending?: PendingCommit
  /** Commit the next batch at once: the first after a restore or a rebalance (progress shows). */
  commitNext?: boolean
  /**
   * Exactly once: the changelog partition's end offset after this replica's last transaction (or
   * its restore). Unchanged after a fence at the next generation, it proves that nobody committed
   * since: the state in memory is what is committed.
   */
  changelogEnd?: bigint
  /** Exactly once: where the changelog's last snapshot starts, when known. */
  snapshotStart?: bigint
  /** At least once: the offset and checkpoint this replica committed last (or restored at). */
  lastCommit?: { offset: string; metadata: string }
  /** When this replica last got input for the partition (or restored it), and its stream time. */
  quiet: QuietSince
}

/** The wall time (Date.now()) a partition's input last came, and its stream time then. */
export interface QuietSince {
  since: number
  streamTime: number | null
}

/**
 * Idle close: the stream time of a partition quiet since `quiet`, at wall time `now`. It moves
 * with the wall clock from where the last input left it, S + (now - since), but never beyond
 * now - maxFutureSkew: samples may be stamped that far ahead of the wall clock, and a producer
 * whose clock is as far behind must not find its windows closed. Null when it would not move
 * (no sample yet, or the bound is behind S). The caller applies it once idle-close has elapsed.
 */
export function idleStreamTime(
  quiet: QuietSince,
  now: number,
  maxFutureSkewMs: number | null | undefined,
): number | null {
  if (quiet.streamTime === null) return null
  const byClock = quiet.streamTime + (now - quiet.since)
  const target = Math.floor(
    maxFutureSkewMs == null ? byClock : Math.min(byClock, now - maxFutureSkewMs),
  )
  return target > quiet.streamTime ? target : null
}

/** Exactly once: what the batches since the last transaction publish, and what they did. */
interface PendingCommit {
  results: ResultRecords
  deadLetters: Message[]
  late: Message[]
  nextOffset: string
  counts: BatchCounts
  rejectedByReason: Map<number, number>
  batches: number
  /** When its first batch was processed (Date.now()). */
  since: number
}

/** More pending output than this commits at once, whatever the interval. */
const MAX_PENDING_RECORDS = 100_000
/**
 * Exactly once: a partition that has caught up with its input (its last batch reached the high
 * watermark) and got nothing more for this long commits without waiting out the interval: the
 * interval exists to gather many batches into one transaction, and no more are coming. Under
 * load the input never pauses this long, so transactions stay one per interval.
 */
const CAUGHT_UP_COMMIT_MS = 100
/**
 * A transaction writes a snapshot (every open window) once the changelog holds this many times the
 * open windows since the last one: a restore then reads at most about 1 + SNAPSHOT_EVERY records
 * per open window, and snapshots add at most 1 / SNAPSHOT_EVERY to what is written.
 */
const SNAPSHOT_EVERY = 2
/** ... counting at least this many windows, so that a small state is not snapshotted each time. */
const MIN_SNAPSHOT_WINDOWS = 1000
/**
 * A gap between two fetches longer than this (the consumer waits at most 500 ms per fetch) means
 * consumption stalled: idle close starts every partition's quiet period again.
 */
const FETCH_GAP_MS = 5_000
/** Partitions restored at once after a join. */
const RESTORE_CONCURRENCY = 8

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
  /** Partitions whose last batch reached the high watermark (see CAUGHT_UP_COMMIT_MS). */
  private readonly caughtUp = new Set<number>()
  /** Restores of the partitions assigned at the last join (so readiness never waits on input). */
  private warmup: Promise<void> | undefined
  /** Per partition, the work in progress (batch, restore or commit): one at a time. */
  private readonly restoring = new Map<number, Promise<unknown>>()
  /** Exactly once: commits the partitions whose commit interval has elapsed. */
  private commitTimer: NodeJS.Timeout | undefined
  private idleTimer: NodeJS.Timeout | undefined
  /** When the consumer last completed a fetch (Date.now()); see fetched(). */
  private lastFetchAt = Date.now()
  /** Partitions with an idle advance queued or running. */
  private readonly idling = new Set<number>()
  private readonly commitIntervalMs: number

  constructor(
    private readonly config: ServiceConfig,
    logger: Logger,
  ) {
    this.log = namespace(logger, 'Aggregator')
    this.delivery = config.delivery ?? 'exactly-once'
    this.changelogTopic = config.changelogTopic ?? defaultChangelogTopic(config.groupId)
    this.deadLetterTopic = config.deadLetterTopic ?? defaultDeadLetterTopic(config.inputTopic)
    this.commitIntervalMs = config.commitIntervalMs ?? 1000
    this.decoder = new TelemetryDecoder(config.decoding)
    this.pipelineOptions = {
      window: config.window,
      decoder: this.decoder,
      onPoison: config.onPoison,
      routeLate: config.lateTopic !== undefined,
      quantiles: config.quantiles,
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
      // Sticky: a rebalance moves only the partitions it must, and the others keep their state.
      // Round robin stays as a fallback the whole group can agree on during an upgrade.
      partitionAssigners: [
        stickyAssigner(() => ({ [config.inputTopic]: [...this.owned.keys()] })),
        PartitionAssigners.roundRobin,
      ],
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
    await checkTls(this.config.brokers, this.config.security?.ssl, this.config.clientId)
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
        window: this.config.window,
      },
      {
        create: this.config.createTopics ?? true,
        log: this.log,
        retryBoundMs: this.bounds.startRetryMs,
      },
    )
    if (this.delivery === 'exactly-once') this.changelog = await this.startChangelogReader()
    this.watchConsumerActivity()
    this.watchCaughtUp()
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
      // Commit what is pending now: a partition that moves hands over all it processed.
      void this.commitAll()
    })
    this.consumer.on(this.consumer.events.CRASH, ({ payload }) => {
      const refused = this.refusedInput(payload.error, 'consume the input')
      if (payload.restart && refused === undefined) {
        // kafkajs restarts the consumer and joins again: not ready until then.
        this.rebalancing = true
        return
      }
      // kafkajs gave up, or the broker refused for want of an ACL (which no restart cures):
      // exit (and let the orchestrator restart us) rather than idle silently.
      const error = refused ?? payload.error
      this.log.fatal({ err: error }, 'consumer crashed; failing')
      this.fail(error)
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
    if (this.delivery === 'exactly-once') {
      this.commitTimer = setInterval(
        () => this.commitDue(),
        Math.max(20, Math.min(250, this.commitIntervalMs / 4, CAUGHT_UP_COMMIT_MS / 2)),
      )
      this.commitTimer.unref()
    }
    const idleMs = this.config.idleCloseMs
    if (idleMs !== undefined) {
      this.idleTimer = setInterval(
        () => this.closeIdle(idleMs),
        Math.max(20, Math.min(1000, idleMs / 4)),
      )
      this.idleTimer.unref()
    }
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
      clearInterval(this.commitTimer)
      clearInterval(this.idleTimer)
      // Commits what is pending (and each batch from now on at once), so the next owner resumes
      // where this replica stopped.
      this.shutdownStep = 'committing pending transactions'
      await this.commitAll()
      // Stops fetching, waits for the batch in flight (published and committed), sends LeaveGroup.
      this.shutdownStep = 'finishing the batch in flight and leaving the group'
      await this.consumer.disconnect()
      this.shutdownStep = 'committing pending transactions'
      await this.commitAll()
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

  /**
   * Which partitions have caught up with their input (see CAUGHT_UP_COMMIT_MS), by kafkajs' lag
   * after each batch. The event also comes for fetches that held only transaction markers, which
   * never reach eachBatch, and the lag counts them: a topic written in transactions ends with one.
   */
  private watchCaughtUp(): void {
    this.consumer.on(this.consumer.events.END_BATCH_PROCESS, ({ payload }) => {
      if (payload.offsetLag === '0') this.caughtUp.add(payload.partition)
      else this.caughtUp.delete(payload.partition)
    })
  }

  /** Any sign of life of kafkajs' fetch loop resets the stall watchdog. */
  private watchConsumerActivity(): void {
    const events = this.consumer.events
    this.consumer.on(events.FETCH, () => this.fetched())
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

  /**
   * Idle close counts a partition as quiet only while the consumer was fetching: after a gap in
   * fetches (a rebalance, a broker outage, a long batch), input may be waiting in the topic, so
   * every owned partition's quiet period starts again.
   */
  private fetched(): void {
    const now = Date.now()
    if (now - this.lastFetchAt > FETCH_GAP_MS) {
      for (const owned of this.owned.values()) {
        owned.quiet = { since: now, streamTime: owned.pipeline.streamTime }
      }
    }
    this.lastFetchAt = now
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
   * Right after a join, makes every assigned partition's state current: kept when it is proven
   * to be what is committed, restored otherwise; several partitions at once, so that the replica
   * is ready (and its first batches fast) without waiting for input. A failure here is only
   * logged: the partition's next batch restores it the usual way.
   */
  private async restoreAssigned(generation: number): Promise<void> {
    const queue = [...this.assigned]
    const worker = async (): Promise<void> => {
      for (let partition = queue.shift(); partition !== undefined; partition = queue.shift()) {
        if (generation !== this.generation || this.stopping !== undefined) return
        try {
          await this.exclusive(partition, () => this.ownedPartition(partition, undefined))
        } catch (error) {
          if (this.stopping !== undefined) return
          if (isFatal(error)) {
            this.log.fatal(
              { topic: this.config.inputTopic, partition, err: error },
              'restore after join failed for good; failing',
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
    await Promise.all(Array.from({ length: RESTORE_CONCURRENCY }, worker))
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
    const lastOffset = await this.exclusive(batch.partition, () => this.processBatch(batch))
    if (lastOffset === undefined) return
    payload.resolveOffset(lastOffset)
    await payload.heartbeat()
  }

  /**
   * consume → decode → aggregate → publish → commit, for one batch; returns its last offset, or
   * undefined when it is not processed (see ownedPartition) or failed for good. Exactly once, the
   * batch joins the partition's pending transaction, which commits once the commit interval has
   * elapsed (here or by the commit timer), at once while stopping or rebalancing.
   */
  private async processBatch(batch: EachBatchPayload['batch']): Promise<string | undefined> {
    const firstOffset = batch.firstOffset() ?? '0'
    const owned = await this.ownedPartition(batch.partition, firstOffset)
    if (owned === undefined) return undefined
    const stopTimer = this.metrics.batchDuration.startTimer()
    // Fetches unknown writer schemas; a registry outage fails the batch, to be retried.
    await this.decoder.prepare(batch.messages.map((m) => m.value))
    try {
      const outcome = owned.pipeline.process(batch.messages)
      owned.quiet = { since: Date.now(), streamTime: owned.pipeline.streamTime }
      if (owned.transactor === undefined) {
        await this.publishThenCommit(batch.partition, outcome)
        owned.lastCommit = outcome.commit
        addCounts(this.totals, outcome.counts)
        this.recordCommitted(outcome.counts, outcome.rejectedByReason, 1)
      } else {
        this.addPending(owned, outcome)
        if (this.commitIsDue(batch.partition, owned))
          await this.commitPending(batch.partition, owned)
      }
      this.recordLag(batch.highWatermark, batch.partition, outcome.nextOffset)
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
        owned.pending === undefined ? 'batch committed' : 'batch processed',
      )
      return outcome.lastOffset
    } catch (error) {
      const where = { topic: batch.topic, partition: batch.partition, offset: firstOffset }
      if (this.batchFailed(where, error)) throw error
      return undefined
    }
  }

  /**
   * A batch or a commit failed: the state now runs ahead of what is committed, so it is dropped
   * (the next batch restores it). Returns whether to throw the error to kafkajs (which then
   * fetches the partition again); false when the service fails instead.
   */
  private batchFailed(
    where: { topic: string; partition: number; offset?: string },
    error: unknown,
  ): boolean {
    void this.release(where.partition)
    if (error instanceof FencedError) this.fenced.add(where.partition)
    if (isRebalancing(error)) {
      this.log.info(where, 'rebalance during batch; partition will be restored')
    } else if (error instanceof FencedError) {
      this.log.warn({ ...where, err: error }, 'fenced by a newer owner; rejoining the group')
    } else if (isPoisonMessageError(error)) {
      this.log.fatal({ ...where, err: error }, 'poison message; stopping (--on-poison fail)')
      this.consumer.pause([{ topic: this.config.inputTopic }])
      this.fail(error)
      return false
    } else if (isFatal(error) || this.failedWith !== undefined) {
      // Gave up on the broker, refused for want of an ACL, or failed meanwhile (e.g. the
      // changelog reader died): the CLI stops the replica; kafkajs must not judge (and log) the
      // error as a crash of its own.
      this.log.fatal({ ...where, err: error }, 'batch failed for good; stopping')
      this.consumer.pause([{ topic: this.config.inputTopic }])
      this.fail(error instanceof Error ? error : new KwaError(String(error)))
      return false
    } else {
      this.log.error({ ...where, err: error }, 'batch failed; partition will be restored')
    }
    return true
  }

  /** Exactly once: adds a processed batch (or an idle advance: 0 batches) to the next transaction. */
  private addPending(owned: OwnedPartition, outcome: BatchOutcome, batches = 1): void {
    const pending = (owned.pending ??= {
      results: new ResultRecords(this.pipelineOptions.quantiles?.quantiles),
      deadLetters: [] as Message[],
      late: [] as Message[],
      nextOffset: outcome.nextOffset,
      counts: emptyCounts(),
      rejectedByReason: new Map(),
      batches: 0,
      since: Date.now(),
    })
    pending.results.addAll(outcome.results)
    for (const record of outcome.deadLetters) pending.deadLetters.push(record)
    for (const record of outcome.late) pending.late.push(record)
    pending.nextOffset = outcome.nextOffset
    addCounts(pending.counts, outcome.counts)
    for (const [code, n] of outcome.rejectedByReason)
      pending.rejectedByReason.set(code, (pending.rejectedByReason.get(code) ?? 0) + n)
    pending.batches += batches
  }

  private commitIsDue(partition: number, owned: OwnedPartition): boolean {
    const pending = owned.pending
    if (pending === undefined) return false
    const now = Date.now()
    return (
      owned.commitNext === true ||
      this.stopping !== undefined ||
      this.rebalancing ||
      now - pending.since >= this.commitIntervalMs ||
      (this.caughtUp.has(partition) && now - owned.quiet.since >= CAUGHT_UP_COMMIT_MS) ||
      pending.results.count + pending.deadLetters.length + pending.late.length >=
        MAX_PENDING_RECORDS
    )
  }

  /**
   * Exactly once: commits the partition's pending batches in one transaction: their results,
   * dead letters and late records, the changelog records of every window they touched (once),
   * and the next input offset. On failure the caller drops the partition's state.
   */
  private async commitPending(partition: number, owned: OwnedPartition): Promise<void> {
    const pending = owned.pending
    const transactor = owned.transactor
    if (pending === undefined || transactor === undefined) return
    owned.pending = undefined
    owned.commitNext = false
    // A snapshot when a restore would otherwise read more than SNAPSHOT_EVERY times the open
    // windows since the last one (see consumer/changelog.ts).
    const { snapshotStart, changelogEnd } = owned
    const snapshot =
      snapshotStart === undefined ||
      changelogEnd === undefined ||
      Number(changelogEnd - snapshotStart) >=
        SNAPSHOT_EVERY * Math.max(owned.pipeline.stats.openWindows, MIN_SNAPSHOT_WINDOWS)
    const { windows, position } = owned.pipeline.takeChangelog(snapshot)
    const written = await this.commitTransaction(
      transactor,
      partition,
      pending,
      snapshot
        ? {
            records: windows.messages(),
            // The snapshot starts at its first record; with none, at the position record.
            last: (first) => position(first === undefined ? -1 : Number(first)),
          }
        : { records: [...windows.messages(), position(Number(snapshotStart))] },
    )
    owned.changelogEnd = written.endOffset
    if (snapshot) owned.snapshotStart = written.firstTracked
    addCounts(this.totals, pending.counts)
    this.recordCommitted(pending.counts, pending.rejectedByReason, pending.batches)
  }

  /** Commits the partitions whose commit interval has elapsed (the commit timer). */
  private commitDue(): void {
    for (const [partition, owned] of this.owned) {
      if (this.commitIsDue(partition, owned)) void this.commitInBackground(partition)
    }
  }

  /** Commits every partition's pending batches now (rebalance, stop). */
  private async commitAll(): Promise<void> {
    await Promise.all(
      [...this.owned]
        .filter(([, owned]) => owned.pending !== undefined)
        .map(([partition]) => this.commitInBackground(partition)),
    )
  }

  /** Commits a partition's pending batches after the work in progress on it; never throws. */
  private commitInBackground(partition: number): Promise<void> {
    return this.inBackground(partition, 'commit', async (owned) => {
      if (owned.pending !== undefined) await this.commitPending(partition, owned)
    })
  }

  /**
   * Runs `work` on the partition's state after the work in progress on it; never throws: a
   * failure drops the state like a failed batch, unless the partition was released meanwhile.
   */
  private inBackground(
    partition: number,
    what: string,
    work: (owned: OwnedPartition) => Promise<void>,
  ): Promise<void> {
    let owned: OwnedPartition | undefined
    return this.exclusive(partition, async () => {
      owned = this.owned.get(partition)
      if (owned !== undefined) await work(owned)
    }).catch((error: unknown) => {
      const where = { topic: this.config.inputTopic, partition }
      if (this.owned.get(partition) !== owned) {
        // Released meanwhile (moved away at a rebalance): its producer was disconnected under it.
        this.log.debug({ ...where, err: error }, `${what} of a partition given up failed`)
        return
      }
      this.batchFailed(where, error)
    })
  }

  /**
   * Idle close (--idle-close): advances the stream time of every partition quiet for `idleMs` on
   * the wall clock (idleStreamTime) when that closes a window, committed like a batch.
   */
  private closeIdle(idleMs: number): void {
    if (this.rebalancing || this.stopping !== undefined) return
    for (const [partition, owned] of this.owned) {
      if (this.idling.has(partition) || this.idleTarget(owned, idleMs) === null) continue
      this.idling.add(partition)
      void this.advanceIdle(partition, idleMs).finally(() => this.idling.delete(partition))
    }
  }

  /** The stream time an idle advance of the partition would move to now, if one is due. */
  private idleTarget(owned: OwnedPartition, idleMs: number): number | null {
    const now = Date.now()
    if (owned.generation !== this.generation || now - owned.quiet.since < idleMs) return null
    const target = idleStreamTime(owned.quiet, now, this.pipelineOptions.maxFutureSkewMs)
    const due = owned.pipeline.nextCloseTime
    return target === null || due === null || target < due ? null : target
  }

  /**
   * Idle close of one partition, after the work in progress on it (decided again then: input
   * that was queued meanwhile means it is not quiet any more): the windows due are published and
   * the advance committed, exactly once in one transaction (results, tombstones, the position
   * record with the new stream time; the input offset unchanged), at least once as results and
   * then the checkpoint. Never throws; a failure drops the state like a failed batch.
   */
  private advanceIdle(partition: number, idleMs: number): Promise<void> {
    return this.inBackground(partition, 'idle advance', async (owned) => {
      if (this.rebalancing || this.stopping !== undefined) return
      const streamTime = this.idleTarget(owned, idleMs)
      if (streamTime === null) return
      const outcome = owned.pipeline.advanceIdle(streamTime)
      if (outcome === undefined) return
      if (owned.transactor === undefined) {
        await this.publishThenCommit(partition, outcome)
        owned.lastCommit = outcome.commit
        addCounts(this.totals, outcome.counts)
        this.recordCommitted(outcome.counts, outcome.rejectedByReason, 0)
      } else {
        this.addPending(owned, outcome, 0)
        await this.commitPending(partition, owned)
      }
      this.metrics.idleAdvances.inc()
      this.log.info(
        {
          topic: this.config.inputTopic,
          partition,
          offset: outcome.nextOffset,
          streamTime,
          windowsClosed: outcome.counts.windowsClosed,
        },
        'idle partition: stream time advanced by the wall clock',
      )
    })
  }

  /** Everything a batch publishes, by topic. */
  private records(outcome: {
    results: ResultRecords
    deadLetters: Message[]
    late: Message[]
  }): { topic: string; messages: Message[] }[] {
    const records = [
      { topic: this.config.outputTopic, messages: outcome.results.messages() },
      { topic: this.deadLetterTopic, messages: outcome.deadLetters },
    ]
    if (this.config.lateTopic !== undefined) {
      records.push({ topic: this.config.lateTopic, messages: outcome.late })
    }
    return records.filter((r) => r.messages.length > 0)
  }

  /** At least once: publish (acks=all), then commit the checkpointed offset. */
  private async publishThenCommit(partition: number, outcome: BatchOutcome): Promise<void> {
    await sendResults(this.producer, this.records(outcome), (records) =>
      this.log.warn(
        { records },
        'results over the broker message size limit: sending them in smaller requests',
      ),
    )
    const stopTimer = this.metrics.commitDuration.startTimer()
    await this.consumer
      .commitOffsets([{ topic: this.config.inputTopic, partition, ...outcome.commit }])
      .catch((error: unknown) => {
        throw (
          this.refusedInput(error, `commit the offsets of group ${this.config.groupId}`) ?? error
        )
      })
    stopTimer()
  }

  /** Exactly once: results, changelog entries and the next offset in one transaction. */
  private async commitTransaction(
    transactor: PartitionTransactor,
    partition: number,
    pending: PendingCommit,
    changelog: { records: Message[]; last?: (first: bigint | undefined) => Message },
  ): Promise<TransactionTimings> {
    const crashProbability = this.config.crashAfterSendProbability ?? 0
    const stopTimer = this.metrics.transactionDuration.startTimer()
    const timings = await transactor.commit({
      records: [
        ...this.records(pending),
        { topic: this.changelogTopic, messages: changelog.records },
      ],
      last: changelog.last,
      offsets: {
        consumerGroupId: this.config.groupId,
        topic: this.config.inputTopic,
        partition,
        offset: pending.nextOffset,
      },
      track: { topic: this.changelogTopic, partition },
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
    return timings
  }

  /** The metrics of committed batches. */
  private recordCommitted(
    c: BatchCounts,
    rejectedByReason: Map<number, number>,
    batches: number,
  ): void {
    const m = this.metrics
    m.batches.inc(batches)
    m.samplesIn.inc(c.samples)
    m.samplesAggregated.inc(c.aggregated)
    m.samplesLate.inc(c.late)
    m.poisonMessages.inc(c.badMessages)
    m.windowsEmitted.inc(c.windowsClosed)
    for (const [code, samples] of rejectedByReason) {
      m.samplesRejected.inc({ reason: reasonLabel(rejectionReason(code)) }, samples)
    }
  }

  private recordLag(highWatermark: string, partition: number, nextOffset: string): void {
    const lag = BigInt(highWatermark) - BigInt(nextOffset)
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
    if (owned !== undefined && owned.generation !== this.generation) {
      // Kept across the rebalance (sticky assignment): no restore if it is still what is committed.
      if (!(await this.keep(partition, owned))) owned = undefined
    }
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
   * Whether a partition's state in memory, from an earlier generation, is still what is committed,
   * so that it need not be restored. Exactly once: its pending batches commit, then the partition
   * is fenced again (a new producer: nothing from an earlier epoch commits after this), and the
   * changelog's end must be where this replica's last transaction (or restore) left it. Any
   * transaction of another owner since then, committed or aborted, moved it. (The group's committed
   * offset proves nothing here: right after a fence it may still be from before the last
   * transaction, see resumePosition.) At least once: the group's committed offset and checkpoint
   * must be the ones this replica committed last. Kept, it resumes where it left off.
   */
  private async keep(partition: number, owned: OwnedPartition): Promise<boolean> {
    const where = { topic: this.config.inputTopic, partition }
    const started = Date.now()
    let transactor: PartitionTransactor | undefined
    try {
      if (owned.transactor !== undefined) {
        if (owned.pending !== undefined) await this.commitPending(partition, owned)
        if (owned.changelogEnd === undefined || this.changelog === undefined) return false
        transactor = await this.fence(partition)
        const { high } = await this.changelog.offsets(partition)
        if (high !== owned.changelogEnd) {
          this.log.info(
            { ...where, changelogEnd: String(high), expected: String(owned.changelogEnd) },
            'changelog moved since this replica last committed; restoring',
          )
          return false
        }
        void owned.transactor.disconnect().catch(() => undefined)
        owned.transactor = transactor
        transactor = undefined
      } else {
        const committed = await this.fetchCommitted(partition)
        const last = owned.lastCommit
        if (
          last === undefined ||
          committed?.offset !== last.offset ||
          committed.metadata !== last.metadata
        )
          return false
      }
    } catch (error) {
      if (isFatal(error)) throw error
      this.log.info({ ...where, err: error }, 'could not prove the state current; restoring')
      return false
    } finally {
      await transactor?.disconnect().catch(() => undefined)
    }
    owned.generation = this.generation
    // The group was not consuming while it rebalanced: quiet starts again.
    owned.quiet = { since: Date.now(), streamTime: owned.pipeline.streamTime }
    owned.expectedOffset = owned.pipeline.position ?? owned.expectedOffset
    owned.commitNext = true
    this.metrics.partitionsKept.inc()
    this.watchdog.touch()
    this.log.info(
      { ...where, offset: owned.expectedOffset, ms: Date.now() - started },
      'partition kept',
    )
    return true
  }

  /**
   * Initialises a new transactional producer for the partition: fences every earlier one (a
   * previous owner's open transaction is aborted, and nothing it sends commits any more).
   */
  private async fence(partition: number): Promise<PartitionTransactor> {
    const transactor = new PartitionTransactor(
      this.kafka,
      `${this.config.groupId}.${this.config.inputTopic}.${partition}`,
      this.log,
    )
    try {
      // Answered CONCURRENT_TRANSACTIONS while the previous owner's transaction completes.
      await retryWithBackoff(() => transactor.connect(), {
        what: `initialising the producer ${transactor.transactionalId} (fencing)`,
        boundMs: this.bounds.restoreRetryMs,
        log: this.log,
        where: { topic: this.config.inputTopic, partition },
      })
      return transactor
    } catch (error) {
      await transactor.disconnect().catch(() => undefined)
      throw error
    }
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
    const began = Date.now()
    const transactor = this.delivery === 'exactly-once' ? await this.fence(partition) : undefined
    const fenced = Date.now()
    try {
      // After the fence the changelog holds every committed transaction, the last one's input
      // position included; the group's offset may still answer from before it (resumePosition).
      // The offset is read first: read after the changelog, it could come from a transaction of
      // an owner that fenced this one meanwhile, and pass for an operator's reset.
      const committed = await this.fetchCommitted(partition)
      const fetched = Date.now()
      const restored = await this.changelog?.restore(
        partition,
        this.bounds.restoreReadMs,
        this.config.window,
      )
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
        {
          ...(restored !== undefined
            ? { restored }
            : { checkpoint: committed?.checkpoint ?? null }),
          resumeAt: position.offset,
        },
        this.log,
      )
      const state: OwnedPartition = {
        pipeline,
        transactor,
        generation,
        expectedOffset: position.offset ?? undefined,
        commitNext: true,
        quiet: { since: Date.now(), streamTime: pipeline.streamTime },
        changelogEnd: restored?.endOffset,
        snapshotStart: restored?.snapshotStart,
        lastCommit:
          committed === undefined
            ? undefined
            : { offset: committed.offset, metadata: committed.metadata },
      }
      this.owned.set(partition, state)
      const seconds = stopTimer()
      this.metrics.restoredRecords.inc(restored?.records ?? 0)
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
            ? {
                windows: restored.states.seriesKeys.length,
                records: restored.records,
                streamTime: restored.streamTime,
                // Where the time went: fencing, the group's offset, the changelog read.
                steps: {
                  fence: fenced - began,
                  offset: fetched - fenced,
                  read: Date.now() - fetched,
                },
              }
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
  ): Promise<{ offset: string; metadata: string; checkpoint: Checkpoint | null } | undefined> {
    const [topic] = await retryWithBackoff(
      () =>
        this.admin
          .fetchOffsets({ groupId: this.config.groupId, topics: [this.config.inputTopic] })
          .catch((error: unknown) => {
            throw (
              this.refusedInput(
                error,
                `fetch the committed offsets of group ${this.config.groupId}`,
              ) ?? error
            )
          }),
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
    return { offset: entry.offset, metadata: entry.metadata ?? '', checkpoint }
  }

  /** A refusal of what consuming takes (Read on the input and on the group), named. */
  private refusedInput(error: unknown, doing: string) {
    return asAuthorizationError(error, doing, {
      topic: { operation: 'Read', resource: aclResource.topic(this.config.inputTopic) },
      group: { operation: 'Read', resource: aclResource.group(this.config.groupId) },
    })
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
    for (const partition of [...this.caughtUp]) {
      if (!this.assigned.includes(partition)) this.caughtUp.delete(partition)
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

/** Errors after which the replica stops rather than restores and retries: they would recur. */
const isFatal = (error: unknown): error is KwaError =>
  isBrokerRetriesExhausted(error) || isAuthorizationError(error)
