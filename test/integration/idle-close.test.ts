/**
 * Idle close (--idle-close, ServiceConfig.idleCloseMs) on a real broker, in both delivery modes:
 * a partition that gets no input for idle-close has its stream time moved by the wall clock
 * (consumer/service.ts idleStreamTime), so that its last windows close without more input.
 *
 * Every test checks the output with a reader that shares no code with ours (librdkafka,
 * scripts/python/read_committed.py, read_committed) against an independent recomputation from
 * the input (test/reference.ts through test/helpers/idle-reference.ts, which models the idle
 * advances and says what it can and cannot know about them). Arrival times come from a kafkajs
 * read_committed consumer that watches the output while the test runs.
 *
 *   npm run -s build:ts && npx vitest run --project integration test/integration/idle-close.test.ts
 *
 * (The kill test runs `node dist/consumer/cli.js run`: build first.)
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { existsSync } from 'node:fs'
import path from 'node:path'
import { createInterface } from 'node:readline'
import { Kafka, logLevel, Partitioners, type Consumer } from 'kafkajs'
import { afterEach, describe, expect, it } from 'vitest'
import { createLogger } from '../../consumer/logger'
import {
  decodeLateSample,
  decodeWindowAggregate,
  encodeTelemetryBatch,
  type LateSample,
  type Sample,
  type WindowAggregate,
} from '../../consumer/schemas'
import { deliveryModes, type AggregatorService, type ServiceConfig } from '../../consumer/service'
import { readCommittedWithLibrdkafka } from '../chaos/harness'
import { messagesAsSteps, referenceWithIdle, type IdleStep } from '../helpers/idle-reference'
import { uniqueTopic } from '../helpers/kafka'
import { parseExposition, sumOf } from '../helpers/prometheus'
import { inProcessReplicas } from '../helpers/service'
import { matchesReference, mulberry32, windowId, type RefWindow } from '../reference'

const partitions = 2
/**
 * Tumbling 2 s windows, grace 1.5 s. With input ending at S = t0 + 6000..6099 (see generate), the
 * window [S-r-2000, S-r) is still open at the end (it closes at stream time S-r+1500, less than
 * an idle-close past S) and the last one, [S-r, S-r+2000), at S-r+3500: more than idle-close past
 * S. So each partition's idle close takes two advances, ~1.4 s apart on the wall clock: the kill
 * test kills a replica between them.
 */
const window = { sizeMs: 2_000, advanceMs: 2_000, graceMs: 1_500 }
const IDLE_MS = 2_000
/** The service's idle timer period: min(1 s, idle-close / 4) (consumer/service.ts start()). */
const idleCheckMs = (idleMs: number) => Math.max(20, Math.min(1_000, idleMs / 4))
/**
 * The time a window due by the idle close takes beyond its due moment (since + max(idle-close,
 * its close time - S)) to reach a reader: the idle timer's period (a due advance waits up to one
 * tick), then the I/O: the replica's fetch and processing of the last batch (`since` is when it
 * processed it, not when the test sent it), the advance's commit (one transaction, or a publish
 * with acks=all then an offset commit) and the watcher's fetch (100 ms long poll). That I/O is
 * tens of milliseconds on an idle broker; 2.5 s allows for two shared cores under load.
 */
const slackMs = (idleMs: number) => idleCheckMs(idleMs) + 2_500
/** The CLI's defaults (the service's own are looser): the kill test's child runs with them. */
const cliLimits = { minEventTimeMs: Date.UTC(2000, 0, 1), maxFutureSkewMs: 5 * 60_000 }
/** A multiple of the window size: window boundaries at t0 + k * 2 s. */
const t0 = Date.UTC(2024, 0, 1)
const MESSAGES = 61
const logger = createLogger((process.env['KWA_TEST_LOG_LEVEL'] as 'info' | undefined) ?? 'silent')
const REPO_ROOT = path.resolve(__dirname, '..', '..')

const seriesKey = (p: number, k: number) => `idle-${p}-${k}`
const partitionOf = (key: string) => Number(key.split('-')[1])

/**
 * `messages` telemetry batches per partition: 20 samples each of 6 series pinned to the
 * partition, event time `base + m * 100` (the first sample exactly, the others up to 99 ms later,
 * 10% of them up to 2.5 s earlier: some late), dyadic values (exact sums). With base = t0 and
 * 61 messages the last event time is t0 + 6000..6099.
 */
function generate(seed: number, messages: number, base: number): Sample[][][] {
  const random = mulberry32(seed)
  return Array.from({ length: partitions }, (_, p) =>
    Array.from({ length: messages }, (_, m) =>
      Array.from({ length: 20 }, (_, i) => {
        const delay = i > 0 && random() < 0.1 ? Math.floor(random() * 2_500) : 0
        const jitter = i > 0 ? Math.floor(random() * 100) : 0
        return {
          seriesKey: seriesKey(p, Math.floor(random() * 6)),
          eventTime: base + m * 100 + jitter - delay,
          value: Math.round((random() - 0.5) * 4096) / 8,
        }
      }),
    ),
  )
}

/** When the last send started and when it was acknowledged (wall clock). */
interface Sent {
  sendStartedAt: number
  sentAt: number
}

/** Sends `messages[p]` (one TelemetryBatch each) to partition p, all in one request. */
async function produce(brokers: string, topic: string, messages: Sample[][][]): Promise<Sent> {
  const kafka = new Kafka({ clientId: 'idle-test', brokers: [brokers], logLevel: logLevel.NOTHING })
  const producer = kafka.producer({ createPartitioner: Partitioners.DefaultPartitioner })
  await producer.connect()
  try {
    const sendStartedAt = Date.now()
    await producer.send({
      topic,
      acks: -1,
      messages: messages.flatMap((batches, partition) =>
        batches.map((samples, m) => ({
          partition,
          value: encodeTelemetryBatch({ sourceId: `idle-${partition}-${m}`, samples }),
        })),
      ),
    })
    return { sendStartedAt, sentAt: Date.now() }
  } finally {
    await producer.disconnect()
  }
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

/** Waits until `done()`, or fails after `timeoutMs` saying what it waited for (and `detail()`). */
async function eventually(
  what: string,
  done: () => boolean | Promise<boolean>,
  timeoutMs: number,
  detail: () => string = () => '',
): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!(await done())) {
    if (Date.now() > deadline) {
      const more = detail()
      throw new Error(
        `timed out after ${timeoutMs} ms waiting for ${what}${more ? `: ${more}` : ''}`,
      )
    }
    await sleep(50)
  }
}

/**
 * A kafkajs read_committed consumer on the output from its beginning, noting when each window
 * first arrived (for the time bounds; the final comparison uses librdkafka).
 */
class OutputWatcher {
  readonly firstSeen = new Map<string, number>()
  private constructor(private readonly consumer: Consumer) {}

  static async start(brokers: string, topic: string): Promise<OutputWatcher> {
    const kafka = new Kafka({
      clientId: 'idle-watch',
      brokers: [brokers],
      logLevel: logLevel.NOTHING,
    })
    const consumer = kafka.consumer({
      groupId: uniqueTopic('idle-watch'),
      readUncommitted: false,
      maxWaitTimeInMs: 100,
    })
    const watcher = new OutputWatcher(consumer)
    await consumer.connect()
    let joined = false
    consumer.on(consumer.events.GROUP_JOIN, () => (joined = true))
    await consumer.subscribe({ topic, fromBeginning: true })
    await consumer.run({
      autoCommit: false,
      eachBatch: ({ batch }) => {
        const now = Date.now()
        for (const m of batch.messages) {
          const w = decodeWindowAggregate(m.value as Buffer)
          const id = windowId(w.seriesKey, w.windowStart)
          if (!watcher.firstSeen.has(id)) watcher.firstSeen.set(id, now)
        }
        return Promise.resolve()
      },
    })
    // Arrival times count from here: the watcher must be fetching before the windows come.
    await eventually('the output watcher to join its group', () => joined, 30_000)
    return watcher
  }

  missing(ids: Iterable<string>): string[] {
    return [...ids].filter((id) => !this.firstSeen.has(id))
  }

  /** Waits until every window of `ids` arrived; fails after `timeoutMs` naming the missing. */
  async until(ids: Iterable<string>, timeoutMs: number, what: string): Promise<void> {
    const wanted = [...ids]
    await eventually(
      what,
      () => this.missing(wanted).length === 0,
      timeoutMs,
      () => {
        const missing = this.missing(wanted)
        return `${missing.length} of ${wanted.length} windows missing, e.g. ${missing
          .slice(0, 3)
          .map(label)
          .join(', ')}`
      },
    )
  }

  stop(): Promise<void> {
    return this.consumer.disconnect()
  }
}

const label = (id: string) => {
  const [key, start] = id.split('\u0000')
  return `${key} @ ${new Date(Number(start)).toISOString()}`
}

/** The committed output, read by librdkafka (read_committed). */
async function readOutput(brokers: string, topic: string): Promise<WindowAggregate[]> {
  const records = await readCommittedWithLibrdkafka(brokers, topic, 30_000)
  return records.map((r) => decodeWindowAggregate(Buffer.from(r.value ?? '', 'hex')))
}

/** The committed late topic, read by librdkafka (read_committed). */
async function readLate(brokers: string, topic: string): Promise<LateSample[]> {
  const records = await readCommittedWithLibrdkafka(brokers, topic, 30_000)
  return records.map((r) => decodeLateSample(Buffer.from(r.value ?? '', 'hex')))
}

interface Comparison {
  missing: string[]
  extra: string[]
  wrong: string[]
  /** Windows published more than once (each copy is checked for its value). */
  duplicated: string[]
}

/** Every published window against the recomputation, per (series key, window start). */
function compare(expected: Map<string, RefWindow>, published: WindowAggregate[]): Comparison {
  const copies = new Map<string, number>()
  const result: Comparison = { missing: [], extra: [], wrong: [], duplicated: [] }
  for (const actual of published) {
    const id = windowId(actual.seriesKey, actual.windowStart)
    copies.set(id, (copies.get(id) ?? 0) + 1)
    const want = expected.get(id)
    if (want === undefined) {
      result.extra.push(label(id))
      continue
    }
    const ok = matchesReference(actual, want)
    if (!ok) result.wrong.push(`${label(id)}: got ${JSON.stringify(actual)}`)
  }
  for (const [id, n] of copies) if (n > 1) result.duplicated.push(`${label(id)} ×${n}`)
  for (const id of expected.keys()) if (!copies.has(id)) result.missing.push(label(id))
  return result
}

/** Exactly once: all of them, once each. At least once: all, maybe several times, all right. */
function expectPublished(
  delivery: ServiceConfig['delivery'],
  expected: Map<string, RefWindow>,
  published: WindowAggregate[],
  { duplicatesAllowed }: { duplicatesAllowed: boolean },
): void {
  const diff = compare(expected, published)
  const few = (list: string[]) => list.slice(0, 5)
  expect(few(diff.missing), 'windows missing').toEqual([])
  expect(few(diff.extra), 'windows not in the recomputation').toEqual([])
  expect(few(diff.wrong), 'windows with a wrong value').toEqual([])
  if (delivery === 'exactly-once' || !duplicatesAllowed) {
    expect(few(diff.duplicated), 'windows published twice').toEqual([])
    expect(published.length).toBe(expected.size)
  }
}

const counter = async (service: AggregatorService, name: string): Promise<number> =>
  sumOf(parseExposition(await service.metrics.scrape()), name)

/**
 * Waits until a replica's counter reaches `min`. An idle advance is counted once committed: at
 * least once, after its results were published (readers may see them first) and its offset
 * committed, which takes one offset commit: 10 s is ample.
 */
async function counterReaches(
  service: AggregatorService,
  name: string,
  min: number,
  why: string,
): Promise<void> {
  let last = 0
  await eventually(
    `${name} >= ${min} (${why})`,
    async () => (last = await counter(service, name)) >= min,
    10_000,
    () => `it is ${last}`,
  )
}

/** Late samples as comparable strings: source partition and offset, key, event time, value. */
const lateId = (partition: number, offset: number, s: Sample) =>
  `${partition}@${offset} ${s.seriesKey} ${s.eventTime} ${s.value}`

// ---------------------------------------------------------------------------------------------
// A replica as a child process (`node dist/consumer/cli.js run`), to be killed -9
// ---------------------------------------------------------------------------------------------

interface LogLine {
  msg?: string
  partition?: number
  lastOffset?: string
  url?: string
  windowsClosed?: number
  streamTime?: number
}

class ChildReplica {
  readonly child: ChildProcess
  readonly lines: LogLine[] = []
  private readonly raw: string[] = []
  readonly exited: Promise<void>

  constructor(
    readonly name: string,
    config: ServiceConfig,
  ) {
    const cli = path.join(REPO_ROOT, 'dist', 'consumer', 'cli.js')
    if (!existsSync(cli)) throw new Error(`${cli} is missing: run npm run build:ts first`)
    const ms = (n: number) => `${n}ms`
    const args = [
      cli,
      'run',
      '--brokers',
      config.brokers.join(','),
      '--group-id',
      config.groupId,
      '--input-topic',
      config.inputTopic,
      '--output-topic',
      config.outputTopic,
      '--window-size',
      ms(config.window.sizeMs),
      '--grace',
      ms(config.window.graceMs),
      '--delivery',
      config.delivery ?? 'exactly-once',
      '--idle-close',
      ms(config.idleCloseMs ?? 0),
      '--session-timeout',
      ms(config.sessionTimeoutMs),
      // Debug: 'batch processed' / 'batch committed' lines say which offsets it has processed.
      '--log-level',
      'debug',
    ]
    // Nothing of the test's environment that kwa would read as configuration.
    const env: NodeJS.ProcessEnv = {}
    for (const [key, value] of Object.entries(process.env)) {
      if (!key.startsWith('KWA_') && key !== 'KAFKA_BROKERS' && key !== 'NODE_OPTIONS')
        env[key] = value
    }
    this.child = spawn(process.execPath, args, {
      cwd: REPO_ROOT,
      env: { ...env, KWA_HTTP_PORT: '0' },
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    this.exited = new Promise((resolve) => this.child.once('exit', () => resolve()))
    for (const stream of [this.child.stdout, this.child.stderr]) {
      if (stream === null) continue
      createInterface({ input: stream }).on('line', (line) => {
        this.raw.push(line)
        if (!line.startsWith('{')) return
        try {
          this.lines.push(JSON.parse(line) as LogLine)
        } catch {
          // not a log entry
        }
      })
    }
  }

  get running(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null
  }

  /** Its log lines with this message. */
  logged(msg: string): LogLine[] {
    return this.lines.filter((l) => l.msg === msg)
  }

  /** Whether it processed input up to `lastOffset` on every partition (its debug lines). */
  processedUpTo(lastOffset: number): boolean {
    const done = new Set(
      this.lines
        .filter((l) => l.msg === 'batch processed' || l.msg === 'batch committed')
        .filter((l) => Number(l.lastOffset) >= lastOffset)
        .map((l) => l.partition),
    )
    return done.size === partitions
  }

  async readyz(): Promise<boolean> {
    const url = this.logged('http server listening')[0]?.url
    if (url === undefined || !this.running) return false
    try {
      const response = await fetch(`${url}/readyz`, { signal: AbortSignal.timeout(2_000) })
      const body = (await response.json()) as { partitions?: number[] }
      return response.status === 200 && body.partitions?.length === partitions
    } catch {
      return false
    }
  }

  /** SIGKILL: nothing committed, nothing left; waits until the process is gone. */
  async kill(): Promise<void> {
    if (this.running) this.child.kill('SIGKILL')
    await Promise.race([
      this.exited,
      sleep(10_000).then(() => {
        throw new Error(`${this.name} still running 10 s after SIGKILL`)
      }),
    ])
  }

  tail(n = 20): string {
    return `--- ${this.name} (last ${n} lines) ---\n${this.raw.slice(-n).join('\n')}`
  }
}

// ---------------------------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------------------------

describe.each(deliveryModes)('idle close on a real broker, %s', (delivery) => {
  const replicas = inProcessReplicas({ clientId: 'kwa-idle-test', partitions, window, logger })
  const cleanups: (() => Promise<void>)[] = []
  afterEach(async () => {
    await Promise.all(cleanups.splice(0).map((c) => c().catch(() => undefined)))
  })

  async function setup(name: string, extra: Partial<ServiceConfig> = {}) {
    const s = await replicas(name, {
      delivery,
      idleCloseMs: IDLE_MS,
      limits: cliLimits,
      ...extra,
    })
    const watcher = await OutputWatcher.start(s.brokers, s.output)
    cleanups.push(() => watcher.stop())
    return { ...s, watcher }
  }

  const ready = (services: AggregatorService[], owning = partitions) =>
    eventually(
      'the replicas to be ready and own every partition',
      () =>
        services.every((s) => s.health().ready) &&
        services.reduce((n, s) => n + s.assignment.length, 0) === owning,
      60_000,
      () => services.map((s) => JSON.stringify(s.health())).join(' '),
    )

  it('producing stops: every window appears, the last ones within idle-close + grace + size', async () => {
    const { brokers, input, output, started, watcher } = await setup('idle-stop')
    const service = await started()
    await ready([service])

    const data = generate(0x1d1e, MESSAGES, t0)
    const ref = referenceWithIdle(messagesAsSteps(data), window)
    // Two windows per series only the idle close can close; late samples on the way.
    expect(ref.atEnd.size).toBeGreaterThanOrEqual(2 * partitions)
    expect(ref.windows.size).toBeGreaterThan(ref.atEnd.size)
    expect(ref.late).toBeGreaterThan(0)

    const sent = await produce(brokers, input, data)
    const bound = IDLE_MS + window.graceMs + window.sizeMs + slackMs(IDLE_MS)
    // Waits past the bound, so that a late window is reported with its time, not as missing.
    await watcher.until(ref.windows.keys(), bound + 15_000, 'every window of the input')

    // Each window the idle close closes: due once `since` (when the replica processed the last
    // batch: after the send started) is idle-close behind the wall clock and the stream time
    // S + (now - since) reached the window's end + grace.
    const times: string[] = []
    for (const [id, w] of ref.atEnd) {
      const S = ref.streamTimes[partitionOf(w.key)] as number
      const due = Math.max(IDLE_MS, w.end + window.graceMs - S)
      const at = watcher.firstSeen.get(id) as number
      times.push(`${label(id)} +${at - sent.sentAt} ms (due +${due})`)
      expect(at - sent.sendStartedAt, `${label(id)} before idle-close`).toBeGreaterThanOrEqual(due)
      expect(at - sent.sentAt, `${label(id)} late: ${times.join(', ')}`).toBeLessThanOrEqual(
        due + slackMs(IDLE_MS),
      )
    }
    const last = Math.max(...[...ref.windows.keys()].map((id) => watcher.firstSeen.get(id) ?? 0))
    console.log(
      `${delivery}: last window +${last - sent.sentAt} ms after the last input (bound ${bound}); ` +
        `idle windows ${[...ref.atEnd.keys()].map((id) => (watcher.firstSeen.get(id) ?? 0) - sent.sentAt).join(', ')} ms`,
    )
    expect(last - sent.sentAt, times.join(', ')).toBeLessThanOrEqual(bound)

    expectPublished(delivery, ref.windows, await readOutput(brokers, output), {
      duplicatesAllowed: false,
    })
    const n = data.flat(2).length
    expect(service.totals).toMatchObject({
      samples: n,
      aggregated: ref.aggregated,
      late: ref.late,
      rejected: 0,
      windowsClosed: ref.windows.size,
    })
    await counterReaches(
      service,
      'kwa_idle_advances_total',
      partitions,
      'one per partition at least',
    )
  })

  it('event times at the wall clock: the advance stops at now - max-future-skew', async () => {
    const skewMs = 4_000
    const { brokers, input, output, started, watcher } = await setup('idle-skew', {
      limits: { ...cliLimits, maxFutureSkewMs: skewMs },
    })
    const service = await started()
    await ready([service])

    // 3 s of input ending now: event times up to the wall clock (none ahead: none rejected).
    const messages = 30
    const data = generate(0x5e3, messages, Date.now() - messages * 100)
    const ref = referenceWithIdle(messagesAsSteps(data), window)
    const sent = await produce(brokers, input, data)
    // Idle close without the bound would close each window by since + max(idle, end + grace -
    // S); the bound holds it until now - skew passes end + grace.
    const capped = (w: RefWindow) => w.end + window.graceMs + skewMs
    const byClock = (w: RefWindow) =>
      Math.max(IDLE_MS, w.end + window.graceMs - (ref.streamTimes[partitionOf(w.key)] as number))
    for (const w of ref.atEnd.values()) {
      // The premise: the bound is what holds each of these windows back, by more than a second.
      expect(capped(w) - (sent.sendStartedAt + byClock(w))).toBeGreaterThan(1_000)
    }
    const lastDue = Math.max(...[...ref.atEnd.values()].map(capped))
    await watcher.until(
      ref.windows.keys(),
      lastDue - Date.now() + slackMs(IDLE_MS) + 15_000,
      'every window of the input',
    )
    console.log(
      `${delivery}, skew ${skewMs} ms: idle windows at ${[...ref.atEnd]
        .map(([id, w]) => (watcher.firstSeen.get(id) ?? 0) - capped(w))
        .join(', ')} ms after now - skew passed their end + grace`,
    )
    for (const [id, w] of ref.atEnd) {
      const at = watcher.firstSeen.get(id) as number
      expect(at, `${label(id)} before now - skew passed its end + grace`).toBeGreaterThanOrEqual(
        capped(w),
      )
      expect(at - capped(w), `${label(id)} late`).toBeLessThanOrEqual(slackMs(IDLE_MS))
    }
    expectPublished(delivery, ref.windows, await readOutput(brokers, output), {
      duplicatesAllowed: false,
    })
    expect(service.totals).toMatchObject({ samples: data.flat(2).length, rejected: 0 })
  })

  it('a replica killed -9 before, then one killed while, the idle windows close', async () => {
    const { brokers, input, output, config, started, watcher } = await setup('idle-kill', {
      // kafkajs' default would keep a killed member in the group for 10 s; 6 s is the broker's
      // minimum (group.min.session.timeout.ms).
      sessionTimeoutMs: 6_000,
    })
    const children: ChildReplica[] = []
    cleanups.push(() => Promise.all(children.map((c) => c.kill())).then(() => undefined))
    const spawnChild = (name: string) => {
      const child = new ChildReplica(name, config)
      children.push(child)
      return child
    }
    const logs = () => children.map((c) => c.tail()).join('\n')

    const first = spawnChild('replica-1')
    await eventually('replica-1 to be ready', () => first.readyz(), 60_000, logs)
    const data = generate(0xdead, MESSAGES, t0)
    const ref = referenceWithIdle(messagesAsSteps(data), window)
    await produce(brokers, input, data)

    // Killed as soon as it has processed the last input (its batch maybe not committed yet),
    // long before its idle close is due.
    await eventually(
      'replica-1 to process the input',
      () => first.processedUpTo(MESSAGES - 1),
      30_000,
      logs,
    )
    await first.kill()
    expect(first.logged('idle partition: stream time advanced by the wall clock'), logs()).toEqual(
      [],
    )

    // The next one restores (after replica-1's session expires), then closes the idle windows:
    // killed right after its first idle advance, with windows still open.
    const second = spawnChild('replica-2')
    const advanced = () => second.logged('idle partition: stream time advanced by the wall clock')
    await eventually(
      'replica-2 to advance an idle partition',
      () => advanced().length > 0,
      60_000,
      logs,
    )
    await second.kill()
    const closedBySecond = advanced().reduce((n, l) => n + (l.windowsClosed ?? 0), 0)
    expect(closedBySecond).toBeGreaterThan(0)

    // An in-process replica restores what is committed and closes the rest.
    const third = await started()
    await watcher.until(ref.windows.keys(), 60_000, 'every window of the input after the kills')
    await counterReaches(
      third,
      'kwa_idle_advances_total',
      1,
      'else the second replica was not killed while windows were still open',
    )
    await sleep(1_000) // a duplicate would come with the rest
    expectPublished(delivery, ref.windows, await readOutput(brokers, output), {
      duplicatesAllowed: true,
    })
  })

  it('a partition that moves while idle (its owner leaves) has its windows closed by the new one', async () => {
    const idleMs = 3_000
    const { brokers, input, output, started, watcher } = await setup('idle-move', {
      idleCloseMs: idleMs,
    })
    const leaving = await started()
    const staying = await started()
    await ready([leaving, staying])
    expect(leaving.assignment.length).toBe(1)

    const data = generate(0x0bad, MESSAGES, t0)
    const ref = referenceWithIdle(messagesAsSteps(data), window)
    const n = data.flat(2).length
    await produce(brokers, input, data)
    // Every sample committed (exactly once: within a commit interval), then the owner leaves
    // (it commits what is pending and leaves the group) before its idle close is due.
    const processed = () => leaving.totals.samples + staying.totals.samples === n
    await eventually('both replicas to commit the input', processed, 30_000)
    await leaving.stop()
    expect(await counter(leaving, 'kwa_idle_advances_total'), 'left too late').toBe(0)

    await watcher.until(ref.windows.keys(), 60_000, 'every window after the handover')
    expect(staying.assignment).toEqual([0, 1])
    // Its own partition and the one it took over: each closed by its wall clock.
    await counterReaches(
      staying,
      'kwa_idle_advances_total',
      partitions,
      'its own and the moved one',
    )
    await sleep(1_000)
    expectPublished(delivery, ref.windows, await readOutput(brokers, output), {
      // At least once, a window published just before the handover may be published again.
      duplicatesAllowed: true,
    })
  })

  it('samples for windows the idle close closed are late; later windows aggregate', async () => {
    const lateTopic = uniqueTopic('idle-late')
    const { brokers, input, output, started, watcher } = await setup('idle-late', { lateTopic })
    const service = await started()
    await ready([service])

    const round1 = generate(0x1a7e, MESSAGES, t0)
    const sent = await produce(brokers, input, round1)
    const first = referenceWithIdle(messagesAsSteps(round1), window)
    const bound = IDLE_MS + window.graceMs + window.sizeMs + slackMs(IDLE_MS)
    await watcher.until(first.windows.keys(), bound + 15_000, 'every window of the first input')

    // The stream time now: at least the last window's end + grace (every window is out), at most
    // S + (now - the send of the last input) (idleStreamTime; nothing advances it once no window
    // is open).
    const resumeAt = Date.now()
    const maxStreamTime = first.streamTimes.map(
      (S) => (S as number) + (resumeAt - sent.sendStartedAt),
    )
    // One message per partition of samples in windows closed by the idle close (late whatever
    // the advance was), then input 2 s past the highest possible stream time, 10% of it up to
    // 2.5 s out of order (late or not by the input alone).
    const random = mulberry32(0x5a1e)
    const stale = Array.from({ length: partitions }, (_, p) =>
      Array.from({ length: 10 }, () => ({
        seriesKey: seriesKey(p, Math.floor(random() * 6)),
        eventTime: (first.streamTimes[p] as number) - Math.floor(random() * 5_000),
        value: 1,
      })),
    )
    const later = Math.ceil((Math.max(...maxStreamTime) + 2_500) / window.sizeMs) * window.sizeMs
    const round2 = generate(0x2a7e, 30, later)
    const resumed = stale.map((samples, p) => [samples, ...(round2[p] ?? [])])
    const steps: IdleStep[][] = messagesAsSteps(round1).map((before, p) => [
      ...before,
      { idleAdvance: { maxStreamTime: maxStreamTime[p] as number } },
      ...(messagesAsSteps([resumed[p] ?? []], MESSAGES)[0] ?? []),
    ])
    const ref = referenceWithIdle(steps, window)
    // The stale samples alone first: a late record carries the stream time at the end of its
    // batch, which is then the one the idle close left (stale samples do not move it).
    const before = service.totals.samples
    await produce(
      brokers,
      input,
      stale.map((samples) => [samples]),
    )
    await eventually(
      'the stale samples to be processed',
      () => service.totals.samples === before + stale.flat().length,
      30_000,
    )
    await produce(
      brokers,
      input,
      round2.map((batches) => batches),
    )
    await watcher.until(ref.windows.keys(), bound + 20_000, 'every window of both inputs')
    await sleep(1_000)

    // Later windows aggregate normally: some of them hold samples of the second input.
    expect([...ref.windows.values()].filter((w) => w.start >= later).length).toBeGreaterThan(0)
    expectPublished(delivery, ref.windows, await readOutput(brokers, output), {
      duplicatesAllowed: false,
    })
    // Every late sample on the late topic, once, the stale ones among them, found late at a
    // stream time the idle close reached.
    const published = await readLate(brokers, lateTopic)
    expect(published.map((l) => lateId(l.sourcePartition, l.sourceOffset, l)).sort()).toEqual(
      ref.lateSamples.map((l) => lateId(l.partition, l.offset, l.sample)).sort(),
    )
    for (const l of published.filter((l) => l.sourceOffset === MESSAGES)) {
      const S = first.streamTimes[l.sourcePartition] as number
      const lastEnd = S - (S % window.sizeMs) + window.sizeMs
      expect(l.streamTime).toBeGreaterThanOrEqual(lastEnd + window.graceMs)
      expect(l.streamTime).toBeLessThanOrEqual(maxStreamTime[l.sourcePartition] as number)
    }
    expect(published.filter((l) => l.sourceOffset === MESSAGES).length).toBe(10 * partitions)
    expect(service.totals).toMatchObject({
      samples: round1.flat(2).length + resumed.flat(2).length,
      aggregated: ref.aggregated,
      late: ref.late,
    })
    expect(await counter(service, 'kwa_samples_late_total')).toBe(ref.late)
  })
})

describe('idle close and input arriving together', () => {
  const replicas = inProcessReplicas({ clientId: 'kwa-idle-race', partitions, window, logger })

  it('input queued before an idle advance cancels it: the partition is no longer quiet', async () => {
    const s = await replicas('idle-race', {
      delivery: 'exactly-once',
      idleCloseMs: IDLE_MS,
      limits: cliLimits,
    })
    const service = await s.started()
    await eventually('the replica to be ready', () => service.health().ready, 60_000)
    // The partition's work queue (batches, restores, commits and idle advances run one at a time,
    // consumer/service.ts exclusive()), held here as a slow batch holds it (decoder.prepare
    // fetching a writer schema from the registry, a restore), so that new input and then the
    // idle timer's advance queue up behind it, in that order.
    const internals = service as unknown as {
      exclusive: (partition: number, run: () => Promise<unknown>) => Promise<unknown>
      restoring: Map<number, Promise<unknown>>
    }

    // Input up to S = t0 + 3500..3599 (window [t0 + 2 s, t0 + 4 s) is due at t0 + 5500, within
    // idle-close of S: an advance decided now closes it), a pause shorter than idle-close, the
    // next 1 s, then the rest at once: their out-of-order samples still belong in that window.
    const data = generate(0x7ace, 60, t0)
    const cut = 36
    const part = (from: number, to: number) => data.map((batches) => batches.slice(from, to))
    const sent = await produce(s.brokers, s.input, part(0, cut))
    await eventually(
      'the first part to be committed',
      () => service.totals.samples === part(0, cut).flat(2).length,
      30_000,
    )
    await sleep(sent.sendStartedAt + 800 - Date.now())
    const held = Array.from({ length: partitions }, (_, p) =>
      internals.exclusive(p, () => sleep(2_500)),
    )
    const holding = Array.from({ length: partitions }, (_, p) => internals.restoring.get(p))
    await produce(s.brokers, s.input, part(cut, cut + 10))
    await eventually(
      'the second part to queue behind the held work',
      () => holding.every((promise, p) => internals.restoring.get(p) !== promise),
      5_000,
    )
    // The premise: the batches queued before any idle advance could be due (the partition's
    // `since` is after the first send started). The idle timer then ticks while they wait.
    expect(Date.now() - sent.sendStartedAt, 'input queued too late').toBeLessThan(IDLE_MS)
    await Promise.all(held)
    await produce(s.brokers, s.input, part(cut + 10, 60))

    const ref = referenceWithIdle(messagesAsSteps(data), window)
    const inWindow = (s: Sample) => s.eventTime >= t0 + 2_000 && s.eventTime < t0 + 4_000
    expect(part(cut, 60).flat(2).filter(inWindow).length, 'the premise').toBeGreaterThan(0)
    await eventually(
      'every sample to be committed',
      () => service.totals.samples === data.flat(2).length,
      30_000,
    )
    // Without idle close in between (the partition never was quiet for idle-close once its input
    // came), exactly the late samples of the input alone.
    expect(service.totals.late, 'samples made late by an advance the input had cancelled').toBe(
      ref.late,
    )
    const watcher = await OutputWatcher.start(s.brokers, s.output)
    try {
      await watcher.until(ref.windows.keys(), 30_000, 'every window')
    } finally {
      await watcher.stop()
    }
    await sleep(1_000)
    expectPublished('exactly-once', ref.windows, await readOutput(s.brokers, s.output), {
      duplicatesAllowed: false,
    })
  })
})
