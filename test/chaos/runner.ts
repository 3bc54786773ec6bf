// ChaosHarness: owns the chaos broker and the log directory, runs one scenario start to verdict.
import { randomBytes } from 'node:crypto'
import { createWriteStream, promises as fs } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { defaultKafkaVersion, startLocalBroker, type LocalBroker } from '../../scripts/local-kafka'
import {
  PARTITIONS,
  deliveryFromEnv,
  durationFlag,
  errorText,
  seconds,
  seedOf,
  type Delivery,
} from './common'
import { InputProducer, defaultInput } from './input-producer'
import { withAdmin } from './kafka-clients'
import { describeExit } from './processes'
import { excerpts, summarise } from './report'
import { Scenario, type ScenarioOptions, type ScenarioResult } from './scenario'
import { defaultVerify, verify } from './verify'

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
