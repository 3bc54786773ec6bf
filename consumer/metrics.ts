import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client'

/** Readings taken at scrape time (not per batch). */
export interface MetricsSource {
  /** 1 when /readyz answers 200. */
  ready(): boolean
  /** Per owned input partition: open (series, window) aggregates and native bytes held. */
  partitions(): Iterable<{ partition: number; openWindows: number; bytesHeld: number }>
  /** Per input partition this replica owns: high watermark minus the next offset to process. */
  lag(): Iterable<{ topic: string; partition: number; lag: number }>
}

/** Durations of Kafka round trips, in seconds: a few ms on a LAN to seconds under trouble. */
const kafkaBuckets = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30]
/** A restore reads a changelog partition (exactly once) or fetches an offset (at least once). */
const restoreBuckets = [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120]

/**
 * The Prometheus metrics of one aggregator replica, in a registry of its own (several services
 * in one process, as in tests, do not clash). Names are documented in docs/OPERATIONS.md; keep
 * them stable. Node.js runtime metrics (GC pauses as nodejs_gc_duration_seconds, heap, event
 * loop lag, process CPU and memory) come from prom-client's default collectors, unprefixed.
 */
export class ServiceMetrics {
  readonly registry = new Registry()

  readonly samplesIn: Counter
  readonly samplesAggregated: Counter
  readonly samplesLate: Counter
  readonly samplesRejected: Counter<'reason'>
  readonly poisonMessages: Counter
  readonly batches: Counter
  readonly windowsEmitted: Counter
  readonly batchDuration: Histogram
  readonly transactionDuration: Histogram
  readonly commitDuration: Histogram
  readonly rebalances: Counter
  readonly partitionsKept: Counter
  readonly idleAdvances: Counter
  readonly restoredRecords: Counter
  readonly transactionAborts: Counter
  readonly restoreDuration: Histogram

  constructor(source: MetricsSource, options: { defaultMetrics?: boolean } = {}) {
    const registers = [this.registry]
    const counter = <L extends string = never>(name: string, help: string, labelNames?: L[]) =>
      new Counter<L>({ name, help, labelNames: labelNames ?? [], registers })
    const histogram = (name: string, help: string, buckets: number[]) =>
      new Histogram({ name, help, buckets, registers })

    this.samplesIn = counter('kwa_samples_in_total', 'Samples of decoded input messages')
    this.samplesAggregated = counter(
      'kwa_samples_aggregated_total',
      'Samples added to at least one open window',
    )
    this.samplesLate = counter(
      'kwa_samples_late_total',
      'Samples whose windows had all closed (past the grace period)',
    )
    this.samplesRejected = counter(
      'kwa_samples_rejected_total',
      'Samples rejected one by one (to the dead-letter topic), by reason',
      ['reason'],
    )
    this.poisonMessages = counter(
      'kwa_poison_messages_total',
      'Input messages that could not be decoded (to the dead-letter topic)',
    )
    this.batches = counter('kwa_batches_total', 'Input batches processed and committed')
    this.windowsEmitted = counter(
      'kwa_windows_emitted_total',
      'Closed windows published to the output topic',
    )
    this.batchDuration = histogram(
      'kwa_batch_duration_seconds',
      'Time to process one input batch: decode, aggregate, publish and commit',
      kafkaBuckets,
    )
    this.transactionDuration = histogram(
      'kwa_transaction_duration_seconds',
      'Exactly once: time of one batch transaction, retries included',
      kafkaBuckets,
    )
    this.commitDuration = histogram(
      'kwa_commit_duration_seconds',
      'Time to commit a batch: offsets (at least once) or sendOffsets and commit (exactly once)',
      kafkaBuckets,
    )
    this.rebalances = counter(
      'kwa_rebalances_total',
      'Consumer group rebalances this replica went through (joins after its first)',
    )
    this.partitionsKept = counter(
      'kwa_partitions_kept_total',
      'Partitions that stayed with this replica across a rebalance and kept their state (no restore)',
    )
    this.idleAdvances = counter(
      'kwa_idle_advances_total',
      'Idle close: stream time advances of quiet partitions by the wall clock (each closed windows)',
    )
    this.restoredRecords = counter(
      'kwa_restored_records_total',
      'Exactly once: changelog records read by restores',
    )
    this.transactionAborts = counter(
      'kwa_transaction_aborts_total',
      'Exactly once: transactions aborted (retried, or failed and restored from the changelog)',
    )
    this.restoreDuration = histogram(
      'kwa_restore_duration_seconds',
      'Time to restore one partition: fence, committed offset, changelog read',
      restoreBuckets,
    )

    new Gauge({
      name: 'kwa_ready',
      help: '1 when the replica has joined the group and restored every assigned partition',
      registers,
      collect() {
        this.set(source.ready() ? 1 : 0)
      },
    })
    new Gauge({
      name: 'kwa_windows_open',
      help: 'Open (series, window) aggregates per owned input partition',
      labelNames: ['partition'],
      registers,
      collect() {
        this.reset()
        for (const p of source.partitions()) this.set({ partition: p.partition }, p.openWindows)
      },
    })
    new Gauge({
      name: 'kwa_native_bytes_held',
      help: 'Estimated native (Rust) memory held by window state per owned input partition',
      labelNames: ['partition'],
      registers,
      collect() {
        this.reset()
        for (const p of source.partitions()) this.set({ partition: p.partition }, p.bytesHeld)
      },
    })
    new Gauge({
      name: 'kwa_consumer_lag',
      help: 'Input records not yet processed per owned partition (high watermark - next offset), as of the last batch',
      labelNames: ['topic', 'partition'],
      registers,
      collect() {
        this.reset()
        for (const l of source.lag()) this.set({ topic: l.topic, partition: l.partition }, l.lag)
      },
    })

    if (options.defaultMetrics ?? true) collectDefaultMetrics({ register: this.registry })
  }

  /** The Prometheus text exposition of every metric. */
  scrape(): Promise<string> {
    return this.registry.metrics()
  }

  get contentType(): string {
    return this.registry.contentType
  }
}

/** The metric label of a native rejection reason: `non_finite_value` for non-finite-value. */
export const reasonLabel = (reason: string): string => reason.replaceAll('-', '_')
