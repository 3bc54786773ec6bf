// Aggregator replicas as OS processes: launch, log parsing, signals, /readyz, supervised restart.
import { spawn, type ChildProcess } from 'node:child_process'
import { createWriteStream, type WriteStream } from 'node:fs'
import { createInterface } from 'node:readline'
import {
  SESSION_TIMEOUT_MS,
  WINDOW,
  durationFlag,
  errorText,
  seconds,
  withTimeout,
  type Delivery,
} from './common'
import { describeExit, pdeathsig, trackChild, type ProcessExit } from './processes'

// ---------------------------------------------------------------------------------------------
// Replica processes
// ---------------------------------------------------------------------------------------------

export interface ReplicaLaunch {
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
