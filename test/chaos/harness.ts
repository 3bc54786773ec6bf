/**
 * Chaos harness for `kwa run`: its own single-node KRaft broker (so it may kill -9 and restart
 * it), aggregator replicas as separate processes (start, SIGTERM, kill -9, SIGSTOP/SIGCONT,
 * scale), a steady seeded telemetry producer, and a verifier that recomputes the expected windows
 * from what is really in the input topic and compares them with what a read_committed reader sees
 * in the output topic.
 *
 * Used by test/integration/chaos.test.ts (a short run per scenario) and scripts/chaos.ts (the
 * soak). No vitest import here: the soak runs under plain tsx.
 *
 * Environment:
 *   KWA_KAFKA_VERSION      broker version (default 3.9.2; 4.x works too)
 *   KWA_CHAOS_DELIVERY     exactly-once (default) | at-least-once | none (omit --delivery)
 *   KWA_CHAOS_KEEP_LOGS=1  keep the logs of passing scenarios too (failing ones are always kept)
 *   KWA_CHAOS_SEED         base seed of the producers and of the fault choreography
 *   KWA_CHAOS_SERVICE_ROOT checkout whose consumer/cli.ts the replicas run (default: this one)
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { createWriteStream, promises as fs, type WriteStream } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { createInterface } from 'node:readline'
import {
  Kafka,
  logLevel,
  Partitioners,
  type Admin,
  type Batch,
  type Consumer,
  type Message,
  type Producer,
} from 'kafkajs'
import {
  decodeLateSample,
  decodeTelemetryBatch,
  decodeWindowAggregate,
  encodeTelemetryBatch,
  type Sample,
  type WindowAggregate,
} from '../../consumer/schemas'
import { defaultKafkaVersion, startLocalBroker, type LocalBroker } from '../../scripts/local-kafka'
import { referenceWithIdle, type IdleStep } from '../helpers/idle-reference'
import { mulberry32, referenceRun, windowId, type RefWindow } from '../reference'

// ---------------------------------------------------------------------------------------------
// Fixed geometry of every scenario
// ---------------------------------------------------------------------------------------------

/** Input (and output) partitions. */
export const PARTITIONS = 4
/** The window geometry given to kwa and to the reference. */
export const WINDOW = { sizeMs: 2_000, graceMs: 500 } as const
export const SESSION_TIMEOUT_MS = 6_000
/** Synthetic event time of the first tick (not wall clock). */
const T0 = 1_700_000_000_000

const REPO_ROOT = path.resolve(__dirname, '..', '..')

export type Delivery = 'exactly-once' | 'at-least-once'

/** `--delivery` given to replicas: KWA_CHAOS_DELIVERY, default exactly-once; "none" omits it. */
export function deliveryFromEnv(): Delivery | null {
  const value = process.env['KWA_CHAOS_DELIVERY']?.trim() || 'exactly-once'
  if (value === 'none') return null
  if (value === 'exactly-once' || value === 'at-least-once') return value
  throw new Error(`KWA_CHAOS_DELIVERY must be exactly-once, at-least-once or none, not "${value}"`)
}

// ---------------------------------------------------------------------------------------------
// Small utilities
// ---------------------------------------------------------------------------------------------

export const sleep = (ms: number): Promise<void> =>
  new Promise((resolve) => setTimeout(resolve, Math.max(0, ms)))

const errorText = (error: unknown): string =>
  error instanceof Error ? error.message : String(error)

const seconds = (ms: number): string => `${(ms / 1000).toFixed(1)} s`

/** "2s", "500ms": the CLI's duration syntax. */
const durationFlag = (ms: number): string => (ms % 1000 === 0 ? `${ms / 1000}s` : `${ms}ms`)

/** A stable 32-bit seed from a string (FNV-1a). */
function seedOf(text: string): number {
  let h = 0x811c9dc5
  for (let i = 0; i < text.length; i++) h = Math.imul(h ^ text.charCodeAt(i), 0x01000193)
  return h >>> 0
}

/** Polls `done` every `everyMs` until it holds (true) or `timeoutMs` passed (false). */
async function pollUntil(
  done: () => boolean | Promise<boolean>,
  timeoutMs: number,
  everyMs = 100,
): Promise<boolean> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    if (await done()) return true
    if (Date.now() >= deadline) return false
    await sleep(everyMs)
  }
}

function withTimeout<T>(promise: Promise<T>, timeoutMs: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`timed out after ${seconds(timeoutMs)}: ${what}`)),
      timeoutMs,
    )
  })
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer))
}

/** kafkajs clients of the harness itself: quiet, and patient enough to ride a broker restart. */
function harnessKafka(brokers: string, clientId: string): Kafka {
  return new Kafka({
    clientId,
    brokers: [brokers],
    logLevel: logLevel.NOTHING,
    connectionTimeout: 3_000,
    requestTimeout: 10_000,
    retry: { retries: 3, initialRetryTime: 200, maxRetryTime: 2_000 },
  })
}

async function withAdmin<T>(brokers: string, use: (admin: Admin) => Promise<T>): Promise<T> {
  const admin = harnessKafka(brokers, 'kwa-chaos-admin').admin()
  await admin.connect()
  try {
    return await use(admin)
  } finally {
    await admin.disconnect()
  }
}

/** The last stable offset per partition: kafkajs' ListOffsets defaults to READ_COMMITTED. */
async function lastStableOffsets(brokers: string, topic: string): Promise<Map<number, bigint>> {
  return withAdmin(brokers, async (admin) => {
    const offsets = await admin.fetchTopicOffsets(topic)
    return new Map(offsets.map((o) => [o.partition, BigInt(o.high)]))
  })
}

// ---------------------------------------------------------------------------------------------
// Replica processes
// ---------------------------------------------------------------------------------------------

export interface ProcessExit {
  code: number | null
  signal: NodeJS.Signals | null
}

const describeExit = (exit: ProcessExit): string =>
  exit.signal !== null ? `signal ${exit.signal}` : `code ${exit.code}`

/** Linux: the kernel kills a replica whose harness dies (even by SIGKILL). */
const pdeathsig: boolean =
  process.platform === 'linux' &&
  spawnSync('setpriv', ['--pdeathsig', 'KILL', 'true'], { stdio: 'ignore' }).status === 0

/** Every replica process alive, so that an exiting harness never leaves one behind. */
const liveChildren = new Set<ChildProcess>()
let exitHookInstalled = false
function trackChild(child: ChildProcess): void {
  if (!exitHookInstalled) {
    exitHookInstalled = true
    process.on('exit', () => {
      for (const c of liveChildren) {
        c.kill('SIGCONT')
        c.kill('SIGKILL')
      }
    })
  }
  liveChildren.add(child)
  child.once('exit', () => liveChildren.delete(child))
}

/**
 * CPU starvation: busy-loop processes, optionally all on one CPU together with a target process
 * (the broker's JVM, every thread), so that the target gets a fraction of one core. stop() ends
 * the loops and gives the target back every CPU.
 */
export class CpuHog {
  private readonly loops: ChildProcess[] = []
  private pinned: number | undefined

  constructor(count: number, options: { pin?: number } = {}) {
    const cpu = '0'
    if (options.pin !== undefined && taskset(['-a', '-p', '-c', cpu, String(options.pin)])) {
      this.pinned = options.pin
    }
    for (let i = 0; i < count; i++) {
      const args = ['-e', 'for (;;) {}']
      const [command, commandArgs] =
        this.pinned !== undefined
          ? ['taskset', ['-c', cpu, process.execPath, ...args]]
          : [process.execPath, args]
      const [wrapped, wrappedArgs] = pdeathsig
        ? ['setpriv', ['--pdeathsig', 'KILL', command, ...commandArgs]]
        : [command, commandArgs]
      const child = spawn(wrapped, wrappedArgs, { stdio: 'ignore' })
      trackChild(child)
      this.loops.push(child)
    }
  }

  /** Whether the loops share one CPU with the target. */
  get pinnedTo(): number | undefined {
    return this.pinned
  }

  stop(): void {
    for (const loop of this.loops.splice(0)) loop.kill('SIGKILL')
    if (this.pinned !== undefined) {
      taskset(['-a', '-p', '-c', `0-${os.cpus().length - 1}`, String(this.pinned)])
      this.pinned = undefined
    }
  }
}

function taskset(args: string[]): boolean {
  return spawnSync('taskset', args, { stdio: 'ignore' }).status === 0
}

interface ReplicaLaunch {
  brokers: string
  groupId: string
  inputTopic: string
  outputTopic: string
  delivery: Delivery | null
  serviceRoot: string
  /** More `kwa run` flags (e.g. --idle-close for the scenario that needs it). */
  extraArgs: readonly string[]
}

/** One OS process of a replica (a replica is restarted as a new incarnation). */
class Incarnation {
  readonly child: ChildProcess
  readonly pid: number
  readonly startedAt = Date.now()
  readonly exited: Promise<ProcessExit>
  exit: ProcessExit | undefined
  /** Signals the harness sent (a SIGKILL it did not send is the fault hook's). */
  readonly sent = new Set<NodeJS.Signals>()
  /** Partitions of the last 'joined group' log line. */
  assignment: number[] | undefined
  /** Base URL of its /metrics, /healthz and /readyz server (its 'http server listening' line). */
  httpUrl: string | undefined
  /** Set by a kafkajs "Crash:" line, cleared by its restart or a new join: consuming nothing. */
  consumerStopped: { at: number; message: string } | undefined
  paused = false
  pausedAt = 0

  constructor(launch: ReplicaLaunch, env: Record<string, string>, write: (line: string) => void) {
    const args = [
      '--import',
      'tsx',
      'consumer/cli.ts',
      'run',
      '--brokers',
      launch.brokers,
      '--group-id',
      launch.groupId,
      '--input-topic',
      launch.inputTopic,
      '--output-topic',
      launch.outputTopic,
      '--window-size',
      durationFlag(WINDOW.sizeMs),
      '--grace',
      durationFlag(WINDOW.graceMs),
      '--session-timeout',
      durationFlag(SESSION_TIMEOUT_MS),
      ...(launch.delivery === null ? [] : ['--delivery', launch.delivery]),
      ...launch.extraArgs,
      '--log-level',
      'info',
    ]
    const [command, commandArgs] = pdeathsig
      ? ['setpriv', ['--pdeathsig', 'KILL', process.execPath, ...args]]
      : [process.execPath, args]
    this.child = spawn(command, commandArgs, {
      cwd: launch.serviceRoot,
      env: replicaEnv(env),
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    if (this.child.pid === undefined) throw new Error(`could not spawn ${command}`)
    this.pid = this.child.pid
    trackChild(this.child)
    this.exited = new Promise((resolve) => {
      this.child.once('exit', (code, signal) => {
        this.exit = { code, signal }
        resolve(this.exit)
      })
    })
    for (const stream of [this.child.stdout, this.child.stderr]) {
      if (stream === null) continue
      createInterface({ input: stream }).on('line', (line) => {
        this.parse(line)
        write(line)
      })
    }
  }

  get running(): boolean {
    return this.exit === undefined
  }

  signal(signal: NodeJS.Signals): void {
    if (!this.running) return
    this.sent.add(signal)
    this.child.kill(signal)
  }

  /** SIGKILL, and wait until the process is gone. */
  async kill(): Promise<ProcessExit> {
    if (this.paused) this.signal('SIGCONT')
    this.signal('SIGKILL')
    return withTimeout(this.exited, 10_000, `pid ${this.pid} to exit after SIGKILL`)
  }

  private parse(line: string): void {
    if (!line.startsWith('{')) return
    try {
      const entry = JSON.parse(line) as { msg?: unknown; partitions?: unknown; url?: unknown }
      const msg = typeof entry.msg === 'string' ? entry.msg : ''
      if (msg === 'http server listening' && typeof entry.url === 'string') {
        this.httpUrl = entry.url
      } else if (msg === 'joined group' && Array.isArray(entry.partitions)) {
        this.assignment = entry.partitions.filter((p): p is number => typeof p === 'number')
        this.consumerStopped = undefined
      } else if (msg.startsWith('Crash: ')) {
        this.consumerStopped = { at: Date.now(), message: msg }
      } else if (msg.startsWith('Restarting the consumer')) {
        this.consumerStopped = undefined
      }
    } catch {
      // not a log entry (e.g. a stack trace line)
    }
  }
}

/**
 * The harness environment minus anything kwa would read as configuration, plus KWA_HTTP_PORT=0:
 * replicas on one machine must not all bind the default metrics port.
 */
function replicaEnv(extra: Record<string, string>): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {}
  for (const [key, value] of Object.entries(process.env)) {
    if (key.startsWith('KWA_') || key === 'KAFKA_BROKERS' || key === 'NODE_OPTIONS') continue
    env[key] = value
  }
  return { ...env, KWA_HTTP_PORT: '0', ...extra }
}

/** A replica's /readyz answer. */
export interface Readiness {
  ready: boolean
  /** starting, rebalancing, restoring, ready, stopping, ... or why it did not answer. */
  status: string
  /** The partitions it owns in its current generation. */
  partitions?: number[]
}

/**
 * How an incarnation ended, as the harness sees it: after its SIGTERM, its kill -9, by a SIGKILL
 * it did not send (the fault hook), by itself with an error or a signal, or by itself cleanly.
 */
type ExitCause = 'sigterm' | 'kill -9' | 'self-kill' | 'crash' | 'exit'

/**
 * A replica: a slot that the supervisor keeps running (restarting it after any exit) until it is
 * retired by stop() or kill({ retire: true }).
 */
export class Replica {
  private current: Incarnation
  private readonly log: WriteStream
  private logClosed = false
  private readonly tail: string[] = []
  retired = false
  readonly exits: { cause: ExitCause; exit: ProcessExit; afterMs: number }[] = []
  errorLines = 0
  /** kafkajs "Crash:" lines: its consumer stopped (restarted only after retriable errors). */
  consumerCrashes = 0
  /** Idle close: its 'idle partition: stream time advanced by the wall clock' lines, all lives. */
  idleAdvances = 0
  private quickFailures = 0

  constructor(
    readonly name: string,
    readonly logFile: string,
    readonly env: Record<string, string>,
    private readonly launch: ReplicaLaunch,
    private readonly note: (text: string) => void,
  ) {
    this.log = createWriteStream(logFile, { flags: 'a' })
    this.current = this.spawn()
  }

  get pid(): number {
    return this.current.pid
  }
  get running(): boolean {
    return this.current.running
  }
  get paused(): boolean {
    return this.current.running && this.current.paused
  }
  /** Partitions it owns according to its last 'joined group' line. */
  get assignment(): number[] | undefined {
    return this.current.assignment
  }
  get incarnations(): number {
    return this.exits.length + (this.running ? 1 : 0)
  }
  /** The kafkajs consumer crashed without restart: the process runs but consumes nothing. */
  get consumerStopped(): { at: number; message: string } | undefined {
    return this.current.running ? this.current.consumerStopped : undefined
  }
  get selfKills(): number {
    return this.exits.filter((e) => e.cause === 'self-kill').length
  }

  /**
   * Its current incarnation's GET /readyz (ready: joined the group, not rebalancing, every
   * assigned partition restored): the status word and the partitions it owns. A process that is
   * not running, has not logged its HTTP address yet, or does not answer within `timeoutMs`
   * (e.g. its event loop starved) is not ready.
   */
  async readiness(timeoutMs = 2_000): Promise<Readiness> {
    const incarnation = this.current
    const url = incarnation.httpUrl
    if (!incarnation.running || incarnation.paused) return { ready: false, status: 'not running' }
    if (url === undefined) return { ready: false, status: 'no http server yet' }
    try {
      const response = await fetch(`${url}/readyz`, { signal: AbortSignal.timeout(timeoutMs) })
      const body = (await response.json()) as { status?: unknown; partitions?: unknown }
      const partitions = Array.isArray(body.partitions)
        ? body.partitions.filter((p): p is number => typeof p === 'number')
        : undefined
      return {
        ready: response.status === 200,
        status: typeof body.status === 'string' ? body.status : `http ${response.status}`,
        partitions,
      }
    } catch (error) {
      return { ready: false, status: `/readyz: ${errorText(error)}` }
    }
  }

  /** SIGTERM and wait for a clean exit (SIGKILL after `timeoutMs`); retires the replica. */
  async stop(timeoutMs = 20_000): Promise<void> {
    this.retired = true
    const incarnation = this.current
    if (!incarnation.running) return
    if (incarnation.paused) this.resume()
    const started = Date.now()
    incarnation.signal('SIGTERM')
    const exited = await withTimeout(incarnation.exited, timeoutMs, 'exit').then(
      () => true,
      () => false,
    )
    if (!exited) {
      this.note(`${this.name} did not exit within ${seconds(timeoutMs)} of SIGTERM: kill -9`)
      await incarnation.kill()
    }
    this.note(
      `SIGTERM ${this.name}: ${this.describeLastExit()} after ${seconds(Date.now() - started)}`,
    )
  }

  /** kill -9 and wait for the process to be gone; the supervisor restarts it unless retired. */
  async kill(options: { retire?: boolean } = {}): Promise<void> {
    if (options.retire) this.retired = true
    const incarnation = this.current
    if (!incarnation.running) return
    this.note(`kill -9 ${this.name} (pid ${incarnation.pid})${options.retire ? ', retired' : ''}`)
    await incarnation.kill()
  }

  /** SIGSTOP: the process freezes (no heartbeats, no I/O) with its sockets open. */
  pause(): void {
    const incarnation = this.current
    if (!incarnation.running || incarnation.paused) return
    incarnation.signal('SIGSTOP')
    incarnation.paused = true
    incarnation.pausedAt = Date.now()
    this.note(`SIGSTOP ${this.name} (pid ${incarnation.pid})`)
  }

  /** SIGCONT after pause(). */
  resume(): void {
    const incarnation = this.current
    if (!incarnation.running || !incarnation.paused) return
    incarnation.signal('SIGCONT')
    incarnation.paused = false
    this.note(`SIGCONT ${this.name} after ${seconds(Date.now() - incarnation.pausedAt)} stopped`)
  }

  /**
   * Supervisor step: if the process has exited and the replica is not retired, start it again.
   * Throws when it keeps failing right at startup (e.g. an unknown flag).
   */
  restartIfExited(): boolean {
    if (this.running || this.retired) return false
    const last = this.exits[this.exits.length - 1]
    if (last !== undefined && last.cause === 'crash' && last.afterMs < 10_000) {
      if (++this.quickFailures >= 3) {
        this.retired = true
        throw new Error(
          `${this.name} exits at startup (${describeExit(last.exit)}), three times in a row; ` +
            `log ${this.logFile}:\n${this.recentLines(15)}`,
        )
      }
    } else {
      this.quickFailures = 0
    }
    this.current = this.spawn()
    this.note(`${this.name} restarted (pid ${this.pid})`)
    return true
  }

  /** The last `n` lines it logged (long lines cut). */
  recentLines(n: number): string {
    return this.tail
      .slice(-n)
      .map((line) => (line.length > 400 ? `${line.slice(0, 400)}…` : line))
      .join('\n')
  }

  async closeLog(): Promise<void> {
    if (this.logClosed) return
    this.logClosed = true
    await new Promise<void>((resolve) => this.log.end(() => resolve()))
  }

  private write(line: string): void {
    if (!this.logClosed) this.log.write(`${line}\n`)
  }

  private describeLastExit(): string {
    const last = this.exits[this.exits.length - 1]
    return last === undefined ? 'still running' : describeExit(last.exit)
  }

  private spawn(): Incarnation {
    this.write(`--- ${new Date().toISOString()} ${this.name} starting ---`)
    const incarnation = new Incarnation(this.launch, this.env, (line) => {
      this.write(line)
      this.tail.push(line)
      if (this.tail.length > 200) this.tail.shift()
      if (/"level":(50|60)/.test(line)) this.errorLines++
      if (line.includes('"msg":"idle partition: stream time advanced by the wall clock"')) {
        this.idleAdvances++
        const partition = /"partition":(\d+)/.exec(line)?.[1]
        const closed = /"windowsClosed":(\d+)/.exec(line)?.[1]
        this.note(
          `${this.name} (pid ${incarnation.pid}) idle advance of partition ${partition}: ` +
            `${closed} windows closed`,
        )
      }
      // kafkajs gives up on a non-retriable error: the process lives on, consuming nothing.
      const crash = /"msg":"(Crash: [^"]*|Restarting the consumer[^"]*)"/.exec(line)?.[1]
      if (crash !== undefined) {
        if (crash.startsWith('Crash')) this.consumerCrashes++
        this.note(`${this.name} (pid ${incarnation.pid}) kafkajs: ${crash}`)
      }
    })
    void incarnation.exited.then((exit) => {
      const cause = exitCause(incarnation, exit)
      const afterMs = Date.now() - incarnation.startedAt
      this.exits.push({ cause, exit, afterMs })
      this.write(`--- ${new Date().toISOString()} ${this.name} exited: ${describeExit(exit)} ---`)
      if (cause === 'self-kill')
        this.note(`${this.name} killed itself (fault hook, pid ${incarnation.pid})`)
      else if (cause === 'crash' || cause === 'exit')
        this.note(`${this.name} exited by itself: ${describeExit(exit)}`)
    })
    return incarnation
  }
}

function exitCause(incarnation: Incarnation, exit: ProcessExit): ExitCause {
  if (exit.signal === 'SIGKILL') return incarnation.sent.has('SIGKILL') ? 'kill -9' : 'self-kill'
  if (incarnation.sent.has('SIGTERM')) return 'sigterm'
  return exit.signal !== null || exit.code !== 0 ? 'crash' : 'exit'
}

// ---------------------------------------------------------------------------------------------
// Input: a steady, seeded telemetry producer
// ---------------------------------------------------------------------------------------------

export interface InputOptions {
  keysPerPartition: number
  samplesPerMessage: number
  /** Messages per second over all partitions (one message per partition per tick). */
  messagesPerSecond: number
  /** Event time advance per tick. */
  eventStepMs: number
  /** Fraction of samples stamped up to maxDelayMs in the past. */
  outOfOrderFraction: number
  maxDelayMs: number
  /** Fraction of messages sent twice in a row. */
  duplicateFraction: number
  /** Fraction of ticks that also resend a message from up to 30 ticks back. */
  replayFraction: number
}

export const defaultInput: InputOptions = {
  keysPerPartition: 16,
  samplesPerMessage: 50,
  messagesPerSecond: 40,
  eventStepMs: 100,
  outOfOrderFraction: 0.05,
  maxDelayMs: 1_500,
  duplicateFraction: 0,
  replayFraction: 0,
}

export interface InputStats {
  ticks: number
  messages: number
  duplicates: number
  sendFailures: number
}

/**
 * Produces one TelemetryBatch per partition per tick, series pinned to partitions, synthetic
 * event time advancing `eventStepMs` per tick. A failed send is retried with the same messages
 * (which may duplicate them in the topic: the verifier reads what is really there).
 */
export class InputProducer {
  readonly stats: InputStats = { ticks: 0, messages: 0, duplicates: 0, sendFailures: 0 }
  private readonly producer: Producer
  private readonly random: () => number
  private readonly recent: Message[][] = Array.from({ length: PARTITIONS }, () => [])
  private maxEventTime = T0
  /** Per partition, the highest event time produced. */
  private readonly partitionMax: number[] = Array.from({ length: PARTITIONS }, () => T0)
  /** Added to the event time of every tick from the next one on (see jump()). */
  private eventOffsetMs = 0
  private running = false
  private loop: Promise<void> | undefined
  /** When the send of the last tick sent (its first attempt) started, wall clock; 0: none. */
  lastTickSendStartedAt = 0

  constructor(
    brokers: string,
    private readonly topic: string,
    private readonly options: InputOptions,
    seed: number,
    private readonly note: (text: string) => void,
  ) {
    this.producer = harnessKafka(brokers, 'kwa-chaos-producer').producer({
      createPartitioner: Partitioners.DefaultPartitioner,
      allowAutoTopicCreation: false,
    })
    this.random = mulberry32(seed)
  }

  async start(): Promise<void> {
    await this.connect()
    this.resume()
  }

  /** Connects without starting the flow (resume() starts it). */
  async connect(): Promise<void> {
    await this.producer.connect()
  }

  /** Starts (again) the steady flow after connect() or stop(). */
  resume(): void {
    if (this.running) return
    this.running = true
    this.loop = this.run()
  }

  /** The highest event time produced so far (over every partition). */
  get highestEventTime(): number {
    return this.maxEventTime
  }

  /** Moves the event time of every later tick `ms` forward (a gap in event time). */
  jump(ms: number): void {
    this.eventOffsetMs += ms
  }

  /**
   * One message per partition of `count` samples stamped up to 4 s before the highest event time
   * of that partition so far (in windows that had opened by then), for series of the partition.
   */
  async sendStale(count: number, timeoutMs = 30_000): Promise<void> {
    const messages = Array.from({ length: PARTITIONS }, (_, partition) => ({
      partition,
      value: encodeTelemetryBatch({
        sourceId: `chaos-stale-${partition}`,
        samples: Array.from({ length: count }, () => ({
          seriesKey: seriesKey(
            partition,
            Math.floor(this.random() * this.options.keysPerPartition),
          ),
          eventTime: (this.partitionMax[partition] ?? T0) - Math.floor(this.random() * 4_000),
          value: Math.round((this.random() - 0.5) * 2_000_000) / 1024,
        })),
      }),
    }))
    const deadline = Date.now() + timeoutMs
    if (!(await this.sendUntilDone(messages, () => Date.now() < deadline))) {
      throw new Error(`could not send the stale messages within ${seconds(timeoutMs)}`)
    }
  }

  /** Stops the steady flow (the send in flight completes). */
  async stop(): Promise<void> {
    this.running = false
    await this.loop
  }

  /** One message per partition far enough ahead in event time to close every earlier window. */
  async sendFinal(timeoutMs = 60_000): Promise<void> {
    const eventTime = this.maxEventTime + 2 * WINDOW.sizeMs + WINDOW.graceMs
    const messages = Array.from({ length: PARTITIONS }, (_, partition) => ({
      partition,
      value: encodeTelemetryBatch({
        sourceId: `chaos-final-${partition}`,
        samples: [{ seriesKey: seriesKey(partition, 0), eventTime, value: 0 }],
      }),
    }))
    const deadline = Date.now() + timeoutMs
    if (!(await this.sendUntilDone(messages, () => Date.now() < deadline))) {
      throw new Error(`could not send the final messages within ${seconds(timeoutMs)}`)
    }
  }

  async disconnect(): Promise<void> {
    this.running = false
    await this.loop?.catch(() => undefined)
    await this.producer.disconnect().catch(() => undefined)
  }

  private async run(): Promise<void> {
    const intervalMs = (1000 * PARTITIONS) / this.options.messagesPerSecond
    let next = Date.now()
    while (this.running) {
      const messages = this.tick()
      const sendStartedAt = Date.now()
      if (await this.sendUntilDone(messages, () => this.running)) {
        this.lastTickSendStartedAt = sendStartedAt
      }
      next += intervalMs
      const now = Date.now()
      if (next < now - 1_000) next = now // after a stall, resume the rate rather than burst
      await sleep(next - now)
    }
  }

  private tick(): Message[] {
    const o = this.options
    const tick = this.stats.ticks++
    const messages: Message[] = []
    for (let partition = 0; partition < PARTITIONS; partition++) {
      const base = T0 + tick * o.eventStepMs + this.eventOffsetMs
      const samples: Sample[] = Array.from({ length: o.samplesPerMessage }, () => {
        const key = seriesKey(partition, Math.floor(this.random() * o.keysPerPartition))
        const delay =
          this.random() < o.outOfOrderFraction ? Math.floor(this.random() * o.maxDelayMs) : 0
        const eventTime = base + Math.floor(this.random() * o.eventStepMs) - delay
        // Dyadic values: every sum is exact in binary, whatever the order of addition.
        const value = Math.round((this.random() - 0.5) * 2_000_000) / 1024
        this.maxEventTime = Math.max(this.maxEventTime, eventTime)
        this.partitionMax[partition] = Math.max(this.partitionMax[partition] ?? T0, eventTime)
        return { seriesKey: key, eventTime, value }
      })
      const message: Message = {
        partition,
        value: encodeTelemetryBatch({ sourceId: `chaos-${partition}-${tick}`, samples }),
      }
      messages.push(message)
      if (this.random() < o.duplicateFraction) {
        messages.push(message)
        this.stats.duplicates++
      }
      const recent = this.recent[partition] ?? []
      if (recent.length > 0 && this.random() < o.replayFraction) {
        const old = recent[Math.floor(this.random() * recent.length)]
        if (old !== undefined) {
          messages.push(old)
          this.stats.duplicates++
        }
      }
      recent.push(message)
      if (recent.length > 30) recent.shift()
    }
    return messages
  }

  /** Sends, retrying the same messages every 500 ms while `keepTrying()`; true once sent. */
  private async sendUntilDone(messages: Message[], keepTrying: () => boolean): Promise<boolean> {
    let failingSince: number | undefined
    for (;;) {
      try {
        await this.producer.send({ topic: this.topic, acks: -1, messages })
        this.stats.messages += messages.length
        if (failingSince !== undefined) {
          this.note(`input producer recovered after ${seconds(Date.now() - failingSince)}`)
        }
        return true
      } catch (error) {
        this.stats.sendFailures++
        if (failingSince === undefined) {
          failingSince = Date.now()
          this.note(`input producer: send failed (${errorText(error)}), retrying`)
        }
        if (!keepTrying()) return false
        await sleep(500)
      }
    }
  }
}

const seriesKey = (partition: number, index: number): string =>
  `host-${partition}-${index.toString().padStart(2, '0')}/cpu`

// ---------------------------------------------------------------------------------------------
// Reading topics back
// ---------------------------------------------------------------------------------------------

interface ReadRecord {
  partition: number
  offset: string
  key: Buffer | null
  value: Buffer | null
}

/**
 * Reads a topic from the beginning with a fresh consumer group, continuously, and tracks per
 * partition the position (from batches' lastOffset, which counts transaction markers and aborted
 * records that are never delivered) and the highest high watermark the fetches reported.
 */
class TopicReader {
  readonly records: ReadRecord[] = []
  lastRecordAt = Date.now()
  private readonly positions = new Map<number, bigint>()
  private readonly highWatermarks = new Map<number, bigint>()

  private constructor(private readonly consumer: Consumer) {}

  static async open(
    brokers: string,
    topic: string,
    options: { readUncommitted: boolean },
  ): Promise<TopicReader> {
    const consumer = harnessKafka(brokers, 'kwa-chaos-reader').consumer({
      groupId: `kwa-chaos-reader-${randomBytes(6).toString('hex')}`,
      readUncommitted: options.readUncommitted,
      maxWaitTimeInMs: 100,
      allowAutoTopicCreation: false,
    })
    const reader = new TopicReader(consumer)
    await consumer.connect()
    try {
      await consumer.subscribe({ topic, fromBeginning: true })
      // Also emitted for batches of markers/aborted records only (never passed to eachBatch).
      consumer.on(consumer.events.END_BATCH_PROCESS, ({ payload }) =>
        reader.advance(payload.partition, payload.lastOffset, payload.highWatermark),
      )
      await consumer.run({
        autoCommit: false,
        eachBatch: ({ batch }) => {
          reader.add(batch)
          return Promise.resolve()
        },
      })
    } catch (error) {
      await consumer.disconnect()
      throw error
    }
    return reader
  }

  position(partition: number): bigint {
    return this.positions.get(partition) ?? 0n
  }

  highWatermark(partition: number): bigint {
    return this.highWatermarks.get(partition) ?? 0n
  }

  /** Every partition's position is at least its target. */
  reached(targets: Map<number, bigint>): boolean {
    for (const [partition, target] of targets) if (this.position(partition) < target) return false
    return true
  }

  async close(): Promise<void> {
    await this.consumer.disconnect()
  }

  private add(batch: Batch): void {
    for (const m of batch.messages) {
      this.records.push({
        partition: batch.partition,
        offset: m.offset,
        key: m.key ?? null,
        value: m.value,
      })
      this.lastRecordAt = Date.now()
    }
    this.advance(batch.partition, batch.lastOffset(), batch.highWatermark)
  }

  private advance(partition: number, lastOffset: string, highWatermark: string): void {
    const next = BigInt(lastOffset) + 1n
    if (next > this.position(partition)) this.positions.set(partition, next)
    const hw = BigInt(highWatermark)
    if (hw > this.highWatermark(partition)) this.highWatermarks.set(partition, hw)
  }
}

/** Reads a topic nobody writes to any more, up to its current end. */
async function readToEnd(
  brokers: string,
  topic: string,
  timeoutMs = 60_000,
): Promise<ReadRecord[]> {
  const ends = await lastStableOffsets(brokers, topic)
  const reader = await TopicReader.open(brokers, topic, { readUncommitted: false })
  try {
    if (!(await pollUntil(() => reader.reached(ends), timeoutMs))) {
      throw new Error(`reading ${topic} to its end timed out after ${seconds(timeoutMs)}`)
    }
    return reader.records
  } finally {
    await reader.close()
  }
}

/** The Python of the test tools (scripts/python-deps.sh): KWA_PYTHON or .cache/venv. */
const testPython = (): string =>
  process.env['KWA_PYTHON']?.trim() || path.join(REPO_ROOT, '.cache', 'venv', 'bin', 'python')

/**
 * Every committed record of `topic`, read by librdkafka (confluent-kafka, read_committed): a
 * client that shares no code with kafkajs or its read_committed patch.
 */
export async function readCommittedWithLibrdkafka(
  brokers: string,
  topic: string,
  timeoutMs = 60_000,
): Promise<{ partition: number; offset: string; value: string | null }[]> {
  const script = path.join(REPO_ROOT, 'scripts', 'python', 'read_committed.py')
  const child = spawn(testPython(), [script, brokers, topic, String(timeoutMs / 1000)], {
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  let stdout = ''
  let stderr = ''
  child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()))
  child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()))
  const code = await withTimeout(
    new Promise<number | null>((resolve, reject) => {
      child.once('error', reject)
      child.once('exit', resolve)
    }),
    timeoutMs + 15_000,
    `librdkafka reader of ${topic}`,
  ).catch((error: unknown) => {
    child.kill('SIGKILL')
    throw new Error(
      `librdkafka reader (${testPython()}; run npm run deps:python) failed: ${errorText(error)}`,
    )
  })
  if (code !== 0) {
    throw new Error(`librdkafka reader of ${topic} exited with ${code}: ${stderr.trim()}`)
  }
  return stdout
    .split('\n')
    .filter((line) => line.length > 0)
    .map((line) => {
      const { p, o, v } = JSON.parse(line) as { p: number; o: number; v: string | null }
      return { partition: p, offset: String(o), value: v }
    })
}

/** Records one committed read has and the other lacks or holds otherwise, as `p@offset`. */
function readersDisagree(
  kafkajs: readonly ReadRecord[],
  librdkafka: readonly { partition: number; offset: string; value: string | null }[],
): string[] {
  const other = new Map(librdkafka.map((r) => [`${r.partition}@${r.offset}`, r.value]))
  const differences: string[] = []
  for (const r of kafkajs) {
    const id = `${r.partition}@${r.offset}`
    if (!other.has(id)) differences.push(`${id} only in kafkajs`)
    else if (other.get(id) !== (r.value === null ? null : r.value.toString('hex')))
      differences.push(`${id} differs`)
    other.delete(id)
  }
  for (const id of other.keys()) differences.push(`${id} only in librdkafka`)
  return differences
}

// ---------------------------------------------------------------------------------------------
// Verification
// ---------------------------------------------------------------------------------------------

export interface Counts {
  /** Expected (closed) windows, each compared with the output. */
  windows: number
  missing: number
  /** Windows published more than once. */
  duplicated: number
  /** Windows whose published value differs from the recomputation, plus unexpected windows. */
  wrong: number
}

export interface Verification {
  counts: Counts
  examples: { missing: string[]; duplicated: string[]; wrong: string[] }
  /** Output partitions whose last stable offset stays below the end: a transaction left open. */
  hanging: string[]
  /**
   * Committed output records on which kafkajs and librdkafka (read_committed both) disagree: the
   * comparison rests on kafkajs' reads, so an independent client checks them.
   */
  readersDisagree: string[]
  inputMessages: number
  inputSamples: number
  lateSamples: number
  /** Committed output records (read_committed). */
  outputRecords: number
  /** Output records a read_uncommitted reader sees (aborted and open transactions included). */
  outputRecordsUncommitted: number
  /** How long the output took to reach the expected number of distinct windows. */
  settleMs: number
  /**
   * With a late topic (the idle scenario): its committed records (librdkafka) against the late
   * samples of the recomputation, by input partition, offset, series, event time and value.
   */
  late?: LateCheck
}

export interface LateCheck {
  expected: number
  published: number
  /** Late samples of the recomputation not on the late topic (or fewer times). */
  missing: number
  /** Late records that the recomputation does not have (or more times: a duplicate). */
  extra: number
  examples: string[]
}

/** Where the input resumed after a pause, per partition, and the highest stream time by then. */
export interface IdleResume {
  offsets: Map<number, bigint>
  maxStreamTime: number
}

/**
 * Idle close (--idle-close) for the verifier: stream time also moves by the wall clock, so the
 * recomputation models the advances of each pause (`resumes`; see test/helpers/idle-reference.ts
 * for what it can know about them and how it checks that this is enough), and every window is
 * eventually published (the last ones by the final idle close). Late samples are checked on the
 * late topic.
 */
export interface IdleModel {
  resumes: readonly IdleResume[]
  lateTopic: string
}

/**
 * The input records (any order) as each partition's steps for referenceWithIdle: its messages by
 * offset, with an idle advance before the first record at or beyond each resume offset.
 */
export function inputSteps(
  records: readonly { partition: number; offset: string; value: Buffer | null }[],
  resumes: readonly IdleResume[],
): IdleStep[][] {
  const steps: IdleStep[][] = Array.from({ length: PARTITIONS }, () => [])
  const sorted = [...records].sort(
    (a, b) => a.partition - b.partition || Number(BigInt(a.offset) - BigInt(b.offset)),
  )
  const next = new Map<number, number>()
  const advanceUpTo = (partition: number, offset: bigint | undefined) => {
    const list = steps[partition] as IdleStep[]
    for (let i = next.get(partition) ?? 0; i < resumes.length; i++) {
      const resume = resumes[i] as IdleResume
      const at = resume.offsets.get(partition) ?? 0n
      if (offset !== undefined && offset < at) return
      list.push({ idleAdvance: { maxStreamTime: resume.maxStreamTime } })
      next.set(partition, i + 1)
    }
  }
  for (const record of sorted) {
    if (record.value === null)
      throw new Error(`input ${record.partition}@${record.offset} has no value`)
    advanceUpTo(record.partition, BigInt(record.offset))
    steps[record.partition]?.push({
      offset: Number(record.offset),
      samples: decodeTelemetryBatch(record.value).samples,
    })
  }
  for (let p = 0; p < PARTITIONS; p++) advanceUpTo(p, undefined)
  return steps
}

export interface VerifyOptions {
  /** Give up waiting for the expected number of distinct windows after this long. */
  settleTimeoutMs: number
  /** ... or once no new distinct window appeared for this long. */
  stallMs: number
  /** Quiet period after the last output record before comparing. */
  quietMs: number
  /** How long a transaction may stay open before it counts as hanging. */
  hangingAfterMs: number
}

export const defaultVerify: VerifyOptions = {
  settleTimeoutMs: 90_000,
  stallMs: 30_000,
  quietMs: 3_000,
  hangingAfterMs: 15_000,
}

const EXAMPLES = 5

/**
 * (1) Reads the input topic back and recomputes the expected closed windows with the reference;
 * (2) reads the output read_committed until the expected number of distinct windows is there
 * (bounded) plus a quiet period; (3) checks that no transaction is left hanging: the last stable
 * offset of every output partition must reach the high watermark a read_uncommitted reader sees;
 * (4) compares per (series key, window start).
 */
export async function verify(
  brokers: string,
  inputTopic: string,
  outputTopic: string,
  options: VerifyOptions = defaultVerify,
  idle?: IdleModel,
): Promise<Verification> {
  const input = await readToEnd(brokers, inputTopic)
  const perPartition: Sample[][] = Array.from({ length: PARTITIONS }, () => [])
  const sorted = [...input].sort(
    (a, b) => a.partition - b.partition || Number(BigInt(a.offset) - BigInt(b.offset)),
  )
  for (const record of sorted) {
    if (record.value === null)
      throw new Error(`input ${record.partition}@${record.offset} has no value`)
    perPartition[record.partition]?.push(...decodeTelemetryBatch(record.value).samples)
  }
  // Without idle close, windows close by input only; with it, the recomputation models the idle
  // advances and the final idle close (every window is published).
  const idleRun =
    idle === undefined ? undefined : referenceWithIdle(inputSteps(input, idle.resumes), WINDOW)
  const reference =
    idleRun === undefined
      ? referenceRun(perPartition, WINDOW)
      : { closed: idleRun.windows, late: idleRun.late }
  const expected = reference.closed

  const committed = await TopicReader.open(brokers, outputTopic, { readUncommitted: false })
  let outputRecords: ReadRecord[]
  let settleMs: number
  let open: OpenTransactions
  try {
    settleMs = await awaitDistinctWindows(committed, expected.size, options)
    await pollUntil(() => Date.now() - committed.lastRecordAt >= options.quietMs, 60_000, 250)
    open = await openTransactions(brokers, outputTopic, options.hangingAfterMs)
    // Everything committed is below the LSO: the read_committed reader must get there.
    const lso = open.lastStable
    if (!(await pollUntil(() => committed.reached(lso), 20_000)) && open.hanging.length === 0) {
      const behind = [...lso]
        .filter(([p, end]) => committed.position(p) < end)
        .map(([p, end]) => `p${p} at ${committed.position(p)}/${end}`)
      throw new Error(
        `read_committed reader of ${outputTopic} stuck below the LSO: ${behind.join(', ')}`,
      )
    }
    outputRecords = committed.records
  } finally {
    await committed.close()
  }

  const comparison = compareOutput(expected, outputRecords)
  const independent = await readCommittedWithLibrdkafka(brokers, outputTopic)
  return {
    ...comparison,
    hanging: open.hanging,
    readersDisagree: readersDisagree(outputRecords, independent),
    inputMessages: input.length,
    inputSamples: perPartition.reduce((n, s) => n + s.length, 0),
    lateSamples: reference.late,
    outputRecords: outputRecords.length,
    outputRecordsUncommitted: open.uncommittedRecords,
    settleMs,
    ...(idle !== undefined &&
      idleRun !== undefined && {
        late: await checkLate(brokers, idle.lateTopic, idleRun.lateSamples),
      }),
  }
}

/** The late topic (read by librdkafka, read_committed) against the recomputed late samples. */
async function checkLate(
  brokers: string,
  lateTopic: string,
  expected: readonly { partition: number; offset: number; sample: Sample }[],
): Promise<LateCheck> {
  const id = (partition: number, offset: number, s: Sample) =>
    `${partition}@${offset} ${s.seriesKey} ${new Date(s.eventTime).toISOString()} ${s.value}`
  const published = (await readCommittedWithLibrdkafka(brokers, lateTopic)).map((r) => {
    const late = decodeLateSample(Buffer.from(r.value ?? '', 'hex'))
    return id(late.sourcePartition, late.sourceOffset, late)
  })
  const count = new Map<string, number>()
  for (const l of expected) {
    const key = id(l.partition, l.offset, l.sample)
    count.set(key, (count.get(key) ?? 0) + 1)
  }
  const extra: string[] = []
  for (const key of published) {
    const n = count.get(key) ?? 0
    if (n === 0) extra.push(key)
    else count.set(key, n - 1)
  }
  const missing = [...count].flatMap(([key, n]) => Array.from({ length: n }, () => key))
  return {
    expected: expected.length,
    published: published.length,
    missing: missing.length,
    extra: extra.length,
    examples: [
      ...missing.slice(0, EXAMPLES).map((k) => `missing ${k}`),
      ...extra.slice(0, EXAMPLES).map((k) => `extra ${k}`),
    ],
  }
}

/**
 * Waits until `expected` distinct windows were read, or no new one came for `stallMs`, or
 * `settleTimeoutMs` passed; returns how long it waited.
 */
async function awaitDistinctWindows(
  reader: TopicReader,
  expected: number,
  options: VerifyOptions,
): Promise<number> {
  const started = Date.now()
  const distinct = new Set<string>()
  let counted = 0
  let lastNewAt = Date.now()
  const count = (): number => {
    for (; counted < reader.records.length; counted++) {
      const value = reader.records[counted]?.value
      if (value === null || value === undefined) continue
      try {
        const w = decodeWindowAggregate(value)
        const before = distinct.size
        distinct.add(windowId(w.seriesKey, w.windowStart))
        if (distinct.size > before) lastNewAt = Date.now()
      } catch {
        // compareOutput() counts it as wrong
      }
    }
    return distinct.size
  }
  await pollUntil(
    () =>
      count() >= expected ||
      Date.now() - lastNewAt > options.stallMs ||
      Date.now() - started > options.settleTimeoutMs,
    options.settleTimeoutMs + 1_000,
    250,
  )
  return Date.now() - started
}

export interface OpenTransactions {
  /** One line per output partition whose LSO stayed below its high watermark. */
  hanging: string[]
  /** The last stable offsets at the end of the check. */
  lastStable: Map<number, bigint>
  /** Records a read_uncommitted reader saw. */
  uncommittedRecords: number
}

/**
 * A read_uncommitted reader finds each partition's high watermark (aborted and open transactions
 * included); the LSO (READ_COMMITTED ListOffsets) must reach it within `hangingAfterMs`, or a
 * transaction is left open and pins read_committed readers below it.
 */
export async function openTransactions(
  brokers: string,
  topic: string,
  hangingAfterMs: number,
): Promise<OpenTransactions> {
  const raw = await TopicReader.open(brokers, topic, { readUncommitted: true })
  try {
    let lso = await lastStableOffsets(brokers, topic)
    await pollUntil(
      () =>
        raw.reached(lso) &&
        Date.now() - raw.lastRecordAt > 1_500 &&
        [...lso.keys()].every((p) => raw.position(p) >= raw.highWatermark(p)),
      30_000,
    )
    const ends = new Map([...lso.keys()].map((p) => [p, raw.highWatermark(p)] as const))
    const open = (): number[] =>
      [...ends].filter(([p, end]) => (lso.get(p) ?? 0n) < end).map(([p]) => p)
    await pollUntil(
      async () => {
        lso = await lastStableOffsets(brokers, topic)
        return open().length === 0
      },
      hangingAfterMs,
      1_000,
    )
    const hanging = open().map(
      (p) =>
        `output partition ${p}: last stable offset ${lso.get(p)} < high watermark ` +
        `${ends.get(p)} for ${seconds(hangingAfterMs)}: a transaction is left open`,
    )
    return { hanging, lastStable: lso, uncommittedRecords: raw.records.length }
  } finally {
    await raw.close()
  }
}

/** Every published window against the recomputation, per (series key, window start). */
export function compareOutput(
  expected: Map<string, RefWindow>,
  records: readonly {
    partition: number
    offset: string
    key: Buffer | null
    value: Buffer | null
  }[],
): Pick<Verification, 'counts' | 'examples'> {
  const copies = new Map<string, WindowAggregate[]>()
  const examples = { missing: [] as string[], duplicated: [] as string[], wrong: [] as string[] }
  let wrong = 0
  const badRecord = (text: string) => {
    wrong++
    if (examples.wrong.length < EXAMPLES) examples.wrong.push(text)
  }
  for (const r of records) {
    let w: WindowAggregate
    try {
      if (r.value === null) throw new Error('null value')
      w = decodeWindowAggregate(r.value)
    } catch (error) {
      badRecord(`output ${r.partition}@${r.offset}: not a WindowAggregate (${errorText(error)})`)
      continue
    }
    if (r.key?.toString('utf8') !== w.seriesKey) {
      badRecord(
        `output ${r.partition}@${r.offset}: key ${String(r.key)} != seriesKey ${w.seriesKey}`,
      )
    }
    const id = windowId(w.seriesKey, w.windowStart)
    const list = copies.get(id)
    if (list === undefined) copies.set(id, [w])
    else list.push(w)
  }

  let missing = 0
  let duplicated = 0
  const label = (key: string, start: number) => `${key} @ ${new Date(start).toISOString()}`
  for (const [id, want] of expected) {
    const got = copies.get(id) ?? []
    if (got.length === 0) {
      missing++
      if (examples.missing.length < EXAMPLES) examples.missing.push(label(want.key, want.start))
      continue
    }
    if (got.length > 1) {
      duplicated++
      if (examples.duplicated.length < EXAMPLES)
        examples.duplicated.push(`${label(want.key, want.start)}: ${got.length} copies`)
    }
    const bad = got.find((w) => !matches(w, want))
    if (bad !== undefined) {
      wrong++
      if (examples.wrong.length < EXAMPLES)
        examples.wrong.push(
          `${label(want.key, want.start)}: got ${summary(bad)}, want ${summary({ ...want, windowEnd: want.end })}`,
        )
    }
  }
  for (const [id, got] of copies) {
    if (expected.has(id)) continue
    const w = got[0]
    if (w === undefined) continue
    wrong++
    if (examples.wrong.length < EXAMPLES)
      examples.wrong.push(`${label(w.seriesKey, w.windowStart)}: unexpected window ${summary(w)}`)
  }
  return { counts: { windows: expected.size, missing, duplicated, wrong }, examples }
}

function matches(w: WindowAggregate, want: RefWindow): boolean {
  const mean = want.sum / want.count
  return (
    w.windowEnd === want.end &&
    w.count === want.count &&
    w.sum === want.sum &&
    w.min === want.min &&
    w.max === want.max &&
    Math.abs(w.mean - mean) <= 1e-9 * Math.max(1, Math.abs(mean))
  )
}

const summary = (w: {
  windowEnd: number
  count: number
  sum: number
  mean: number
  min: number
  max: number
}): string =>
  `{n=${w.count} sum=${w.sum} mean=${w.mean} min=${w.min} max=${w.max} end=${w.windowEnd}}`

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

export interface HarnessOptions {
  /** Broker version (default KWA_KAFKA_VERSION or 3.9.2). */
  kafkaVersion?: string
  /** `--delivery` for the replicas; null omits the flag (default: KWA_CHAOS_DELIVERY). */
  delivery?: Delivery | null
  /** Keep the logs of passing scenarios too (default KWA_CHAOS_KEEP_LOGS=1). */
  keepLogs?: boolean
  /** Base seed (default KWA_CHAOS_SEED or a fixed one). */
  seed?: number
  /** Every event line as it happens (default: nothing). */
  onEvent?: (line: string) => void
}

/** Owns the chaos broker and the log directory; runs scenarios one after the other. */
export class ChaosHarness {
  private runs = 0
  private failures = 0
  private readonly scenarios = new Set<Scenario>()

  private constructor(
    readonly broker: LocalBroker,
    readonly logRoot: string,
    readonly delivery: Delivery | null,
    private readonly keepLogs: boolean,
    private readonly seed: number,
    private readonly onEvent: (line: string) => void,
  ) {}

  static async start(options: HarnessOptions = {}): Promise<ChaosHarness> {
    const logRoot = await fs.mkdtemp(path.join(os.tmpdir(), 'kwa-chaos-'))
    const onEvent = options.onEvent ?? (() => undefined)
    const version = options.kafkaVersion ?? defaultKafkaVersion()
    onEvent(`chaos logs in ${logRoot}; starting Kafka ${version}`)
    const broker = await startLocalBroker({ version, dataDir: path.join(logRoot, 'broker') })
    onEvent(`broker ${broker.brokers} ready (log ${broker.logFile})`)
    const envSeed = Number(process.env['KWA_CHAOS_SEED'])
    return new ChaosHarness(
      broker,
      logRoot,
      options.delivery === undefined ? deliveryFromEnv() : options.delivery,
      options.keepLogs ?? process.env['KWA_CHAOS_KEEP_LOGS'] === '1',
      options.seed ?? (Number.isInteger(envSeed) ? envSeed : 0x5eed),
      onEvent,
    )
  }

  /**
   * A harness on a broker that someone else runs (e.g. the integration tests' shared one): the
   * scenarios that kill or restart the broker cannot run on it; close() leaves it running.
   */
  static async attach(brokers: string, options: HarnessOptions = {}): Promise<ChaosHarness> {
    const logRoot = await fs.mkdtemp(path.join(os.tmpdir(), 'kwa-chaos-'))
    const notOurs = (what: string) => () =>
      Promise.reject(new Error(`cannot ${what} a broker the harness did not start`))
    const broker: LocalBroker = {
      brokers,
      version: 'external',
      port: Number(brokers.split(':').pop()),
      controllerPort: 0,
      dataDir: '',
      logFile: '(not started by the harness)',
      stop: notOurs('stop'),
      kill: notOurs('kill'),
      restart: notOurs('restart'),
      signal: () => false,
      pid: () => undefined,
      cleanup: () => Promise.resolve(),
    }
    const envSeed = Number(process.env['KWA_CHAOS_SEED'])
    return new ChaosHarness(
      broker,
      logRoot,
      options.delivery === undefined ? deliveryFromEnv() : options.delivery,
      options.keepLogs ?? process.env['KWA_CHAOS_KEEP_LOGS'] === '1',
      options.seed ?? (Number.isInteger(envSeed) ? envSeed : 0x5eed),
      options.onEvent ?? (() => undefined),
    )
  }

  /**
   * One scenario: fresh topics and group, the input producer running throughout, `body` for the
   * disruption, then a drain (every replica resumed and restarted, the final messages) and the
   * verification. Replicas are stopped whatever happens.
   */
  async run(
    name: string,
    body: (s: Scenario) => Promise<void>,
    options: ScenarioOptions = {},
  ): Promise<ScenarioResult> {
    const index = ++this.runs
    const started = Date.now()
    const seed = (this.seed + seedOf(name) + index * 7919) >>> 0
    const id = `${name}-${Date.now().toString(36)}-${randomBytes(3).toString('hex')}`
    const logDir = path.join(this.logRoot, `${String(index).padStart(3, '0')}-${name}`)
    await fs.mkdir(logDir, { recursive: true })
    const inputTopic = `chaos-in-${id}`
    const outputTopic = `chaos-out-${id}`
    const lateTopic = `chaos-late-${id}`
    const idleClose = options.idleClose
    const topics = [inputTopic, outputTopic, ...(idleClose !== undefined ? [lateTopic] : [])]
    await withAdmin(this.broker.brokers, (admin) =>
      admin.createTopics({
        waitForLeaders: true,
        topics: topics.map((topic) => ({ topic, numPartitions: PARTITIONS })),
      }),
    )
    const eventLog = createWriteStream(path.join(logDir, 'events.log'))
    const s = new Scenario(
      name,
      seed,
      this.broker,
      inputTopic,
      outputTopic,
      `chaos-group-${id}`,
      logDir,
      this.delivery,
      (line) => {
        eventLog.write(`${line}\n`)
        this.onEvent(line)
      },
      idleClose === undefined
        ? []
        : ['--idle-close', durationFlag(idleClose.idleCloseMs), '--late-topic', lateTopic],
    )
    this.scenarios.add(s)
    s.note(
      `seed ${seed}, topics ${inputTopic} -> ${outputTopic}, delivery ${this.delivery ?? '(flag omitted)'}, logs ${logDir}`,
    )
    const input = new InputProducer(
      this.broker.brokers,
      inputTopic,
      { ...defaultInput, ...options.input },
      seed,
      (text) => s.note(text),
    )
    s.input = input
    let passed = false
    try {
      if (idleClose === undefined) await input.start()
      else await input.connect() // the body starts the flow
      s.startSupervisor()
      await body(s)

      s.note('drain: replicas resumed and supervised, input stopped, final messages sent')
      s.ensureActive()
      await input.stop()
      await input.sendFinal()
      const verification = await verify(
        this.broker.brokers,
        inputTopic,
        outputTopic,
        { ...defaultVerify, ...options.verify },
        idleClose === undefined ? undefined : { resumes: s.idleResumes, lateTopic },
      )
      const c = verification.counts
      const late = verification.late
      passed =
        c.missing === 0 &&
        c.duplicated === 0 &&
        c.wrong === 0 &&
        verification.hanging.length === 0 &&
        verification.readersDisagree.length === 0 &&
        (late === undefined || late.missing + late.extra === 0)
      s.note(
        `verified: ${c.windows} windows, ${c.missing} missing, ${c.duplicated} duplicated, ` +
          `${c.wrong} wrong, ${verification.hanging.length} hanging ` +
          `(settled in ${seconds(verification.settleMs)})` +
          (late === undefined
            ? ''
            : `; late topic: ${late.published} records for ${late.expected} late samples, ` +
              `${late.missing} missing, ${late.extra} extra`),
      )
      const warnings = s.idleReplicas()
      for (const warning of warnings) s.note(`warning: ${warning}`)
      await s.stopAll()
      if (!passed) this.failures++
      return {
        name,
        seed,
        passed,
        durationMs: Date.now() - started,
        verification,
        input: input.stats,
        selfKills: s.replicas.reduce((n, r) => n + r.selfKills, 0),
        selfExits: s.replicas.flatMap((r) =>
          r.exits
            .filter((e) => e.cause === 'crash' || e.cause === 'exit')
            .map((e) => `${r.name}: ${describeExit(e.exit)} after ${seconds(e.afterMs)}`),
        ),
        replicas: s.replicas.map(summarise),
        events: s.events,
        logDir,
        excerpts: passed ? '' : excerpts(s.replicas),
        warnings,
      }
    } catch (error) {
      this.failures++
      s.note(`scenario failed: ${errorText(error)}`)
      await s.stopAll().catch(() => undefined)
      throw new Error(
        `chaos scenario ${name} failed: ${errorText(error)}\nlogs: ${logDir}\n` +
          `events:\n${s.events.join('\n')}\n${excerpts(s.replicas)}`,
        { cause: error },
      )
    } finally {
      await input.disconnect()
      await new Promise<void>((resolve) => eventLog.end(() => resolve()))
      this.scenarios.delete(s)
      if (passed && !this.keepLogs) {
        await this.forget(logDir, topics, s.groupId)
      }
    }
  }

  /** Stops what is left, the broker included; deletes the logs unless something failed. */
  async close(): Promise<void> {
    await Promise.all([...this.scenarios].map((s) => s.stopAll().catch(() => undefined)))
    await this.broker.cleanup()
    if (this.failures === 0 && !this.keepLogs) {
      await fs.rm(this.logRoot, { recursive: true, force: true })
    } else {
      this.onEvent(`chaos logs kept in ${this.logRoot}`)
    }
  }

  /** A passing scenario leaves nothing behind: its logs and topics (its changelog too) go. */
  private async forget(logDir: string, topics: string[], groupId: string): Promise<void> {
    await fs.rm(logDir, { recursive: true, force: true })
    await withAdmin(this.broker.brokers, async (admin) => {
      const existing = await admin.listTopics()
      const ours = existing.filter((t) => topics.includes(t) || t.startsWith(groupId))
      if (ours.length > 0) await admin.deleteTopics({ topics: ours })
    }).catch(() => undefined)
  }
}

function summarise(r: Replica): ReplicaSummary {
  return {
    name: r.name,
    logFile: r.logFile,
    incarnations: r.incarnations,
    exits: r.exits.map((e) => `${e.cause} (${describeExit(e.exit)}) after ${seconds(e.afterMs)}`),
    errorLines: r.errorLines,
    consumerCrashes: r.consumerCrashes,
    idleAdvances: r.idleAdvances,
  }
}

function excerpts(replicas: readonly Replica[]): string {
  return replicas
    .map((r) => `--- ${r.name}: ${r.logFile} (last lines) ---\n${r.recentLines(12)}`)
    .join('\n')
}

function describeReplica(x: ReplicaSummary): string {
  const notes = [
    ...x.exits,
    ...(x.consumerCrashes > 0 ? [`${x.consumerCrashes} kafkajs consumer crash(es)`] : []),
    ...(x.errorLines > 0 ? [`${x.errorLines} error lines`] : []),
  ]
  return `${x.name} ×${x.incarnations}${notes.length > 0 ? ` [${notes.join('; ')}]` : ''}`
}

/** A multi-line human summary of a result. */
export function formatResult(r: ScenarioResult): string {
  const v = r.verification
  const c = v.counts
  const lines = [
    `${r.name}: ${r.passed ? 'PASS' : 'FAIL'} in ${seconds(r.durationMs)} (seed ${r.seed}) — ` +
      `${c.windows} windows checked, ${c.missing} missing, ${c.duplicated} duplicated, ${c.wrong} wrong` +
      (v.hanging.length > 0 ? `, ${v.hanging.length} hanging transaction(s)` : ''),
    `  input ${v.inputMessages} messages (${r.input.duplicates} sent twice, ${r.input.sendFailures} failed sends), ` +
      `${v.inputSamples} samples, ${v.lateSamples} late; output ${v.outputRecords} committed / ` +
      `${v.outputRecordsUncommitted} uncommitted records; settled in ${seconds(v.settleMs)}`,
    `  replicas: ${r.replicas.map(describeReplica).join(', ')}`,
  ]
  for (const [kind, list] of Object.entries(v.examples)) {
    if (list.length > 0) lines.push(`  ${kind}: ${list.join(' | ')}`)
  }
  if (v.late !== undefined) {
    lines.push(
      `  late topic: ${v.late.published} records for ${v.late.expected} late samples, ` +
        `${v.late.missing} missing, ${v.late.extra} extra` +
        (v.late.examples.length > 0 ? `: ${v.late.examples.join(' | ')}` : ''),
    )
  }
  lines.push(...v.hanging.map((h) => `  hanging: ${h}`))
  if (v.readersDisagree.length > 0) {
    lines.push(
      `  kafkajs and librdkafka disagree on ${v.readersDisagree.length} committed record(s): ` +
        v.readersDisagree.slice(0, 5).join(', '),
    )
  }
  lines.push(...r.warnings.map((w) => `  warning: ${w}`))
  if (!r.passed) lines.push(`  logs: ${r.logDir}`, r.excerpts)
  return lines.join('\n')
}

// ---------------------------------------------------------------------------------------------
// The scenarios
// ---------------------------------------------------------------------------------------------

/**
 * (a) kill -9 between send and commit, repeatedly: one replica runs with the service's fault hook
 * (KWA_FAULT_CRASH_AFTER_SEND: SIGKILL itself after sending a batch's records inside its
 * transaction, before committing) and is restarted each time it dies; a few external kill -9s
 * hit random replicas at random moments. The faulty replica is retired before the drain.
 */
export function killBetweenSendAndCommit(
  h: ChaosHarness,
  { disruptMs = 30_000, crashProbability = 0.1, externalKills = 2 } = {},
): Promise<ScenarioResult> {
  return h.run('kill-between-send-and-commit', async (s) => {
    s.startReplica()
    const faulty = s.startReplica({
      env: { KWA_FAULT_CRASH_AFTER_SEND: String(crashProbability) },
    })
    await s.waitForGroup()
    await s.timeline(
      disruptMs,
      s.randomMoments(externalKills, disruptMs).map((at) => [at, () => s.killRandomReplica()]),
    )
    await faulty.kill({ retire: true })
    s.startReplica()
  })
}

/** (b) SIGTERM a replica mid-stream, later start a new one; twice. */
export function sigtermMidStream(
  h: ChaosHarness,
  { disruptMs = 25_000 } = {},
): Promise<ScenarioResult> {
  return h.run('sigterm-mid-stream', async (s) => {
    const first = s.startReplica()
    const second = s.startReplica()
    await s.waitForGroup()
    await s.timeline(disruptMs, [
      [disruptMs * 0.15, () => first.stop()],
      [disruptMs * 0.4, () => s.startReplica()],
      [disruptMs * 0.6, () => second.stop()],
      [disruptMs * 0.8, () => s.startReplica()],
    ])
  })
}

/** (c) Scale 1 -> 3 -> 1 replicas while producing. */
export function scaleOutAndIn(
  h: ChaosHarness,
  { disruptMs = 25_000 } = {},
): Promise<ScenarioResult> {
  return h.run('scale-1-3-1', async (s) => {
    await s.scaleTo(1)
    await s.waitForGroup()
    await s.timeline(disruptMs, [
      [disruptMs * 0.2, () => s.scaleTo(3)],
      [disruptMs * 0.6, () => s.scaleTo(1)],
    ])
  })
}

/**
 * (d) SIGSTOP a replica for longer than the session timeout, then SIGCONT: the group moves on
 * without it, and when it wakes up its late writes must be fenced.
 */
export function zombieReplica(
  h: ChaosHarness,
  { disruptMs = 25_000, pauseMs = 10_000 } = {},
): Promise<ScenarioResult> {
  return h.run('zombie-sigstop', async (s) => {
    const zombie = s.startReplica()
    s.startReplica()
    await s.waitForGroup()
    const at = Math.min(3_000, Math.max(0, disruptMs - pauseMs - 6_000))
    await s.timeline(disruptMs, [
      [at, () => zombie.pause()],
      [at + pauseMs, () => zombie.resume()],
    ])
  })
}

/**
 * (e) kill -9 the broker and restart it on the same data dir while replicas run. Input stalls
 * while the broker is down (event time is synthetic), so this one needs a longer disruption.
 */
export function brokerCrash(
  h: ChaosHarness,
  { disruptMs = 30_000, downMs = 3_000 } = {},
): Promise<ScenarioResult> {
  return h.run('broker-kill-9', async (s) => {
    s.startReplica()
    s.startReplica()
    await s.waitForGroup()
    await s.timeline(disruptMs, [[disruptMs * 0.25, () => s.killBroker(downMs)]])
  })
}

/**
 * (f) Duplicate and out-of-order input: messages sent twice, older messages resent, 40% of the
 * samples up to 1.5 s early (some beyond the grace), and one replica kill -9 midway so the
 * duplicates also go through a restore.
 */
export function duplicateAndOutOfOrderInput(
  h: ChaosHarness,
  { disruptMs = 20_000 } = {},
): Promise<ScenarioResult> {
  return h.run(
    'duplicate-out-of-order-input',
    async (s) => {
      s.startReplica()
      s.startReplica()
      await s.waitForGroup()
      await s.timeline(disruptMs, [[disruptMs * 0.5, () => s.killRandomReplica()]])
    },
    {
      input: {
        duplicateFraction: 0.1,
        replayFraction: 0.05,
        outOfOrderFraction: 0.4,
        maxDelayMs: 1_500,
      },
    },
  )
}

/**
 * (g) SIGSTOP the broker mid-stream (a long GC pause, a frozen VM), then SIGCONT: every client
 * times out at once; replicas must ride it out or exit and be restarted, never hang.
 */
export function brokerPause(
  h: ChaosHarness,
  { disruptMs = 60_000, pauseMs = 40_000 } = {},
): Promise<ScenarioResult> {
  return h.run('broker-sigstop', async (s) => {
    s.startReplica()
    s.startReplica()
    await s.waitForGroup()
    const at = Math.max(2_000, Math.min(5_000, disruptMs - pauseMs - 5_000))
    await s.timeline(disruptMs, [[at, () => s.pauseBroker(pauseMs)]])
  })
}

/**
 * (h) Three replicas started at the same moment against a broker that has just (re)started, its
 * group and transaction coordinators still loading; the side topics do not exist yet, so all
 * three race to create them. No replica may die of it.
 */
export function coldStart(h: ChaosHarness, { disruptMs = 20_000 } = {}): Promise<ScenarioResult> {
  return h.run('cold-start-3-replicas', async (s) => {
    await s.restartBroker()
    s.startReplica()
    s.startReplica()
    s.startReplica()
    await s.timeline(disruptMs, [])
    await s.waitForGroup()
  })
}

/**
 * (i) The broker starved of CPU (busy loops pinned on its CPU) for a minute, with replicas
 * killed and restarted during it.
 */
export function brokerStarved(
  h: ChaosHarness,
  { disruptMs = 60_000, loops = 3, kills = 2 } = {},
): Promise<ScenarioResult> {
  return h.run('broker-cpu-starved', async (s) => {
    s.startReplica()
    s.startReplica()
    await s.waitForGroup()
    s.starveCpu(loops, { broker: true })
    await s.timeline(
      disruptMs,
      s.randomMoments(kills, disruptMs).map((at) => [at, () => s.killRandomReplica()]),
    )
  })
}

/**
 * (j) A replica cut off for longer than the session timeout (SIGSTOP: no heartbeat, no I/O, its
 * sockets open) while another takes over; then the other one; CPU starved throughout.
 */
export function replicaCutOff(
  h: ChaosHarness,
  { disruptMs = 40_000, pauseMs = 2.5 * SESSION_TIMEOUT_MS } = {},
): Promise<ScenarioResult> {
  return h.run('replica-cut-off', async (s) => {
    const first = s.startReplica()
    const second = s.startReplica()
    await s.waitForGroup()
    s.starveCpu(2)
    const gap = Math.max(1_000, (disruptMs - 2 * pauseMs) / 3)
    await s.timeline(disruptMs, [
      [gap, () => first.pause()],
      [gap + pauseMs, () => first.resume()],
      [2 * gap + pauseMs, () => second.pause()],
      [2 * gap + 2 * pauseMs, () => second.resume()],
    ])
  })
}

/**
 * (k) Issue 10's scenario: two replicas started at the same moment on a freshly started broker,
 * CPU starved by two busy loops, a third replica added, one killed -9 and replaced, one SIGSTOPped
 * past the session timeout (a zombie), one stopped with SIGTERM. Under starvation a new owner
 * used to read the changelog of the previous owner's last transaction and, from the group, the
 * offset from before it, and counted that input twice.
 */
export function starvedRebalances(
  h: ChaosHarness,
  { disruptMs = 60_000 } = {},
): Promise<ScenarioResult> {
  return h.run('starved-rebalances', async (s) => {
    await s.restartBroker()
    s.starveCpu(2)
    const first = s.startReplica()
    const second = s.startReplica()
    let third: Replica | undefined
    const at = (fraction: number) => Math.round(disruptMs * fraction)
    await s.timeline(disruptMs, [
      [at(8 / 60), () => (third = s.startReplica())],
      [at(16 / 60), () => first.kill({ retire: true })],
      [at(22 / 60), () => s.startReplica()],
      [at(28 / 60), () => second.pause()],
      [at(28 / 60) + Math.max(2 * SESSION_TIMEOUT_MS, at(16 / 60)), () => second.resume()],
      [at(50 / 60), () => third?.stop()],
    ])
  })
}

/**
 * (l) Rolling restart under load, as an orchestrator does it: `replicas` replicas, then each in
 * turn is stopped with SIGTERM (waited for until it exited: the service finishes its batch in
 * flight, commits and leaves the group), a replacement is started, and the next one is stopped
 * only once the group has rebalanced and every replica, the replacement included, answers
 * /readyz (joined, every owned partition restored, the partitions covered exactly once). A
 * group that does not get ready within `readyTimeoutMs` fails the scenario (the rollout would
 * stall). `dwellMs` of input is processed between steps (pacing, not a correctness condition).
 */
export function rollingRestart(
  h: ChaosHarness,
  { replicas = 3, dwellMs = 4_000, readyTimeoutMs = 60_000 } = {},
): Promise<ScenarioResult> {
  return h.run('rolling-restart', async (s) => {
    // Beyond the replicas' own --shutdown-timeout (default 30 s), after which they exit anyway.
    const stopTimeoutMs = 35_000
    const requireReady = async (what: string) => {
      if (!(await s.waitForReady(readyTimeoutMs))) {
        throw new Error(`the group did not get ready within ${seconds(readyTimeoutMs)} ${what}`)
      }
    }
    const original = Array.from({ length: replicas }, () => s.startReplica())
    await requireReady('at start')
    for (const [i, old] of original.entries()) {
      await s.sleep(dwellMs)
      s.note(`rolling restart ${i + 1}/${replicas}: ${old.name}`)
      await old.stop(stopTimeoutMs)
      const replacement = s.startReplica()
      await requireReady(`after ${replacement.name} replaced ${old.name}`)
    }
    await s.sleep(dwellMs)
  })
}

/**
 * (m) Idle then resume, replicas with --idle-close: input flows, then stops for longer than
 * idle-close; one replica is killed -9 before the idle close is due and another right after it
 * logged its first idle advance (advances of its other partitions in flight), both restarted by
 * the supervisor; every window of the input must then come out with no more input (the idle
 * close, by whichever replica owns the partition by then). Then the input resumes with samples
 * for windows the idle close closed (late) and event time beyond any stream time an advance can
 * have reached (resumeInput()), and the usual drain and verification, the recomputation modelling
 * the idle close and the late topic checked sample by sample. The input starts only once the
 * group is ready and resumes only once it is ready again: a rebalance while input flows stalls a
 * partition, and a stall longer than idle-close closes windows by the wall clock (as documented),
 * which no recomputation from the input can know.
 */
export function idleThenResume(
  h: ChaosHarness,
  { steadyMs = 12_000, idleCloseMs = 3_000 } = {},
): Promise<ScenarioResult> {
  return h.run(
    'idle-then-resume',
    async (s) => {
      s.startReplica()
      s.startReplica()
      if (!(await s.waitForReady(60_000))) {
        throw new Error('the group did not get ready within 60 s, before any input')
      }
      s.startInput()
      await s.sleep(steadyMs)
      const advances = () => s.replicas.reduce((n, r) => n + r.idleAdvances, 0)
      const flowing = advances()
      if (flowing > 0) {
        s.note(`${flowing} idle advance(s) while the input flowed: a partition stalled that long`)
      }
      await s.pauseInput()
      const paused = new Map(s.replicas.map((r) => [r, r.idleAdvances]))
      await s.sleep(idleCloseMs / 2)
      await s.killRandomReplica()
      await s.until('an idle advance after the pause', () => advances() > flowing, 60_000)
      await s.replicas.find((r) => r.idleAdvances > (paused.get(r) ?? 0))?.kill()
      await s.awaitIdleClose(90_000)
      if (!(await s.waitForReady(60_000))) {
        throw new Error('the group did not get ready within 60 s after the idle close')
      }
      await s.resumeInput()
      await s.sleep(steadyMs)
    },
    { idleClose: { idleCloseMs } },
  )
}

/** Every scenario, in rotation order, with its default durations scaled by `factor`. */
export const scenarios: readonly {
  name: string
  run: (h: ChaosHarness, factor: number) => Promise<ScenarioResult>
}[] = [
  { name: 'a', run: (h, f) => killBetweenSendAndCommit(h, { disruptMs: 30_000 * f }) },
  { name: 'b', run: (h, f) => sigtermMidStream(h, { disruptMs: 25_000 * f }) },
  { name: 'c', run: (h, f) => scaleOutAndIn(h, { disruptMs: 25_000 * f }) },
  { name: 'd', run: (h, f) => zombieReplica(h, { disruptMs: Math.max(20_000, 25_000 * f) }) },
  { name: 'e', run: (h, f) => brokerCrash(h, { disruptMs: 30_000 * f }) },
  { name: 'f', run: (h, f) => duplicateAndOutOfOrderInput(h, { disruptMs: 20_000 * f }) },
  { name: 'g', run: (h, f) => brokerPause(h, { disruptMs: Math.max(50_000, 60_000 * f) }) },
  { name: 'h', run: (h, f) => coldStart(h, { disruptMs: 20_000 * f }) },
  { name: 'i', run: (h, f) => brokerStarved(h, { disruptMs: 60_000 * f }) },
  { name: 'j', run: (h, f) => replicaCutOff(h, { disruptMs: Math.max(40_000, 40_000 * f) }) },
  { name: 'k', run: (h, f) => starvedRebalances(h, { disruptMs: 60_000 * f }) },
  { name: 'l', run: (h, f) => rollingRestart(h, { dwellMs: 4_000 * f }) },
  { name: 'm', run: (h, f) => idleThenResume(h, { steadyMs: 12_000 * f }) },
]
