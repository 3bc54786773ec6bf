/**
 * Rebalance cost on a real local broker: how long each input partition's committed group offset
 * stops advancing when the group changes, with `kwa run` replicas as separate processes (the built
 * `dist/consumer/cli.js`) under a steady `kwa produce` load.
 *
 * One replica is warmed up under the load, then, letting the group settle after each event:
 *
 * 1. scale out: a second replica starts;
 * 2. scale in: the second replica gets SIGTERM (its exit code and time to exit are recorded);
 * 3. fail over: a second replica starts again (observed like 1: a second scale-out sample), then
 *    the replica owning more partitions (or the older one) is killed with SIGKILL.
 *
 * Committed offsets are polled every ~100 ms (admin.fetchOffsets). A partition's STALL is the
 * longest time its committed offset did not advance within the event's observation period: from
 * the event until the group has rejoined, every partition advanced again after its restore, and
 * all stayed healthy for a few seconds (bounded by --max-observe). For fail-over the period starts
 * at the session timeout's expiry (kill + --session-timeout): a gap that began before it counts
 * from it; the stall measured from the kill is printed as "raw". Owners, moves and restores come
 * from the replicas' logs ('joined group', 'partition restored'), in .cache/bench-rebalance/.
 *
 * Before the (first) scale-out the changelog is read to its end (read_committed) and its records
 * are divided by the open windows (sum of `kwa_windows_open` over the replicas' /metrics). Restore
 * rates are the records and windows of an event's 'partition restored' lines over their summed ms.
 *
 *   npm run bench:rebalance -- [--brokers host:port] [--rate 300000] [--keys 20000]
 *     [--partitions 8] [--samples-per-batch 1000] [--warmup 120] [--delivery exactly-once]
 *     [--session-timeout 10] [--settle 10] [--max-observe 300] [--rounds 1] [--quick]
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import readline from 'node:readline'
import { parseArgs } from 'node:util'
import type { Admin, Kafka } from 'kafkajs'
import { createKafka } from '../consumer/kafka'
import { createLogger } from '../consumer/logger'
import { startLocalBroker, type LocalBroker } from '../scripts/local-kafka'
import { fmt, median, benchEnvironment } from './lib'

const root = path.join(__dirname, '..')
const outDir = path.join(root, '.cache', 'bench-rebalance')
const cli = path.join(root, 'dist', 'consumer', 'cli.js')
const logger = createLogger('error')
const windowSize = '10s'
const pollMs = 100
/** After every partition recovered, how long all must keep advancing before an event is over. */
const healthyMs = 5_000

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))
const seconds = (ms: number, digits = 1) => (ms / 1000).toFixed(digits)
const progress = (text: string) => console.error(`[${new Date().toISOString()}] ${text}`)

type Delivery = 'exactly-once' | 'at-least-once'

interface Settings {
  brokers?: string
  rate: number
  keys: number
  partitions: number
  samplesPerBatch: number
  warmupMs: number
  delivery: Delivery
  sessionTimeoutMs: number
  settleMs: number
  maxObserveMs: number
  rounds: number
}

// ---------------------------------------------------------------------------------------------
// Child processes: every one is killed on the way out, however we leave

const children = new Set<ChildProcess>()

/** Linux: the kernel SIGKILLs the child if this process dies without cleaning up. */
const pdeathsig = (() => {
  try {
    execFileSync('setpriv', ['--pdeathsig', 'KILL', 'true'], { stdio: 'ignore' })
    return true
  } catch {
    return false
  }
})()

function spawnKwa(args: string[], logFile: string, onLine?: (line: string) => void): ChildProcess {
  const command = [process.execPath, cli, ...args]
  const [file, ...rest] = pdeathsig ? ['setpriv', '--pdeathsig', 'KILL', ...command] : command
  const child = spawn(file as string, rest, { cwd: root, stdio: ['ignore', 'pipe', 'pipe'] })
  children.add(child)
  child.once('exit', () => children.delete(child))
  const log = fs.createWriteStream(logFile)
  child.stdout?.on('data', (chunk: Buffer) => log.write(chunk))
  // pino writes to stderr
  if (child.stderr !== null) {
    readline.createInterface({ input: child.stderr }).on('line', (line) => {
      log.write(`${line}\n`)
      onLine?.(line)
    })
  }
  child.once('close', () => log.end())
  return child
}

process.on('exit', () => {
  for (const child of children) child.kill('SIGKILL')
})

interface Exit {
  at: number
  code: number | null
  signal: NodeJS.Signals | null
}

function exitOf(child: ChildProcess): Promise<Exit> {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) {
      resolve({ at: Date.now(), code: child.exitCode, signal: child.signalCode })
    } else {
      child.once('exit', (code, signal) => resolve({ at: Date.now(), code, signal }))
    }
  })
}

/** SIGTERM, then SIGKILL if it has not exited after `graceMs`. */
async function stopChild(child: ChildProcess, exited: Promise<Exit>, graceMs: number) {
  if (child.exitCode !== null || child.signalCode !== null) return
  child.kill('SIGTERM')
  const timer = setTimeout(() => child.kill('SIGKILL'), graceMs)
  await exited
  clearTimeout(timer)
}

// ---------------------------------------------------------------------------------------------
// Replicas and what their logs say

interface Join {
  at: number
  partitions: number[]
}

interface Restore {
  replica: string
  at: number
  partition: number
  windows?: number
  records?: number
  ms: number
}

class Replica {
  readonly joins: Join[] = []
  readonly restores: Restore[] = []
  readonly child: ChildProcess
  readonly exited: Promise<Exit>
  readonly startedAt = Date.now()
  readonly logFile: string
  url: string | undefined
  exit: Exit | undefined
  /** Set before we stop or kill it on purpose. */
  expectedExit = false
  warnings = 0
  errors = 0

  constructor(
    readonly name: string,
    args: string[],
  ) {
    this.logFile = path.join(outDir, `${name}.log`)
    this.child = spawnKwa(args, this.logFile, (line) => this.onLine(line))
    this.exited = exitOf(this.child).then((exit) => (this.exit = exit))
  }

  get alive(): boolean {
    return this.exit === undefined
  }

  /** Its assignment as of its latest join. */
  get partitions(): number[] {
    return this.joins.at(-1)?.partitions ?? []
  }

  private onLine(line: string): void {
    let entry: Record<string, unknown>
    try {
      entry = JSON.parse(line) as Record<string, unknown>
    } catch {
      return
    }
    const at = typeof entry['time'] === 'number' ? entry['time'] : Date.now()
    const level = typeof entry['level'] === 'number' ? entry['level'] : 0
    if (level >= 50) this.errors++
    else if (level >= 40) this.warnings++
    const num = (key: string) => (typeof entry[key] === 'number' ? entry[key] : undefined)
    switch (entry['msg']) {
      case 'joined group':
        if (Array.isArray(entry['partitions']))
          this.joins.push({ at, partitions: (entry['partitions'] as number[]).map(Number) })
        break
      case 'partition restored': {
        const partition = num('partition')
        if (partition === undefined) break
        this.restores.push({
          replica: this.name,
          at,
          partition,
          windows: num('windows'),
          records: num('records'),
          ms: num('ms') ?? 0,
        })
        break
      }
      case 'http server listening':
        if (typeof entry['url'] === 'string') this.url = entry['url']
        break
      default:
    }
  }

  /** Open (series, window) aggregates over its partitions, from /metrics. */
  async openWindows(): Promise<number> {
    if (this.url === undefined || !this.alive) return 0
    const response = await fetch(`${this.url}/metrics`, { signal: AbortSignal.timeout(10_000) })
    const body = await response.text()
    let sum = 0
    for (const m of body.matchAll(/^kwa_windows_open\{[^}]*\} (\S+)$/gm)) sum += Number(m[1])
    return sum
  }
}

// ---------------------------------------------------------------------------------------------
// Committed offsets, polled

class OffsetWatch {
  /** Per partition, the times (ms) at which its committed offset was seen to advance. */
  readonly advances: number[][]
  readonly offsets: number[]
  private stopped = false
  private loop: Promise<void> | undefined
  private failingSince: number | undefined
  polls = 0

  constructor(
    private readonly admin: Admin,
    private readonly groupId: string,
    private readonly topic: string,
    readonly partitions: number,
  ) {
    this.advances = Array.from({ length: partitions }, () => [])
    this.offsets = new Array<number>(partitions).fill(-1)
  }

  start(): void {
    this.loop = this.run()
  }

  async stop(): Promise<void> {
    this.stopped = true
    await this.loop
  }

  private async run(): Promise<void> {
    while (!this.stopped) {
      const began = Date.now()
      try {
        const [committed] = await this.admin.fetchOffsets({
          groupId: this.groupId,
          topics: [this.topic],
        })
        const at = Date.now()
        for (const p of committed?.partitions ?? []) {
          const offset = Number(p.offset)
          const previous = this.offsets[p.partition]
          if (previous === undefined) continue
          if (offset > previous) this.advances[p.partition]?.push(at)
          this.offsets[p.partition] = offset
        }
        this.polls++
        this.failingSince = undefined
      } catch (error) {
        this.failingSince ??= began
        if (Date.now() - this.failingSince > 30_000)
          progress(`fetchOffsets failing for 30 s: ${(error as Error).message}`)
      }
      await sleep(Math.max(0, pollMs - (Date.now() - began)))
    }
  }

  lastAdvance(partition: number): number {
    return this.advances[partition]?.at(-1) ?? -Infinity
  }

  /** First advance strictly after `after`, if any. */
  firstAdvanceAfter(partition: number, after: number): number | undefined {
    return this.advances[partition]?.find((t) => t > after)
  }

  /** Longest time without an advance within [from, to], in ms. */
  stall(partition: number, from: number, to: number): number {
    let previous = from
    let longest = 0
    for (const t of this.advances[partition] ?? []) {
      if (t <= from) continue
      if (t > to) break
      longest = Math.max(longest, t - previous)
      previous = t
    }
    return Math.max(longest, to - previous)
  }
}

// ---------------------------------------------------------------------------------------------
// The changelog, counted

interface ChangelogCount {
  at: number
  /** Records per changelog partition below the end offsets read at `at` (read_committed). */
  records: number[]
  /** End minus start offset per partition at `at` (markers and aborted records included). */
  spans: number[]
  readMs: number
}

async function changelogSpans(admin: Admin, topic: string, partitions: number) {
  const spans = new Array<number>(partitions).fill(0)
  const ends = new Array<number>(partitions).fill(0)
  const starts = new Array<number>(partitions).fill(0)
  for (const o of await admin.fetchTopicOffsets(topic)) {
    spans[o.partition] = Number(o.high) - Number(o.low)
    ends[o.partition] = Number(o.high)
    starts[o.partition] = Number(o.low)
  }
  return { spans, ends, starts }
}

/** Reads every partition of `topic` up to its current end offset and counts the records. */
async function countChangelog(
  kafka: Kafka,
  admin: Admin,
  topic: string,
  partitions: number,
  boundMs: number,
): Promise<ChangelogCount> {
  const at = Date.now()
  const { spans, ends, starts } = await changelogSpans(admin, topic, partitions)
  const records = new Array<number>(partitions).fill(0)
  const pending = new Set(
    Array.from({ length: partitions }, (_, p) => p).filter((p) => ends[p]! > starts[p]!),
  )
  if (pending.size === 0) return { at, records, spans, readMs: 0 }
  const consumer = kafka.consumer({
    groupId: `bench-rebalance-count-${Date.now()}`,
    readUncommitted: false,
    maxBytes: 64 << 20,
    maxBytesPerPartition: 16 << 20,
  })
  let finish = () => {}
  const done = new Promise<void>((resolve) => (finish = resolve))
  const ticker = setInterval(() => {
    const total = records.reduce((a, b) => a + b, 0)
    progress(`  changelog read: ${fmt(total)} records, ${pending.size} partitions to go`)
  }, 10_000)
  try {
    await consumer.connect()
    await consumer.subscribe({ topic, fromBeginning: true })
    await consumer.run({
      eachBatch: async ({ batch }) => {
        const p = batch.partition
        if (!pending.has(p)) return
        const end = ends[p]!
        let n = 0
        for (const m of batch.messages) if (Number(m.offset) < end) n++
        records[p] = (records[p] ?? 0) + n
        if (Number(batch.lastOffset()) >= end - 1) {
          pending.delete(p)
          consumer.pause([{ topic, partitions: [p] }])
          if (pending.size === 0) finish()
        }
        await Promise.resolve()
      },
    })
    let timer: NodeJS.Timeout | undefined
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new Error(`reading changelog ${topic} took over ${seconds(boundMs, 0)} s`)),
        boundMs,
      )
    })
    await Promise.race([done, timeout]).finally(() => clearTimeout(timer))
  } finally {
    clearInterval(ticker)
    await consumer.disconnect().catch(() => undefined)
  }
  return { at, records, spans, readMs: Date.now() - at }
}

// ---------------------------------------------------------------------------------------------
// Events

interface Observation {
  event: string
  /** When it happened. */
  from: number
  /** Stall is counted from here (fail-over: from + session timeout). */
  countFrom: number
  end: number
  settled: boolean
  before: (string | undefined)[]
  after: (string | undefined)[]
  /** Per partition, ms: from countFrom, and from the event. */
  stall: number[]
  raw: number[]
  restores: Restore[]
  /** Changelog offset spans at the event (to estimate records when restores do not log them). */
  spans: number[] | undefined
  note: string[]
}

interface Bench {
  settings: Settings
  admin: Admin
  kafka: Kafka
  watch: OffsetWatch
  replicas: Replica[]
  topic: string
  groupId: string
  changelog: string
  startReplica(): Replica
}

const live = (bench: Bench) => bench.replicas.filter((r) => r.alive)

function owners(bench: Bench): (string | undefined)[] {
  const owner = new Array<string | undefined>(bench.settings.partitions).fill(undefined)
  for (const r of live(bench)) for (const p of r.partitions) owner[p] = r.name
  return owner
}

function checkUnexpectedExits(bench: Bench): void {
  for (const r of bench.replicas) {
    if (r.exit !== undefined && !r.expectedExit) {
      throw new Error(
        `replica ${r.name} exited (code ${r.exit.code}, signal ${r.exit.signal}); see ${r.logFile}`,
      )
    }
  }
}

/**
 * Waits until the group has rejoined after `from` (every live replica joined since, and their
 * assignments cover every partition once), every partition advanced after that join and after
 * its restore, and all kept advancing for healthyMs; at most until countFrom + maxObserveMs.
 */
async function observe(
  bench: Bench,
  event: string,
  from: number,
  countFrom: number,
  before: (string | undefined)[],
): Promise<Observation> {
  const { partitions, rate, samplesPerBatch, maxObserveMs } = bench.settings
  // A partition gets a message every partitions × samplesPerBatch / rate seconds.
  const healthyGapMs = Math.max(2_000, (3_000 * partitions * samplesPerBatch) / Math.max(1, rate))
  const spans =
    bench.settings.delivery === 'exactly-once'
      ? (await changelogSpans(bench.admin, bench.changelog, partitions).catch(() => undefined))
          ?.spans
      : undefined
  const deadline = countFrom + maxObserveMs
  let settled = false
  let recoveredAt: number | undefined
  for (;;) {
    checkUnexpectedExits(bench)
    const now = Date.now()
    // A replica being stopped still looks alive until it exits: its partitions are leaving.
    const replicas = live(bench).filter((r) => !r.expectedExit)
    const latest = replicas.map((r) => r.joins.at(-1))
    const assigned = latest.flatMap((j) => j?.partitions ?? [])
    const rejoined =
      replicas.length > 0 &&
      latest.every((j) => j !== undefined && j.at >= from) &&
      assigned.length === partitions &&
      new Set(assigned).size === partitions
    recoveredAt = undefined
    if (rejoined) {
      const joinedAt = Math.max(...latest.map((j) => j?.at ?? 0))
      let all: number | undefined = 0
      for (let p = 0; p < partitions && all !== undefined; p++) {
        const restored = replicas
          .flatMap((r) => r.restores)
          .filter((r) => r.partition === p && r.at >= joinedAt)
          .map((r) => r.at)
        const ready = Math.max(joinedAt, ...restored)
        const advanced = bench.watch.firstAdvanceAfter(p, ready)
        all = advanced === undefined ? undefined : Math.max(all, advanced)
      }
      recoveredAt = all
    }
    if (recoveredAt !== undefined && now - recoveredAt >= healthyMs) {
      const healthy = Array.from({ length: partitions }, (_, p) => p).every(
        (p) => now - bench.watch.lastAdvance(p) <= healthyGapMs,
      )
      if (healthy) {
        settled = true
        break
      }
    }
    if (now > deadline) break
    await sleep(200)
  }
  const end = Date.now()
  const all = Array.from({ length: partitions }, (_, p) => p)
  const note: string[] = []
  if (!settled) {
    note.push(
      `did not settle within ${seconds(maxObserveMs, 0)} s (stalls below are lower bounds; ` +
        `live: ${live(bench)
          .map((r) => `${r.name} [${r.partitions.join(',')}]`)
          .join(', ')})`,
    )
  }
  return {
    event,
    from,
    countFrom,
    end,
    settled,
    before,
    after: owners(bench),
    stall: all.map((p) => bench.watch.stall(p, countFrom, end)),
    raw: all.map((p) => bench.watch.stall(p, from, end)),
    restores: bench.replicas.flatMap((r) => r.restores).filter((r) => r.at >= from && r.at <= end),
    spans,
    note,
  }
}

interface RestoreRate {
  partitions: number
  windows: number
  records: number
  /** Summed over the restore lines. */
  ms: number
  /**
   * Time each replica spent restoring (the union of its restores' [end - ms, end]), summed over
   * the replicas: a restore's ms also counts its wait for the one before it.
   */
  busyMs: number
  /** Per partition, the records restored (estimated when the restore did not log them). */
  byPartition: Map<number, number>
  recordsEstimated: boolean
}

function restoreRate(o: Observation, count: ChangelogCount | undefined): RestoreRate {
  let windows = 0
  let records = 0
  let ms = 0
  let recordsEstimated = false
  const byPartition = new Map<number, number>()
  for (const r of o.restores) {
    windows += r.windows ?? 0
    ms += r.ms
    let n = r.records
    if (n === undefined && count !== undefined) {
      // Not logged: the partition's counted records, scaled by how its offsets grew since.
      const counted = count.records[r.partition] ?? 0
      const span = count.spans[r.partition] ?? 0
      const now = o.spans?.[r.partition] ?? span
      n = Math.round(span > 0 ? (counted * now) / span : counted)
      recordsEstimated = true
    }
    records += n ?? 0
    byPartition.set(r.partition, (byPartition.get(r.partition) ?? 0) + (n ?? 0))
  }
  let busyMs = 0
  for (const replica of new Set(o.restores.map((r) => r.replica))) {
    const spans = o.restores
      .filter((r) => r.replica === replica)
      .map((r) => [r.at - r.ms, r.at] as const)
      .sort((a, b) => a[0] - b[0])
    let reach = -Infinity
    for (const [a, b] of spans) {
      busyMs += Math.max(0, b - Math.max(a, reach))
      reach = Math.max(reach, b)
    }
  }
  return {
    partitions: o.restores.length,
    windows,
    records,
    ms,
    busyMs,
    byPartition,
    recordsEstimated,
  }
}

const perSecond = (n: number, ms: number) => (ms > 0 ? fmt((1000 * n) / ms) : '-')

function printObservation(
  o: Observation,
  rate: RestoreRate,
  sessionTimeoutMs: number,
  extra: string[] = [],
) {
  const failover = o.countFrom > o.from
  console.log(
    `\n### ${o.event} (observed ${seconds(o.end - o.from)} s${o.settled ? '' : ', NOT settled'})`,
  )
  for (const line of [...extra, ...o.note]) console.log(line)
  const stallHeader = failover
    ? `stall s after session timeout (${seconds(sessionTimeoutMs, 0)} s) | raw stall s from kill`
    : 'stall s'
  const est = rate.recordsEstimated ? ' (est.)' : ''
  console.log(
    `| partition | owner before | owner after | moved | ${stallHeader} | restored: windows | records${est} | ms |`,
  )
  console.log(`|---|---|---|---|---|${failover ? '---|' : ''}---|---|---|`)
  o.stall.forEach((stall, p) => {
    const restores = o.restores.filter((r) => r.partition === p)
    const sum = (f: (r: Restore) => number | undefined) =>
      restores.length === 0 || restores.some((r) => f(r) === undefined)
        ? '-'
        : fmt(restores.reduce((t, r) => t + (f(r) ?? 0), 0))
    const records = rate.byPartition.get(p)
    const before = o.before[p] ?? '-'
    const after = o.after[p] ?? '-'
    const stallCells = failover ? `${seconds(stall)} | ${seconds(o.raw[p] ?? 0)}` : seconds(stall)
    console.log(
      `| ${p} | ${before} | ${after} | ${before === after ? 'stayed' : 'moved'} | ${stallCells} | ` +
        `${sum((r) => r.windows)} | ${records === undefined ? '-' : fmt(records)} | ${sum((r) => r.ms)} |`,
    )
  })
  console.log(
    rate.partitions === 0
      ? 'restores: none logged'
      : `restores: ${rate.partitions}, ${fmt(rate.windows)} windows, ${fmt(rate.records)} records` +
          `${rate.recordsEstimated ? ' (estimated from the changelog count: the restores log no records)' : ''}; ` +
          `over their summed ${fmt(rate.ms)} ms: ${perSecond(rate.records, rate.ms)} records/s, ` +
          `${perSecond(rate.windows, rate.ms)} windows/s; over the ${fmt(rate.busyMs)} ms the replicas ` +
          `spent restoring (overlaps counted once): ${perSecond(rate.records, rate.busyMs)} records/s, ` +
          `${perSecond(rate.windows, rate.busyMs)} windows/s`,
  )
  const max = Math.max(...o.stall)
  let line = `max stall ${seconds(max)} s`
  if (failover) {
    const simple = Math.max(0, Math.max(...o.raw) - sessionTimeoutMs)
    line += ' (counted from the expiry'
    if (Math.abs(simple - max) >= 50)
      line +=
        `; max(0, raw − session timeout) would say ${seconds(simple)} s: it misses stalls that ` +
        'began after the expiry, when the survivor rejoined'
    line += ')'
  }
  console.log(line)
}

// ---------------------------------------------------------------------------------------------

/** The median; of an even count, the mean of the middle two. */
function mid(xs: number[]): number {
  if (xs.length % 2 === 1 || xs.length === 0) return median(xs)
  const s = [...xs].sort((a, b) => a - b)
  return ((s[xs.length / 2 - 1] ?? NaN) + (s[xs.length / 2] ?? NaN)) / 2
}

/** Waits (at most boundMs) until every partition advanced within the last healthy gap. */
async function waitAdvancing(bench: Bench, since: number, boundMs: number): Promise<boolean> {
  const deadline = Date.now() + boundMs
  while (Date.now() < deadline) {
    checkUnexpectedExits(bench)
    const ok = Array.from({ length: bench.settings.partitions }, (_, p) => p).every(
      (p) => bench.watch.firstAdvanceAfter(p, since) !== undefined,
    )
    if (ok) return true
    await sleep(200)
  }
  return false
}

/** Between events: if the group did not settle, until every partition advances (bounded); then --settle. */
async function settle(bench: Bench, o: Observation): Promise<void> {
  if (!o.settled) {
    const boundS = seconds(bench.settings.maxObserveMs, 0)
    progress(`${o.event} did not settle: waiting up to ${boundS} s for every partition to advance`)
    if (!(await waitAdvancing(bench, Date.now(), bench.settings.maxObserveMs)))
      progress(`still not every partition advancing after ${boundS} s; going on`)
  }
  await sleep(bench.settings.settleMs)
}

interface Snapshot {
  openWindows: number
  count: ChangelogCount | undefined
  lagMessages: number
  baselineStallMs: number
}

async function snapshot(bench: Bench): Promise<Snapshot> {
  const { partitions, delivery } = bench.settings
  const now = Date.now()
  const baselineStallMs = Math.max(
    ...Array.from({ length: partitions }, (_, p) => bench.watch.stall(p, now - 10_000, now)),
  )
  const windows = await Promise.all(live(bench).map((r) => r.openWindows()))
  const openWindows = windows.reduce((a, b) => a + b, 0)
  const ends = await bench.admin.fetchTopicOffsets(bench.topic)
  const lagMessages = ends.reduce(
    (t, o) => t + Math.max(0, Number(o.high) - (bench.watch.offsets[o.partition] ?? 0)),
    0,
  )
  let count: ChangelogCount | undefined
  if (delivery === 'exactly-once') {
    progress(`reading changelog ${bench.changelog} to its end`)
    count = await countChangelog(bench.kafka, bench.admin, bench.changelog, partitions, 600_000)
    progress(
      `changelog: ${fmt(count.records.reduce((a, b) => a + b, 0))} records in ${seconds(count.readMs)} s`,
    )
  }
  return { openWindows, count, lagMessages, baselineStallMs }
}

interface RoundResult {
  scaleOut: Observation[]
  scaleIn: Observation
  failover: Observation
  snapshot: Snapshot
  rates: Map<Observation, RestoreRate>
}

async function round(bench: Bench, index: number): Promise<RoundResult> {
  const { settings } = bench
  const rates = new Map<Observation, RestoreRate>()
  const label = settings.rounds > 1 ? ` (round ${index + 1})` : ''
  const snap = await snapshot(bench)
  const totalRecords = snap.count?.records.reduce((a, b) => a + b, 0)
  const lagSeconds = (snap.lagMessages * settings.samplesPerBatch) / Math.max(1, settings.rate)
  console.log(`\n## Before the scale-out${label}`)
  console.log(
    `open windows ${fmt(snap.openWindows)} (kwa_windows_open summed); ` +
      (snap.count === undefined
        ? 'no changelog (at least once)'
        : `changelog ${fmt(totalRecords ?? 0)} records (read_committed, offsets span ` +
          `${fmt(snap.count.spans.reduce((a, b) => a + b, 0))}), ` +
          `${((totalRecords ?? 0) / Math.max(1, snap.openWindows)).toFixed(1)} records per open window`),
  )
  console.log(
    `input lag ${fmt(snap.lagMessages)} messages (~${lagSeconds.toFixed(1)} s of input); ` +
      `longest commit gap in the 10 s before: ${seconds(snap.baselineStallMs)} s`,
  )
  // The changelog read loaded the machine: let the replica catch up before the event.
  if (snap.count !== undefined) {
    await waitAdvancing(bench, Date.now(), 60_000)
    await sleep(Math.min(settings.settleMs, 5_000))
  }
  const finish = (o: Observation, extra: string[] = []) => {
    const rate = restoreRate(o, snap.count)
    rates.set(o, rate)
    printObservation(o, rate, settings.sessionTimeoutMs, extra)
    return o
  }

  // 1. scale out
  const scaleOut: Observation[] = []
  progress(`scale out${label}`)
  let before = owners(bench)
  let from = Date.now()
  const second = bench.startReplica()
  scaleOut.push(
    finish(await observe(bench, `scale-out${label}: start ${second.name}`, from, from, before), [
      `${second.name} started`,
    ]),
  )
  await settle(bench, scaleOut[0]!)

  // 2. scale in
  progress(`scale in${label}`)
  before = owners(bench)
  from = Date.now()
  second.expectedExit = true
  second.child.kill('SIGTERM')
  const shutdownBoundMs = 60_000
  const killTimer = setTimeout(() => second.child.kill('SIGKILL'), shutdownBoundMs)
  const [scaleInObs, exit] = await Promise.all([
    observe(bench, `scale-in${label}: SIGTERM ${second.name}`, from, from, before),
    second.exited,
  ])
  clearTimeout(killTimer)
  const exitText =
    `${second.name} exited with code ${exit.code}${exit.signal === null ? '' : ` (signal ${exit.signal})`} ` +
    `${seconds(exit.at - from)} s after SIGTERM`
  const scaleIn = finish(scaleInObs, [exitText])
  await settle(bench, scaleIn)

  // 3. fail over: a second replica again, then kill -9 the one owning more partitions
  progress(`scale out again, then fail over${label}`)
  before = owners(bench)
  from = Date.now()
  const third = bench.startReplica()
  scaleOut.push(
    finish(
      await observe(bench, `scale-out again${label}: start ${third.name}`, from, from, before),
      [`${third.name} started (the fail-over's second replica)`],
    ),
  )
  await settle(bench, scaleOut[1]!)
  const pair = live(bench)
  const victim = pair.reduce((a, b) => (b.partitions.length > a.partitions.length ? b : a))
  progress(`fail over${label}: kill -9 ${victim.name}`)
  before = owners(bench)
  victim.expectedExit = true
  from = Date.now()
  victim.child.kill('SIGKILL')
  const failover = finish(
    await observe(
      bench,
      `fail-over${label}: kill -9 ${victim.name}`,
      from,
      from + settings.sessionTimeoutMs,
      before,
    ),
    [
      `${victim.name} (owned ${victim.partitions.length} of ${settings.partitions} partitions) killed with SIGKILL; ` +
        `stall counted from the session timeout's expiry (kill + ${seconds(settings.sessionTimeoutMs, 0)} s)`,
    ],
  )
  await victim.exited
  await settle(bench, failover)
  return { scaleOut, scaleIn, failover, snapshot: snap, rates }
}

async function main(): Promise<void> {
  console.log(benchEnvironment())
  const { values } = parseArgs({
    options: {
      brokers: { type: 'string' },
      rate: { type: 'string' },
      keys: { type: 'string', default: '20000' },
      partitions: { type: 'string', default: '8' },
      'samples-per-batch': { type: 'string', default: '1000' },
      warmup: { type: 'string' },
      delivery: { type: 'string', default: 'exactly-once' },
      'session-timeout': { type: 'string', default: '10' },
      settle: { type: 'string' },
      'max-observe': { type: 'string', default: '300' },
      rounds: { type: 'string', default: '1' },
      quick: { type: 'boolean', default: false },
    },
  })
  const quick = values.quick ?? false
  const positive = (name: string, text: string | undefined, fallback: number) => {
    const n = Number(text ?? fallback)
    if (!Number.isFinite(n) || n < 0) throw new Error(`--${name}: expected a number, got ${text}`)
    return n
  }
  if (values.delivery !== 'exactly-once' && values.delivery !== 'at-least-once')
    throw new Error(`--delivery: exactly-once or at-least-once, got ${values.delivery}`)
  const settings: Settings = {
    brokers: values.brokers,
    rate: positive('rate', values.rate, quick ? 50_000 : 300_000),
    keys: positive('keys', values.keys, 20_000),
    partitions: positive('partitions', values.partitions, 8),
    samplesPerBatch: positive('samples-per-batch', values['samples-per-batch'], 1_000),
    warmupMs: 1000 * positive('warmup', values.warmup, quick ? 20 : 120),
    delivery: values.delivery,
    sessionTimeoutMs: 1000 * positive('session-timeout', values['session-timeout'], 10),
    settleMs: 1000 * positive('settle', values.settle, quick ? 5 : 10),
    maxObserveMs: 1000 * positive('max-observe', values['max-observe'], 300),
    rounds: Math.max(1, Math.round(positive('rounds', values.rounds, 1))),
  }
  if (!fs.existsSync(cli)) throw new Error(`${cli} missing: run npm run build first`)
  const startedAt = Date.now()
  fs.rmSync(outDir, { recursive: true, force: true })
  fs.mkdirSync(outDir, { recursive: true })

  let broker: LocalBroker | undefined
  let admin: Admin | undefined
  let watch: OffsetWatch | undefined
  let producer: { child: ChildProcess; exited: Promise<Exit> } | undefined
  const replicas: Replica[] = []
  let cleaning: Promise<void> | undefined
  const cleanup = () =>
    (cleaning ??= (async () => {
      if (producer !== undefined) await stopChild(producer.child, producer.exited, 10_000)
      await Promise.all(
        replicas.map(async (r) => {
          r.expectedExit = true
          await stopChild(r.child, r.exited, 40_000)
        }),
      )
      await watch?.stop()
      await admin?.disconnect().catch(() => undefined)
      await broker?.cleanup()
    })())
  const onSignal = (signal: NodeJS.Signals) => {
    progress(`${signal}: stopping the replicas, the producer and the broker`)
    void cleanup().finally(() => process.exit(130))
  }
  process.once('SIGINT', onSignal)
  process.once('SIGTERM', onSignal)

  try {
    if (settings.brokers === undefined) progress('starting a local broker')
    const brokers = settings.brokers ?? (broker = await startLocalBroker()).brokers
    const stamp = Date.now()
    const topic = `bench-rebalance-${stamp}`
    const groupId = `bench-rebalance-${stamp}`
    const changelog = `${groupId}-window-state-changelog`
    const kafka = createKafka({ brokers: [brokers], clientId: 'bench-rebalance', logger })
    admin = kafka.admin()
    await admin.connect()
    await admin.createTopics({
      waitForLeaders: true,
      topics: [{ topic, numPartitions: settings.partitions }],
    })
    watch = new OffsetWatch(admin, groupId, topic, settings.partitions)
    watch.start()

    let spawned = 0
    const replicaArgs = [
      'run',
      ...['--brokers', brokers, '--group-id', groupId],
      ...['--input-topic', topic, '--output-topic', `${topic}-out`],
      ...['--window-size', windowSize, '--delivery', settings.delivery],
      ...['--session-timeout', `${settings.sessionTimeoutMs}ms`],
      ...['--http-port', '0', '--log-level', 'info'],
    ]
    const bench: Bench = {
      settings,
      admin,
      kafka,
      watch,
      replicas,
      topic,
      groupId,
      changelog,
      startReplica() {
        const r = new Replica(`r${++spawned}`, replicaArgs)
        replicas.push(r)
        progress(`started ${r.name} (pid ${r.child.pid}), log ${path.relative(root, r.logFile)}`)
        return r
      },
    }

    const producerChild = spawnKwa(
      [
        'produce',
        ...['--brokers', brokers, '--input-topic', topic],
        ...['--rate', String(settings.rate), '--keys', String(settings.keys)],
        ...['--partitions', String(settings.partitions)],
        ...['--samples-per-batch', String(settings.samplesPerBatch)],
        ...['--log-level', 'warn'],
      ],
      path.join(outDir, 'producer.log'),
    )
    producer = { child: producerChild, exited: exitOf(producerChild) }
    const first = bench.startReplica()
    const inputAt = async () =>
      (await admin!.fetchTopicOffsets(topic)).reduce((t, o) => t + Number(o.high), 0)
    const warmStart = Date.now()
    const input0 = await inputAt()
    progress(`warming up ${seconds(settings.warmupMs, 0)} s`)
    const warmEnd = warmStart + settings.warmupMs
    while (Date.now() < warmEnd) {
      checkUnexpectedExits(bench)
      if (producerChild.exitCode !== null)
        throw new Error(`the producer exited with code ${producerChild.exitCode}; see ${outDir}`)
      await sleep(500)
    }
    const produced = ((await inputAt()) - input0) * settings.samplesPerBatch
    const producedRate = produced / ((Date.now() - warmStart) / 1000)
    if (first.joins.length === 0 || !(await waitAdvancing(bench, Date.now(), 60_000)))
      throw new Error(`${first.name} is not committing on every partition after the warm-up`)

    console.log(
      `${os.cpus().length} cores, Node ${process.version}; ${settings.delivery}, ${settings.partitions} partitions, ` +
        `${fmt(settings.keys)} series, ${windowSize} tumbling windows, session timeout ${seconds(settings.sessionTimeoutMs, 0)} s; ` +
        `kwa produce at ${fmt(settings.rate)} samples/s asked, ${fmt(producedRate)} measured ` +
        `(${fmt(settings.samplesPerBatch)} samples per message); warm-up ${seconds(settings.warmupMs, 0)} s; ` +
        `committed offsets polled every ${pollMs} ms`,
    )

    const results: RoundResult[] = []
    for (let i = 0; i < settings.rounds; i++) results.push(await round(bench, i))

    const maxStall = (o: Observation) => Math.max(...o.stall) / 1000
    const scaleOut = mid(results.flatMap((r) => r.scaleOut.map(maxStall)))
    const scaleIn = mid(results.map((r) => maxStall(r.scaleIn)))
    const failover = mid(results.map((r) => maxStall(r.failover)))
    const ratios = results.flatMap((r) =>
      r.snapshot.count === undefined
        ? []
        : [
            r.snapshot.count.records.reduce((a, b) => a + b, 0) /
              Math.max(1, r.snapshot.openWindows),
          ],
    )
    console.log(
      `\n## Summary${settings.rounds > 1 ? ` (medians over ${settings.rounds} rounds)` : ''} (scale-out: median of its ${results.length * 2} samples)`,
    )
    console.log(
      '| event | max stall s | restored partitions | records/s (summed ms) | windows/s (summed ms) | records/s (restoring time) | windows/s (restoring time) | settled |',
    )
    console.log('|---|---|---|---|---|---|---|---|')
    for (const r of results) {
      for (const o of [r.scaleOut[0]!, r.scaleIn, r.scaleOut[1]!, r.failover]) {
        const rate = r.rates.get(o)
        const est = rate?.recordsEstimated ? ' (est.)' : ''
        const rates =
          rate === undefined
            ? '- | - | - | -'
            : `${perSecond(rate.records, rate.ms)}${est} | ${perSecond(rate.windows, rate.ms)} | ` +
              `${perSecond(rate.records, rate.busyMs)}${est} | ${perSecond(rate.windows, rate.busyMs)}`
        const raw = o.countFrom > o.from ? ` (raw ${seconds(Math.max(...o.raw))})` : ''
        console.log(
          `| ${o.event} | ${maxStall(o).toFixed(1)}${raw} | ${rate?.partitions ?? 0} | ${rates} | ${o.settled ? 'yes' : 'NO'} |`,
        )
      }
    }
    // What a restore costs per open window it restores (it reads from the last snapshot, not the
    // whole topic).
    const perWindow = results
      .flatMap((r) => [...r.scaleOut, r.scaleIn, r.failover])
      .flatMap((o) => o.restores)
      .flatMap((x) =>
        x.records === undefined || x.windows === undefined || x.windows === 0
          ? []
          : [x.records / x.windows],
      )
    if (perWindow.length > 0) {
      console.log(
        `restores read ${mid(perWindow).toFixed(1)} changelog records per open window restored ` +
          `(median of ${perWindow.length}; ${Math.min(...perWindow).toFixed(1)}-${Math.max(...perWindow).toFixed(1)})`,
      )
    }
    for (const r of replicas) {
      const exit = r.exit === undefined ? 'running' : `exit ${r.exit.code ?? r.exit.signal}`
      console.log(
        `${r.name}: ${exit}, ${r.warnings} warnings, ${r.errors} errors logged (${path.relative(root, r.logFile)})`,
      )
    }
    console.log(`run took ${seconds(Date.now() - startedAt, 0)} s`)
    console.log(
      `rebalance: scale-out stall ${scaleOut.toFixed(1)} s, scale-in stall ${scaleIn.toFixed(1)} s, ` +
        `failover stall ${failover.toFixed(1)} s after session timeout; changelog ` +
        `${ratios.length === 0 ? 'n/a' : mid(ratios).toFixed(1)} records per open window`,
    )
  } finally {
    await cleanup()
  }
}

main().then(
  () => process.exit(0),
  (error: unknown) => {
    console.error(error)
    process.exit(1)
  },
)
