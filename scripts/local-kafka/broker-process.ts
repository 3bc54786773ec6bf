// The broker JVM's lifecycle: start and wait until ready, stop/kill/signal, unexpected exits.
import { type ChildProcess } from 'node:child_process'
import { Kafka, logLevel } from 'kafkajs'
import { type BrokerLayout, jvmArgs } from './config'
import { spawnJvm } from './jvm'
import { FileTail, LineSplitter, RecentLines } from './logs'
import type { LocalBrokerOptions, ProcessExit } from './types'
import { Deferred, errorText, fileSize, LOG_TAIL_LINES, waitForExit, withTimeout } from './util'

const READY_TIMEOUT_MS = 90_000
const STOP_TIMEOUT_MS = 30_000
const DEFAULT_HEAP_MB = 512
const READY_LINE = /Kafka\s*Server.*started/

/** One JVM at a time for a given layout; start() can be called again after stop()/kill(). */
export class BrokerProcess {
  private child: ChildProcess | undefined
  private expectingExit = false
  /** Set once ready: an exit before that is reported by start() itself, not onUnexpectedExit. */
  private ready = false
  private tail: FileTail | undefined
  private readonly recent = new RecentLines(LOG_TAIL_LINES)

  constructor(
    private readonly layout: BrokerLayout,
    private readonly libsDir: string,
    private readonly options: LocalBrokerOptions,
  ) {}

  async start(): Promise<void> {
    if (this.isRunning()) return
    const readyLine = new Deferred<void>()
    const logOffset = await fileSize(this.layout.logFile) // restarts append: ignore older lines
    this.tail = new FileTail(this.layout.logFile, logOffset, (line) => {
      this.handleLine(line)
      if (READY_LINE.test(line)) readyLine.resolve()
    })
    this.tail.start()

    const heapMb = this.options.heapMb ?? DEFAULT_HEAP_MB
    const args = [
      ...jvmArgs(this.layout, this.libsDir, heapMb),
      'kafka.Kafka',
      this.layout.propertiesFile,
    ]
    const child = await spawnJvm(args, this.layout.dataDir)
    this.child = child
    this.expectingExit = false
    this.ready = false
    this.pipeOutput(child)
    const exited = waitForExit(child)
    child.once('error', (error) =>
      readyLine.reject(new Error(`Could not start java: ${error.message}`)),
    )
    void exited.then((exit) => this.onExit(child, exit, readyLine))

    try {
      await withTimeout(
        readyLine.promise,
        this.options.readyTimeoutMs ?? READY_TIMEOUT_MS,
        'readiness',
      )
      await assertAnswersMetadata(`127.0.0.1:${this.layout.port}`)
    } catch (error) {
      await this.kill()
      throw new Error(
        `Kafka ${this.layout.version} broker on 127.0.0.1:${this.layout.port} did not become ready: ` +
          `${errorText(error)}\n--- broker log tail (${this.layout.logFile}) ---\n${await this.logTail()}`,
      )
    }
    this.ready = true
    if (!this.options.onLog) this.stopTail() // keep polling only if someone listens
  }

  async stop(): Promise<void> {
    await this.terminate('SIGTERM', STOP_TIMEOUT_MS)
  }

  async kill(): Promise<void> {
    await this.terminate('SIGKILL', STOP_TIMEOUT_MS)
  }

  pid(): number | undefined {
    return this.isRunning() ? this.child?.pid : undefined
  }

  signal(signal: NodeJS.Signals): boolean {
    if (!this.isRunning()) return false
    return this.child?.kill(signal) ?? false
  }

  private async terminate(signal: NodeJS.Signals, timeoutMs: number): Promise<void> {
    const child = this.child
    if (!child || !this.isRunning()) return
    this.expectingExit = true
    child.kill('SIGCONT') // a SIGSTOPped JVM would not handle SIGTERM
    child.kill(signal)
    const exited = await withTimeout(waitForExit(child), timeoutMs, `exit after ${signal}`).then(
      () => true,
      () => false,
    )
    if (!exited) {
      child.kill('SIGKILL')
      await withTimeout(waitForExit(child), 10_000, 'exit after SIGKILL').catch(() => undefined)
    }
    await this.tail?.poll() // deliver the shutdown lines to onLog
    this.stopTail()
  }

  private isRunning(): boolean {
    const child = this.child
    // No pid: spawn itself failed (e.g. java not found), there is nothing to stop.
    return child?.pid !== undefined && child.exitCode === null && child.signalCode === null
  }

  private onExit(child: ChildProcess, exit: ProcessExit, readyLine: Deferred<void>): void {
    readyLine.reject(new Error(`the JVM exited early (code ${exit.code}, signal ${exit.signal})`))
    if (this.child !== child || this.expectingExit || !this.ready) return
    this.stopTail()
    this.options.onUnexpectedExit?.(exit)
  }

  private pipeOutput(child: ChildProcess): void {
    for (const stream of [child.stdout, child.stderr]) {
      if (!stream) continue
      const splitter = new LineSplitter((line) => this.handleLine(line))
      stream.setEncoding('utf8')
      stream.on('data', (chunk: string) => splitter.push(chunk))
    }
  }

  private handleLine(line: string): void {
    this.recent.add(line)
    this.options.onLog?.(line)
  }

  private stopTail(): void {
    this.tail?.stop()
    this.tail = undefined
  }

  private async logTail(): Promise<string> {
    await this.tail?.poll()
    return this.recent.text() || '(empty)'
  }
}

/** The log line says the server started; a metadata round trip proves the advertised listener works. */
async function assertAnswersMetadata(brokers: string): Promise<void> {
  const kafka = new Kafka({
    clientId: 'local-kafka-readiness',
    brokers: [brokers],
    logLevel: logLevel.NOTHING,
    connectionTimeout: 3_000,
    retry: { retries: 5, initialRetryTime: 200 },
  })
  const admin = kafka.admin()
  try {
    await admin.connect()
    await admin.describeCluster()
  } finally {
    await admin.disconnect()
  }
}
