// What a scenario body works with (Scenario: replicas, input, faults, waits), and its result types.
import path from 'node:path'
import { decodeWindowAggregate } from '../../consumer/schemas'
import { type LocalBroker } from '../../scripts/local-kafka'
import { referenceWithIdle } from '../helpers/idle-reference'
import { mulberry32, windowId } from '../reference'
import { PARTITIONS, REPO_ROOT, WINDOW, pollUntil, seconds, type Delivery } from './common'
import { CpuHog } from './faults'
import { InputProducer, defaultInput, type InputOptions, type InputStats } from './input-producer'
import { lastStableOffsets } from './kafka-clients'
import { Replica, type Readiness, type ReplicaLaunch } from './replicas'
import { TopicReader, readToEnd } from './topic-reader'
import { inputSteps, type IdleResume, type Verification, type VerifyOptions } from './verify'

// ---------------------------------------------------------------------------------------------
// Scenario runs
// ---------------------------------------------------------------------------------------------

export interface ScenarioOptions {
  input?: Partial<InputOptions>
  verify?: Partial<VerifyOptions>
  /**
   * Replicas run with `--idle-close <idleCloseMs>` and a late topic; the input is held until the
   * body calls startInput(); the verifier models the idle close (IdleModel, with the pauses the
   * body recorded by resumeInput()) and checks the late topic. Only the scenario built for it
   * sets this: with idle close, any input stall longer than it (a broker outage, a starved
   * producer) closes windows by the wall clock, which a recomputation from the input alone
   * cannot know.
   */
  idleClose?: { idleCloseMs: number }
}

export interface ReplicaSummary {
  name: string
  logFile: string
  incarnations: number
  exits: string[]
  errorLines: number
  consumerCrashes: number
  /** Idle close: stream time advances by the wall clock it logged, over all its lives. */
  idleAdvances: number
}

export interface ScenarioResult {
  name: string
  seed: number
  passed: boolean
  durationMs: number
  verification: Verification
  input: InputStats
  /** Exits of replicas by their own SIGKILL (the fault hook). */
  selfKills: number
  /** Replicas that exited by themselves (not by a signal of the harness or the fault hook). */
  selfExits: string[]
  replicas: ReplicaSummary[]
  events: string[]
  logDir: string
  /** Replica log excerpts, filled when the scenario failed. */
  excerpts: string
  /** Not exactly-once violations, but worth a look (e.g. replicas alive that consume nothing). */
  warnings: string[]
}

/** What a scenario body works with: the broker, the replicas, a seeded random, a clock. */
export class Scenario {
  readonly replicas: Replica[] = []
  readonly events: string[] = []
  readonly random: () => number
  private readonly started = Date.now()
  private supervisor: NodeJS.Timeout | undefined
  private fatal: Error | undefined
  private hog: CpuHog | undefined
  private brokerPaused = false
  private readonly launch: ReplicaLaunch

  constructor(
    readonly name: string,
    readonly seed: number,
    readonly broker: LocalBroker,
    readonly inputTopic: string,
    readonly outputTopic: string,
    readonly groupId: string,
    readonly logDir: string,
    delivery: Delivery | null,
    private readonly onEvent: (line: string) => void,
    extraArgs: readonly string[] = [],
  ) {
    this.random = mulberry32(seed ^ 0x9e3779b9)
    this.launch = {
      brokers: broker.brokers,
      groupId,
      inputTopic,
      outputTopic,
      delivery,
      serviceRoot: process.env['KWA_CHAOS_SERVICE_ROOT']?.trim() || REPO_ROOT,
      extraArgs,
    }
  }

  /** @internal The scenario's input producer (set by ChaosHarness.run). */
  input: InputProducer | undefined
  /**
   * Idle close: where the input resumed after each pause, and how far an idle advance can have
   * moved stream time by then (resumeInput()); the verifier models these advances.
   */
  readonly idleResumes: IdleResume[] = []

  private producer(): InputProducer {
    if (this.input === undefined) throw new Error('the scenario has no input producer')
    return this.input
  }

  /** Starts the input flow (scenarios run with `holdInput` start it themselves). */
  startInput(): void {
    this.producer().resume()
    this.note('input flowing')
  }

  /** Stops the input flow (the send in flight completes): partitions go quiet. */
  async pauseInput(): Promise<void> {
    await this.producer().stop()
    this.note(`input paused (highest event time ${this.producer().highestEventTime})`)
  }

  /**
   * Resumes the input after an idle close closed every window (awaitIdleClose()): first one
   * message per partition of `stale` samples in windows the idle close closed (late, whatever
   * the advance was), then the steady flow with its event time moved beyond the highest stream
   * time an idle advance can have reached, S + (now - the send of the last input) (consumer/
   * service.ts idleStreamTime: `since` is no earlier than that send, and once no window is open
   * nothing advances it), plus the out-of-order delay, a window and the grace: so each resumed
   * sample is late or not by the input alone (test/helpers/idle-reference.ts).
   */
  async resumeInput({ stale = 5 } = {}): Promise<void> {
    const input = this.producer()
    const offsets = await lastStableOffsets(this.broker.brokers, this.inputTopic)
    const elapsed = Date.now() - input.lastTickSendStartedAt
    const maxStreamTime = input.highestEventTime + elapsed
    this.idleResumes.push({ offsets, maxStreamTime })
    await input.sendStale(stale)
    const gap = elapsed + defaultInput.maxDelayMs + WINDOW.sizeMs + WINDOW.graceMs + 1_000
    input.jump(gap)
    input.resume()
    this.note(
      `input resumed after ${seconds(elapsed)}: ${stale} stale samples per partition, then event ` +
        `time ${seconds(gap)} further on (idle advances reached at most ${maxStreamTime})`,
    )
  }

  /**
   * Waits (bounded) until every window of the input so far was published: with the input paused,
   * only idle advances can close the last ones. Throws, naming how many are missing, if not.
   */
  async awaitIdleClose(timeoutMs: number): Promise<void> {
    const started = Date.now()
    const input = await readToEnd(this.broker.brokers, this.inputTopic)
    const expected = referenceWithIdle(inputSteps(input, this.idleResumes), WINDOW).windows
    const reader = await TopicReader.open(this.broker.brokers, this.outputTopic, {
      readUncommitted: false,
    })
    try {
      const seen = new Set<string>()
      let counted = 0
      const missing = () => {
        for (; counted < reader.records.length; counted++) {
          const value = reader.records[counted]?.value
          if (value === null || value === undefined) continue
          const w = decodeWindowAggregate(value)
          seen.add(windowId(w.seriesKey, w.windowStart))
        }
        return [...expected.keys()].filter((id) => !seen.has(id)).length
      }
      const done = await this.pollSupervised(() => missing() === 0, timeoutMs, 250)
      if (!done) {
        throw new Error(
          `${missing()} of ${expected.size} windows of the paused input not published after ` +
            `${seconds(timeoutMs)}: the idle close did not close them`,
        )
      }
      this.note(
        `idle close: all ${expected.size} windows of the input so far published ` +
          `(${seconds(Date.now() - started)})`,
      )
    } finally {
      await reader.close()
    }
  }

  /** Waits (bounded) until `done()`; throws naming `what` when it does not happen in time. */
  async until(what: string, done: () => boolean, timeoutMs: number): Promise<void> {
    if (!(await this.pollSupervised(done, timeoutMs))) {
      throw new Error(`timed out after ${seconds(timeoutMs)} waiting for ${what}`)
    }
  }

  /** Milliseconds since the scenario started. */
  elapsed(): number {
    return Date.now() - this.started
  }

  note(text: string): void {
    const line = `${(this.elapsed() / 1000).toFixed(1).padStart(6)} s  ${text}`
    this.events.push(line)
    this.onEvent(`[${this.name}] ${line}`)
  }

  /** Starts a new replica (its own log file); the supervisor restarts it whenever it exits. */
  startReplica(options: { env?: Record<string, string> } = {}): Replica {
    const name = `replica-${this.replicas.length + 1}`
    const replica = new Replica(
      name,
      path.join(this.logDir, `${name}.log`),
      options.env ?? {},
      this.launch,
      (text) => this.note(text),
    )
    this.replicas.push(replica)
    const env = Object.entries(options.env ?? {}).map(([k, v]) => `${k}=${v}`)
    this.note(
      `${name} started (pid ${replica.pid})${env.length > 0 ? ` with ${env.join(' ')}` : ''}`,
    )
    return replica
  }

  /** Replicas not retired whose process runs (stopped ones included). */
  live(): Replica[] {
    return this.replicas.filter((r) => !r.retired && r.running)
  }

  /** A random element (seeded). */
  pick<T>(items: readonly T[]): T {
    const item = items[Math.floor(this.random() * items.length)]
    if (item === undefined) throw new Error('pick() from an empty list')
    return item
  }

  /** kill -9 a random live replica (the supervisor restarts it). */
  async killRandomReplica(): Promise<void> {
    const live = this.live()
    if (live.length === 0) this.note('kill -9: no replica running at this moment')
    else await this.pick(live).kill()
  }

  /** Scales to `n` live replicas: starts new ones or SIGTERMs (and retires) the newest. */
  async scaleTo(n: number): Promise<void> {
    this.note(`scale ${this.live().length} -> ${n}`)
    while (this.live().length < n) this.startReplica()
    const surplus = this.live().slice(n)
    await Promise.all(surplus.map((r) => r.stop()))
  }

  /**
   * Waits (bounded, never failing) until the running replicas' last assignments cover every
   * input partition exactly once: the group has settled.
   */
  async waitForGroup(timeoutMs = 30_000): Promise<boolean> {
    const started = Date.now()
    const settled = await this.pollSupervised(() => {
      const active = this.live().filter((r) => !r.paused)
      if (active.length === 0 || active.some((r) => r.assignment === undefined)) return false
      const owned = active.flatMap((r) => r.assignment ?? []).sort((a, b) => a - b)
      return owned.join() === Array.from({ length: PARTITIONS }, (_, p) => p).join()
    }, timeoutMs)
    const assignments = this.live()
      .map((r) => `${r.name}=${JSON.stringify(r.assignment ?? null)}`)
      .join(' ')
    this.note(
      settled
        ? `group settled in ${seconds(Date.now() - started)}: ${assignments}`
        : `group not settled after ${seconds(timeoutMs)}: ${assignments}`,
    )
    return settled
  }

  /**
   * Waits (bounded) until every live replica answers /readyz 200 and the partitions they report
   * cover every input partition exactly once: the group has rebalanced and each member has
   * restored what it owns. Stricter than waitForGroup(), which reads 'joined group' log lines
   * (the join, not the restore). Returns false, after noting every replica's status, if that
   * does not happen within `timeoutMs`.
   */
  async waitForReady(timeoutMs: number): Promise<boolean> {
    const started = Date.now()
    let last: [Replica, Readiness][] = []
    const settled = await this.pollSupervised(
      async () => {
        const live = this.live()
        last = await Promise.all(live.map(async (r) => [r, await r.readiness()] as const))
        if (live.length === 0 || last.some(([, x]) => !x.ready)) return false
        const owned = last.flatMap(([, x]) => x.partitions ?? []).sort((a, b) => a - b)
        return owned.join() === Array.from({ length: PARTITIONS }, (_, p) => p).join()
      },
      timeoutMs,
      250,
    )
    const statuses = last
      .map(([r, x]) => `${r.name}=${x.status}${x.partitions ? JSON.stringify(x.partitions) : ''}`)
      .join(' ')
    this.note(
      settled
        ? `group ready in ${seconds(Date.now() - started)}: ${statuses}`
        : `group not ready after ${seconds(timeoutMs)}: ${statuses}`,
    )
    return settled
  }

  /** Runs each step at its time (ms from now), then waits until `totalMs` have passed. */
  async timeline(
    totalMs: number,
    steps: readonly (readonly [atMs: number, step: () => unknown])[],
  ): Promise<void> {
    const start = Date.now()
    for (const [at, step] of [...steps].sort((a, b) => a[0] - b[0])) {
      await this.sleep(start + at - Date.now())
      await step()
    }
    await this.sleep(start + totalMs - Date.now())
  }

  /** Sleeps, failing early if the supervisor hit a fatal problem. */
  async sleep(ms: number): Promise<void> {
    await this.pollSupervised(() => false, ms)
  }

  /** `count` random moments within [margin, totalMs - margin), ascending. */
  randomMoments(count: number, totalMs: number, marginMs = 2_000): number[] {
    const span = Math.max(0, totalMs - 2 * marginMs)
    return Array.from({ length: count }, () => marginMs + Math.floor(this.random() * span)).sort(
      (a, b) => a - b,
    )
  }

  /** kill -9 the broker, leave it down for `downMs`, restart it on the same data dir. */
  async killBroker(downMs: number): Promise<void> {
    this.note(`kill -9 broker`)
    await this.broker.kill()
    await this.sleep(downMs)
    const started = Date.now()
    await this.broker.restart()
    this.note(`broker restarted on the same data dir, ready after ${seconds(Date.now() - started)}`)
  }

  /**
   * Starves the machine's CPU with `loops` busy loops until stopStarving() (or the end of the
   * scenario). With `broker`, the loops and the broker's JVM share one CPU.
   */
  starveCpu(loops: number, options: { broker?: boolean } = {}): void {
    this.stopStarving()
    const pin = options.broker === true ? this.broker.pid() : undefined
    this.hog = new CpuHog(loops, { pin })
    this.note(
      `CPU starved: ${loops} busy loops` +
        (this.hog.pinnedTo !== undefined ? ` on the broker's CPU (pid ${this.hog.pinnedTo})` : ''),
    )
  }

  stopStarving(): void {
    if (this.hog === undefined) return
    this.hog.stop()
    this.hog = undefined
    this.note('CPU starvation stopped')
  }

  /** SIGSTOP the broker for `ms` (a GC pause, a frozen VM), then SIGCONT. */
  async pauseBroker(ms: number): Promise<void> {
    if (!this.broker.signal('SIGSTOP')) throw new Error('the broker is not running')
    this.brokerPaused = true
    this.note(`SIGSTOP broker for ${seconds(ms)}`)
    try {
      await this.sleep(ms)
    } finally {
      this.resumeBroker()
    }
  }

  /** @internal */
  resumeBroker(): void {
    if (!this.brokerPaused) return
    this.brokerPaused = false
    this.broker.signal('SIGCONT')
    this.note('SIGCONT broker')
  }

  /** Stops the broker cleanly and starts it again on the same data dir: coordinators reload. */
  async restartBroker(): Promise<void> {
    const started = Date.now()
    await this.broker.restart()
    this.note(`broker restarted, ready after ${seconds(Date.now() - started)}`)
  }

  /** @internal Restart exited replicas every 250 ms. */
  startSupervisor(): void {
    this.supervisor = setInterval(() => {
      if (this.fatal !== undefined) return
      try {
        for (const replica of this.replicas) replica.restartIfExited()
      } catch (error) {
        this.fatal = error instanceof Error ? error : new Error(String(error))
        this.note(`fatal: ${this.fatal.message.split('\n')[0] ?? ''}`)
      }
    }, 250)
  }

  /** @internal */
  stopSupervisor(): void {
    clearInterval(this.supervisor)
  }

  /** @internal Replicas alive whose kafkajs consumer stopped for good (a liveness problem). */
  idleReplicas(): string[] {
    return this.live().flatMap((r) => {
      const stopped = r.consumerStopped
      if (stopped === undefined) return []
      const at = seconds(stopped.at - this.started)
      return [
        `${r.name} (pid ${r.pid}) is up but its kafkajs consumer stopped at ${at} and never ` +
          `restarted (${stopped.message}): it consumes nothing`,
      ]
    })
  }

  /** @internal Resumes stopped replicas and makes sure one runs. */
  ensureActive(): void {
    this.stopStarving()
    this.resumeBroker()
    for (const replica of this.live()) replica.resume()
    if (this.live().length === 0) this.startReplica()
  }

  /** @internal SIGTERM every replica (bounded), kill -9 the rest. */
  async stopAll(): Promise<void> {
    this.stopSupervisor()
    this.stopStarving()
    this.resumeBroker()
    await Promise.all(this.replicas.map((r) => r.stop(15_000).catch(() => r.kill())))
    await Promise.all(this.replicas.map((r) => r.closeLog()))
  }

  private async pollSupervised(
    done: () => boolean | Promise<boolean>,
    timeoutMs: number,
    everyMs = 100,
  ): Promise<boolean> {
    let result = false
    await pollUntil(
      async () => {
        if (this.fatal !== undefined) throw this.fatal
        result = await done()
        return result
      },
      timeoutMs,
      everyMs,
    )
    if (this.fatal !== undefined) throw this.fatal
    return result
  }
}
