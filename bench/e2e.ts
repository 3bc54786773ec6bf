/**
 * End to end on a real local broker: decode → aggregate → publish → commit, with replicas as
 * separate `kwa run` processes, side by side in one run:
 *
 * 1. Throughput for each delivery mode × samples per message (100, 1000) × replicas (1, 2), with
 *    the native decoder, and the avsc decoder for comparison (1 replica). Input is produced up
 *    front; the clock runs from the group's first commit to its last (startup and group join
 *    excluded), and counts the samples committed in between.
 * 2. A CPU profile (`node --cpu-prof`) of one replica per delivery mode, split by where the time
 *    goes: fetch, Avro decode, native (decode + aggregate), encode and produce, commit, GC, idle.
 * 3. Latency at half the measured load: samples stamped with the wall clock, produced at a steady
 *    rate; for each result, its publish time minus its window's start (the ideal is window size +
 *    grace) and minus its window's close time (end + grace).
 * 4. 1M series: the throughput measurement of 1 (same clock, same counting) with 1M distinct
 *    series keys, for each delivery mode, 1 replica, native decoder, 100 samples per message. It
 *    runs after 1–3 (whose input, conditions and output it leaves as they were), on its own input
 *    topic, and prints its own table after theirs, then a CPU profile of each row (as 2).
 *
 *   npm run bench:e2e -- [--brokers host:port] [--samples 2000000] [--latency-seconds 15] [--quick]
 *                        [--samples-1m 10000000] [--no-1m | --only-1m]
 *
 * --quick runs 1 at 1000 samples per message and 1 replica only, then 2 and 3, and no 1M rows.
 * --no-1m skips the 1M rows; --only-1m runs only them (no 10k rows, their profile or latency; it starts
 * the broker and produces only their input).
 *
 * The 1M rows' geometry. In the 10k rows each series gets 10 samples per window (event time
 * advances 100 samples per ms: 100k samples per 1 s window), so nearly every sample updates an
 * open (series, window) aggregate, and one result is published per 10 samples. With 1M series
 * the same 1 s windows would give each series a sample every 10 windows: every sample would open
 * an aggregate, and the row would measure a fill, not the steady state. So the 1M rows use 60 s
 * tumbling windows with 30 s grace (the 10k rows' grace-to-size ratio), and event time advances
 * 5 samples per series per window (5M samples per 60 s of event time, ~83 per ms): about 80% of
 * the samples land in an open aggregate (each (series, window) opens once, at its first of ~5
 * samples), and 1 result is published per 10 samples, as in the 10k rows. Event time starts on a
 * window boundary, so the input covers --samples-1m / 5M windows: the default 10M samples (10
 * per series) cover 2 windows, 120 s of event time, and the first window closes mid-run (its 1M
 * results are published at 75% of the input; the second stays open at the end, like the 10k
 * rows' last window). More samples cover more windows at the same density: --samples-1m 20000000
 * covers 4, of which 3 close. Out-of-order samples (1%, up to 1 s) are never late.
 *
 * A window close publishes every series of the partition at once (250k results, ~62k per output
 * partition, ~5 MB): both modes split it into requests of at most 512 KiB (consumer/transactions.ts
 * requestsBySize, chunkBySize), so the topics keep the broker's default max.message.bytes (1 MiB).
 *
 * Memory: the replica is launched as for the other rows (no heap flags). Its open aggregates are
 * native memory (~200–270 B each with keys; 1M series × up to 2 open windows while one waits out its
 * grace, a few hundred MB); the JS heap holds a window close's output (1M records when all four
 * partitions close), well within Node's default heap limit.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { parseArgs } from 'node:util'
import { Partitioners, type Admin } from 'kafkajs'
import { decodeCheckpoint } from '../consumer/checkpoint'
import { createKafka } from '../consumer/kafka'
import { createLogger } from '../consumer/logger'
import { TelemetryGenerator } from '../consumer/produce'
import { decodeWindowAggregate, encodeTelemetryBatch } from '../consumer/schemas'
import { startLocalBroker, type LocalBroker } from '../scripts/local-kafka'
import { fmt, median, percentile, benchEnvironment } from './lib'

const partitions = 4
const keys = 10_000
const window = { sizeMs: 1_000, graceMs: 500 }
/** Samples per series per window in the 10k rows (event time: 100 samples per ms). */
const perSeriesWindow = 10
/** The 1M rows (see the header): series, window, density, message size, output topic. */
const oneM = {
  keys: 1_000_000,
  window: { sizeMs: 60_000, graceMs: 30_000 },
  perSeriesWindow: 5,
  samplesPerMessage: 100,
}
const logger = createLogger('error')
const root = path.join(__dirname, '..')
const outDir = path.join(root, '.cache', 'bench-e2e')

type Delivery = 'at-least-once' | 'exactly-once'
type Engine = 'native' | 'avsc'

interface Window {
  sizeMs: number
  graceMs: number
}

interface Input {
  topic: string
  messages: number
  samplesPerMessage: number
  /** Distinct series keys. */
  keys: number
  /** The replicas' tumbling window. */
  window: Window
  /** Samples per series per window: sets how fast event time advances. */
  perSeriesWindow: number
}

/** Event time per message: each window gets `perSeriesWindow` samples of every series. */
const eventMsPerMessage = (input: Input) =>
  (input.window.sizeMs * input.samplesPerMessage) / (input.keys * input.perSeriesWindow)

async function produceInput(brokers: string, input: Input): Promise<void> {
  const kafka = createKafka({ brokers: [brokers], clientId: 'bench', logger })
  const admin = kafka.admin()
  await admin.connect()
  await admin.createTopics({
    waitForLeaders: true,
    topics: [{ topic: input.topic, numPartitions: partitions }],
  })
  await admin.disconnect()
  const generator = new TelemetryGenerator({
    keys: input.keys,
    partitions,
    samplesPerBatch: input.samplesPerMessage,
    outOfOrder: 0.01,
    maxDelayMs: 1_000,
  })
  const producer = kafka.producer({ createPartitioner: Partitioners.DefaultPartitioner })
  await producer.connect()
  // On a window boundary (for 1 s windows, 1_700_000_000_000 itself).
  const t0 = 1_700_000_000_000 - (1_700_000_000_000 % input.window.sizeMs)
  // 10k rows: event time advances 100 samples' worth per ms, so 1 s windows close steadily;
  // 1M rows: 5M samples per 60 s window (see the header).
  const msPerMessage = eventMsPerMessage(input)
  // Requests under the broker's 1 MB default: ~20k samples each.
  const perSend = Math.max(1, Math.floor(20_000 / input.samplesPerMessage))
  for (let m = 0; m < input.messages; m += perSend) {
    const batch = Array.from({ length: Math.min(perSend, input.messages - m) }, (_, i) => {
      const partition = (m + i) % partitions
      const t = t0 + Math.floor((m + i) * msPerMessage)
      return { partition, value: encodeTelemetryBatch(generator.batch(partition, t)) }
    })
    await producer.send({ topic: input.topic, acks: -1, messages: batch })
  }
  await producer.disconnect()
}

interface ReplicaOptions {
  brokers: string
  groupId: string
  topic: string
  outputTopic: string
  delivery: Delivery
  engine: Engine
  window: Window
  /** Directory for a CPU profile written at exit. */
  profileDir?: string
}

/** One `kwa run` process; its output goes to a log file. */
function spawnReplica(
  o: ReplicaOptions,
  name: string,
): { child: ChildProcess; exited: Promise<void> } {
  const log = fs.openSync(path.join(outDir, `${name}.log`), 'w')
  const nodeArgs =
    o.profileDir === undefined ? [] : ['--cpu-prof', `--cpu-prof-dir=${o.profileDir}`]
  const child = spawn(
    process.execPath,
    [
      ...nodeArgs,
      '--import',
      'tsx',
      'consumer/cli.ts',
      'run',
      ...['--brokers', o.brokers, '--group-id', o.groupId],
      ...['--input-topic', o.topic, '--output-topic', o.outputTopic],
      ...['--window-size', `${o.window.sizeMs}ms`, '--grace', `${o.window.graceMs}ms`],
      ...['--delivery', o.delivery, '--decoder', o.engine],
      ...['--http-port', '0'],
      ...['--log-level', 'warn'],
    ],
    { cwd: root, stdio: ['ignore', log, log] },
  )
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()))
  return { child, exited }
}

/** Samples committed so far by the group (at least once: from the checkpoint's progress). */
async function progress(admin: Admin, groupId: string, input: Input): Promise<number> {
  const [committed] = await admin.fetchOffsets({ groupId, topics: [input.topic] })
  let messages = 0
  for (const p of committed?.partitions ?? []) {
    const done = decodeCheckpoint(p.metadata)?.processedUpTo ?? Number(p.offset)
    if (done > 0) messages += done
  }
  return messages * input.samplesPerMessage
}

interface Throughput {
  samplesPerSecond: number
  messagesPerSecond: number
  seconds: number
}

async function measure(
  brokers: string,
  input: Input,
  delivery: Delivery,
  engine: Engine,
  replicas: number,
  label: string,
  profileDir?: string,
): Promise<Throughput> {
  const kafka = createKafka({ brokers: [brokers], clientId: 'bench', logger })
  const admin = kafka.admin()
  await admin.connect()
  const groupId = `bench-${label}-${Date.now()}`
  const total = input.messages * input.samplesPerMessage
  const outputTopic = `${input.topic}-out-${label}`
  const procs = Array.from({ length: replicas }, (_, i) =>
    spawnReplica(
      {
        brokers,
        groupId,
        topic: input.topic,
        outputTopic,
        delivery,
        engine,
        window: input.window,
        profileDir,
      },
      `${label}-${i}`,
    ),
  )
  try {
    let start: { at: number; done: number } | undefined
    // 10 min, or longer for a large input (at 20k samples/s).
    const timeoutMs = Math.max(600_000, total / 20)
    const deadline = Date.now() + timeoutMs
    for (;;) {
      const done = await progress(admin, groupId, input)
      const at = performance.now()
      if (start === undefined && done > 0) start = { at, done }
      if (done >= total && start !== undefined) {
        const seconds = (at - start.at) / 1000
        const samples = total - start.done
        return {
          seconds,
          samplesPerSecond: samples / seconds,
          messagesPerSecond: samples / input.samplesPerMessage / seconds,
        }
      }
      if (Date.now() > deadline)
        throw new Error(
          `${label}: ${done} of ${total} samples after ${Math.round(timeoutMs / 60_000)} min`,
        )
      if (procs.some((p) => p.child.exitCode !== null))
        throw new Error(`${label}: a replica exited (see ${outDir})`)
      await new Promise((resolve) => setTimeout(resolve, 20))
    }
  } finally {
    for (const p of procs) p.child.kill('SIGTERM')
    await Promise.all(procs.map((p) => p.exited))
    await admin.disconnect()
  }
}

// ---------------------------------------------------------------------------------------------
// CPU profile, by stage

const stages = [
  'fetch',
  'Avro decode (JS)',
  'native (decode + aggregate)',
  'encode + produce',
  'commit',
  'kafka client (other)',
  'pipeline and service JS',
  'start-up (module loading)',
  'other',
  'GC',
  'idle',
] as const
type Stage = (typeof stages)[number]

interface ProfileNode {
  id: number
  callFrame: { functionName: string; url: string }
  children?: number[]
}

/** The stage a frame itself belongs to, if it says (Buffer and other helpers don't). */
function frameStage(node: ProfileNode): Stage | undefined {
  const { functionName: fn, url } = node.callFrame
  if (fn === '(idle)') return 'idle'
  if (fn === '(garbage collector)') return 'GC'
  // A native call's time is the self time of the JS function that makes it.
  if (/consumer\/pipeline\.ts/.test(url) && /^(ingestNatively|ingest)$/.test(fn)) {
    return 'native (decode + aggregate)'
  }
  const kafkajs = /kafkajs\/src\/(.*)/.exec(url)?.[1]
  if (kafkajs !== undefined) {
    if (
      /offsetCommit|txnOffsetCommit|addOffsetsToTxn|endTxn|addPartitionsToTxn|eosManager|commitOffsets|offsetManager/.test(
        kafkajs,
      )
    )
      return 'commit'
    if (
      /^producer|requests\/produce|recordBatch\/(v0|record\/v0)\/index|protocol\/encoder|murmur2|partitioners|crc32|compression/.test(
        kafkajs,
      )
    )
      return 'encode + produce'
    if (/^consumer|requests\/fetch|protocol\/decoder|recordBatch/.test(kafkajs)) return 'fetch'
    return 'kafka client (other)'
  }
  if (/avsc\/lib/.test(url)) return /write|Write/.test(fn) ? 'encode + produce' : 'Avro decode (JS)'
  if (/consumer\/(decode|avro-types)\.ts/.test(url) || fn === 'toColumns') return 'Avro decode (JS)'
  // Results and changelog records: encoded natively, from results.ts and changelog.ts.
  if (/consumer\/(dead-letter|changelog|results|encoded-records)\.ts/.test(url))
    return 'encode + produce'
  if (/consumer\/(transactions)\.ts/.test(url)) return 'commit'
  if (/\/consumer\//.test(url)) return 'pipeline and service JS'
  if (/node:internal\/modules|tsx\/dist|esbuild|^wasm:/.test(url))
    return 'start-up (module loading)'
  return undefined
}

/** Time per stage, in ms: each sample goes to its innermost frame that names a stage. */
function profileSplit(file: string): Record<Stage, number> {
  const profile = JSON.parse(fs.readFileSync(file, 'utf8')) as {
    nodes: ProfileNode[]
    samples: number[]
    timeDeltas: number[]
  }
  const byId = new Map(profile.nodes.map((n) => [n.id, n]))
  const parent = new Map<number, number>()
  for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id)
  const stageById = new Map<number, Stage>()
  const stageOf = (id: number): Stage => {
    const known = stageById.get(id)
    if (known !== undefined) return known
    const own = frameStage(byId.get(id) as ProfileNode)
    const up = parent.get(id)
    const stage = own ?? (up === undefined ? 'other' : stageOf(up))
    stageById.set(id, stage)
    return stage
  }
  const split = Object.fromEntries(stages.map((s) => [s, 0])) as Record<Stage, number>
  profile.samples.forEach((id, i) => {
    split[stageOf(id)] += (profile.timeDeltas[i] ?? 0) / 1000
  })
  return split
}

// ---------------------------------------------------------------------------------------------
// Latency at a steady rate

interface Latency {
  rate: number
  results: number
  fromStartP50: number
  fromStartP99: number
  afterCloseP50: number
  afterCloseP99: number
}

async function measureLatency(
  brokers: string,
  delivery: Delivery,
  rate: number,
  seconds: number,
): Promise<Latency> {
  const samplesPerMessage = 1_000
  const topic = `bench-latency-${delivery}-${Date.now()}`
  const kafka = createKafka({ brokers: [brokers], clientId: 'bench', logger })
  const admin = kafka.admin()
  await admin.connect()
  await admin.createTopics({
    waitForLeaders: true,
    topics: [topic, `${topic}-out`].map((t) => ({ topic: t, numPartitions: partitions })),
  })
  const groupId = `bench-latency-${delivery}-${Date.now()}`
  const replica = spawnReplica(
    { brokers, groupId, topic, outputTopic: `${topic}-out`, delivery, engine: 'native', window },
    `latency-${delivery}`,
  )
  const results: { publishedAt: number; windowStart: number }[] = []
  const consumer = kafka.consumer({ groupId: `${groupId}-reader`, readUncommitted: false })
  try {
    // Wait until the replica owns the partitions (group stable), so start-up is not measured.
    for (let i = 0; ; i++) {
      const { groups } = await admin.describeGroups([groupId])
      if (groups[0]?.state === 'Stable') break
      if (i > 600) throw new Error('replica did not join')
      await new Promise((resolve) => setTimeout(resolve, 100))
    }
    await consumer.connect()
    await consumer.subscribe({ topic: `${topic}-out`, fromBeginning: true })
    await consumer.run({
      eachMessage: ({ message }) => {
        const aggregate = decodeWindowAggregate(message.value as Buffer)
        results.push({ publishedAt: Number(message.timestamp), windowStart: aggregate.windowStart })
        return Promise.resolve()
      },
    })
    const generator = new TelemetryGenerator({
      keys,
      partitions,
      samplesPerBatch: samplesPerMessage,
      outOfOrder: 0,
      maxDelayMs: 0,
    })
    const producer = kafka.producer({ createPartitioner: Partitioners.DefaultPartitioner })
    await producer.connect()
    const messagesPerTick = Math.max(1, Math.round(rate / samplesPerMessage / 20))
    const started = Date.now()
    let sent = 0
    // 20 sends a second, each stamped with the wall clock.
    while (Date.now() - started < seconds * 1000) {
      const due = ((Date.now() - started) / 1000) * (rate / samplesPerMessage)
      if (sent < due) {
        const now = Date.now()
        const messages = Array.from({ length: messagesPerTick }, (_, i) => {
          const partition = (sent + i) % partitions
          return { partition, value: encodeTelemetryBatch(generator.batch(partition, now)) }
        })
        sent += messages.length
        await producer.send({ topic, acks: 1, messages })
      } else {
        await new Promise((resolve) => setTimeout(resolve, 5))
      }
    }
    const actualRate = (sent * samplesPerMessage) / ((Date.now() - started) / 1000)
    await producer.disconnect()
    // Windows that started while producing, and closed before the end (measured ones only).
    const lastClosable = started + seconds * 1000 - window.sizeMs - window.graceMs
    await new Promise((resolve) => setTimeout(resolve, 3 * (window.sizeMs + window.graceMs)))
    const measured = results.filter(
      (r) => r.windowStart >= started + 2_000 && r.windowStart <= lastClosable,
    )
    const fromStart = measured.map((r) => r.publishedAt - r.windowStart)
    const afterClose = measured.map(
      (r) => r.publishedAt - (r.windowStart + window.sizeMs + window.graceMs),
    )
    return {
      rate: actualRate,
      results: measured.length,
      fromStartP50: percentile(fromStart, 50),
      fromStartP99: percentile(fromStart, 99),
      afterCloseP50: percentile(afterClose, 50),
      afterCloseP99: percentile(afterClose, 99),
    }
  } finally {
    await consumer.disconnect()
    replica.child.kill('SIGTERM')
    await replica.exited
    await admin.disconnect()
  }
}

// ---------------------------------------------------------------------------------------------

interface Row {
  delivery: Delivery
  engine: Engine
  spm: number
  replicas: number
  t: Throughput
}

function printRows(rows: Row[]): void {
  console.log(
    '| delivery | decoder | samples/message | replicas | samples/s | messages/s | seconds |',
  )
  console.log('|---|---|---|---|---|---|---|')
  for (const r of rows) {
    console.log(
      `| ${r.delivery} | ${r.engine} | ${fmt(r.spm)} | ${r.replicas} | ${fmt(r.t.samplesPerSecond)} | ${fmt(r.t.messagesPerSecond)} | ${r.t.seconds.toFixed(2)} |`,
    )
  }
}

/** Sections 1–3 (10k series): throughput rows, CPU profiles, latency; then their tables. */
async function run10k(
  brokers: string,
  totalSamples: number,
  quick: boolean,
  latencySeconds: number,
): Promise<void> {
  const inputs = new Map<number, Input>()
  for (const samplesPerMessage of [100, 1_000]) {
    const input = {
      topic: `bench-e2e-${samplesPerMessage}-${Date.now()}`,
      messages: totalSamples / samplesPerMessage,
      samplesPerMessage,
      keys,
      window,
      perSeriesWindow,
    }
    await produceInput(brokers, input)
    inputs.set(samplesPerMessage, input)
  }
  console.error(`input produced: ${fmt(totalSamples)} samples per size`)

  const rows: Row[] = []
  const configs: [Delivery, Engine, number, number][] = []
  for (const delivery of ['at-least-once', 'exactly-once'] as const) {
    for (const spm of [100, 1_000])
      for (const replicas of [1, 2]) configs.push([delivery, 'native', spm, replicas])
    configs.push([delivery, 'avsc', 1_000, 1])
  }
  for (const [delivery, engine, spm, replicas] of quick
    ? configs.filter((c) => c[2] === 1_000 && c[3] === 1)
    : configs) {
    const label = `${delivery}-${engine}-${spm}-${replicas}`
    const t = await measure(brokers, inputs.get(spm) as Input, delivery, engine, replicas, label)
    rows.push({ delivery, engine, spm, replicas, t })
    console.error(`${label}: ${fmt(t.samplesPerSecond)} samples/s`)
  }

  const profiles = await profileReplicas(brokers, inputs.get(1_000) as Input, 'profile')

  const best = (d: Delivery) =>
    median(
      rows
        .filter(
          (r) => r.delivery === d && r.engine === 'native' && r.spm === 1_000 && r.replicas === 1,
        )
        .map((r) => r.t.samplesPerSecond),
    )
  const latencies: { delivery: Delivery; l: Latency }[] = []
  for (const delivery of ['at-least-once', 'exactly-once'] as const) {
    latencies.push({
      delivery,
      l: await measureLatency(brokers, delivery, best(delivery) / 2, latencySeconds),
    })
  }

  console.log(
    `\n${os.cpus().length} cores, Node ${process.version}; ${fmt(totalSamples)} samples per run, ${partitions} partitions, ${fmt(keys)} series, ${window.sizeMs} ms tumbling windows, grace ${window.graceMs} ms; clock from the group's first commit to its last`,
  )
  printRows(rows)
  printProfiles('1000 samples/message', profiles)
  console.log(
    '\nLatency at half the load above (1 replica, 1000 samples/message, wall-clock event time), ms',
  )
  console.log(
    '| delivery | samples/s | windows | publish − window start p50 | p99 | publish − window close p50 | p99 | target p99 (2 × (size + grace)) |',
  )
  console.log('|---|---|---|---|---|---|---|---|')
  for (const { delivery, l } of latencies) {
    console.log(
      `| ${delivery} | ${fmt(l.rate)} | ${fmt(l.results)} | ${fmt(l.fromStartP50)} | ${fmt(l.fromStartP99)} | ${fmt(l.afterCloseP50)} | ${fmt(l.afterCloseP99)} | ${fmt(2 * (window.sizeMs + window.graceMs))} |`,
    )
  }
  console.log(
    `e2e: at-least-once ${Math.round(best('at-least-once'))} samples/s, exactly-once ${Math.round(best('exactly-once'))} samples/s`,
  )
}

interface Profile {
  delivery: Delivery
  split: Record<Stage, number>
}

/** One replica per delivery mode, run again on `input` with `--cpu-prof`: its time by stage. */
async function profileReplicas(brokers: string, input: Input, prefix: string): Promise<Profile[]> {
  const profiles: Profile[] = []
  for (const delivery of ['at-least-once', 'exactly-once'] as const) {
    const dir = path.join(outDir, `${prefix}-${delivery}`)
    await measure(brokers, input, delivery, 'native', 1, `${prefix}-${delivery}`, dir)
    const file = fs.readdirSync(dir).find((f) => f.endsWith('.cpuprofile'))
    if (file === undefined) throw new Error(`no CPU profile in ${dir}`)
    profiles.push({ delivery, split: profileSplit(path.join(dir, file)) })
  }
  return profiles
}

function printProfiles(input: string, profiles: Profile[]): void {
  console.log(
    `\nCPU profile of one replica (${input}, native decoder): time by stage, % of the run after start-up (module loading, shown apart)`,
  )
  console.log(`| stage | ${profiles.map((p) => p.delivery).join(' | ')} |`)
  console.log(`|---|${profiles.map(() => '---').join('|')}|`)
  for (const stage of stages) {
    const cells = profiles.map((p) => {
      const startup = p.split['start-up (module loading)']
      if (stage === 'start-up (module loading)') return `${fmt(startup)} ms`
      const total = stages.reduce((sum, s) => sum + p.split[s], 0) - startup
      return `${((100 * p.split[stage]) / total).toFixed(1)}%`
    })
    console.log(`| ${stage} | ${cells.join(' | ')} |`)
  }
}

/** Section 4: the 1M-series rows (see the header), their table and a CPU profile of each. */
async function run1m(brokers: string, samples: number): Promise<void> {
  const input: Input = {
    topic: `bench-e2e-1m-${oneM.samplesPerMessage}-${Date.now()}`,
    messages: samples / oneM.samplesPerMessage,
    samplesPerMessage: oneM.samplesPerMessage,
    keys: oneM.keys,
    window: oneM.window,
    perSeriesWindow: oneM.perSeriesWindow,
  }
  const { sizeMs, graceMs } = input.window
  const spanMs = Math.round(input.messages * eventMsPerMessage(input))
  // Window k closes once stream time (the latest event time) reaches its end + grace.
  const lastEventMs = Math.floor((input.messages - 1) * eventMsPerMessage(input))
  const closing = Math.max(0, Math.floor((lastEventMs - graceMs) / sizeMs))
  const geometry =
    `${fmt(oneM.keys)} series, ${fmt(samples)} samples per run (${fmt(samples / oneM.keys, 1)} per series), ` +
    `${oneM.samplesPerMessage} samples/message, ${partitions} partitions, ` +
    `${sizeMs / 1000} s tumbling windows, grace ${graceMs / 1000} s; event time over ${spanMs / 1000} s ` +
    `(${fmt(spanMs / sizeMs, 1)} windows, ${oneM.perSeriesWindow} samples per series per window), ` +
    `${closing} window${closing === 1 ? '' : 's'} closing during the run (~${fmt(closing * oneM.keys)} results)`
  if (closing === 0) {
    console.error(
      `warning: --samples-1m ${samples}: no window closes during the 1M rows (about ${fmt(((sizeMs + graceMs) / sizeMs) * oneM.keys * oneM.perSeriesWindow)} samples close one)`,
    )
  }
  await produceInput(brokers, input)
  console.error(`input produced: ${fmt(samples)} samples over ${fmt(oneM.keys)} series`)

  const rows: Row[] = []
  for (const delivery of ['at-least-once', 'exactly-once'] as const) {
    const label = `1m-${delivery}-native-${oneM.samplesPerMessage}-1`
    const t = await measure(brokers, input, delivery, 'native', 1, label)
    rows.push({ delivery, engine: 'native', spm: oneM.samplesPerMessage, replicas: 1, t })
    console.error(`${label} (1M series): ${fmt(t.samplesPerSecond)} samples/s`)
  }

  console.log(
    `\n1M series, ${os.cpus().length} cores, Node ${process.version}; ${geometry}; clock from the group's first commit to its last`,
  )
  printRows(rows)
  printProfiles('1M series', await profileReplicas(brokers, input, 'profile-1m'))
  const rate = (d: Delivery) =>
    Math.round(rows.find((r) => r.delivery === d)?.t.samplesPerSecond ?? NaN)
  console.log(
    `e2e 1M series: at-least-once ${rate('at-least-once')} samples/s, exactly-once ${rate('exactly-once')} samples/s`,
  )
}

async function main(): Promise<void> {
  console.log(benchEnvironment())
  const { values } = parseArgs({
    options: {
      brokers: { type: 'string' },
      samples: { type: 'string', default: '2000000' },
      'latency-seconds': { type: 'string', default: '15' },
      quick: { type: 'boolean', default: false },
      'samples-1m': { type: 'string', default: '10000000' },
      'no-1m': { type: 'boolean', default: false },
      'only-1m': { type: 'boolean', default: false },
    },
  })
  if (values['no-1m'] && values['only-1m']) throw new Error('--no-1m and --only-1m: choose one')
  const samples1m = Number(values['samples-1m'])
  if (
    !Number.isSafeInteger(samples1m) ||
    samples1m <= 0 ||
    samples1m % oneM.samplesPerMessage !== 0
  ) {
    throw new Error(
      `--samples-1m: expected a positive multiple of ${oneM.samplesPerMessage}, got ${values['samples-1m']}`,
    )
  }
  const with10k = !values['only-1m']
  const with1m = values['only-1m'] || (!values['no-1m'] && !values.quick)
  const totalSamples = Number(values.samples)
  fs.rmSync(outDir, { recursive: true, force: true })
  fs.mkdirSync(outDir, { recursive: true })
  let broker: LocalBroker | undefined
  const brokers = values.brokers ?? (broker = await startLocalBroker()).brokers
  try {
    // The 10k tables are printed before the 1M rows start: a failing 1M row loses only the 1M table.
    if (with10k)
      await run10k(brokers, totalSamples, values.quick, Number(values['latency-seconds']))
    if (with1m) await run1m(brokers, samples1m)
  } finally {
    await broker?.cleanup()
  }
}

main().then(
  () => process.exit(0),
  (error: unknown) => {
    console.error(error)
    process.exit(1)
  },
)
