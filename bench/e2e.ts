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
 *
 *   npm run bench:e2e -- [--brokers host:port] [--samples 2000000] [--latency-seconds 15] [--quick]
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
const logger = createLogger('error')
const root = path.join(__dirname, '..')
const outDir = path.join(root, '.cache', 'bench-e2e')

type Delivery = 'at-least-once' | 'exactly-once'
type Engine = 'native' | 'avsc'

interface Input {
  topic: string
  messages: number
  samplesPerMessage: number
}

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
    keys,
    partitions,
    samplesPerBatch: input.samplesPerMessage,
    outOfOrder: 0.01,
    maxDelayMs: 1_000,
  })
  const producer = kafka.producer({ createPartitioner: Partitioners.DefaultPartitioner })
  await producer.connect()
  const t0 = 1_700_000_000_000
  // Event time advances 100 samples' worth per ms: 1 s windows close steadily.
  const msPerMessage = input.samplesPerMessage / 100
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
      ...['--window-size', `${window.sizeMs}ms`, '--grace', `${window.graceMs}ms`],
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
  const procs = Array.from({ length: replicas }, (_, i) =>
    spawnReplica(
      {
        brokers,
        groupId,
        topic: input.topic,
        outputTopic: `${input.topic}-out-${label}`,
        delivery,
        engine,
        profileDir,
      },
      `${label}-${i}`,
    ),
  )
  try {
    let start: { at: number; done: number } | undefined
    const deadline = Date.now() + 600_000
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
        throw new Error(`${label}: ${done} of ${total} samples after 10 min`)
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
  if (fn === 'encodeClosedWindows' || /consumer\/(dead-letter|changelog)\.ts/.test(url))
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
    { brokers, groupId, topic, outputTopic: `${topic}-out`, delivery, engine: 'native' },
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

async function main(): Promise<void> {
  console.log(benchEnvironment())
  const { values } = parseArgs({
    options: {
      brokers: { type: 'string' },
      samples: { type: 'string', default: '2000000' },
      'latency-seconds': { type: 'string', default: '15' },
      quick: { type: 'boolean', default: false },
    },
  })
  const totalSamples = Number(values.samples)
  fs.rmSync(outDir, { recursive: true, force: true })
  fs.mkdirSync(outDir, { recursive: true })
  let broker: LocalBroker | undefined
  const brokers = values.brokers ?? (broker = await startLocalBroker()).brokers
  try {
    const inputs = new Map<number, Input>()
    for (const samplesPerMessage of [100, 1_000]) {
      const input = {
        topic: `bench-e2e-${samplesPerMessage}-${Date.now()}`,
        messages: totalSamples / samplesPerMessage,
        samplesPerMessage,
      }
      await produceInput(brokers, input)
      inputs.set(samplesPerMessage, input)
    }
    console.error(`input produced: ${fmt(totalSamples)} samples per size`)

    const rows: {
      delivery: Delivery
      engine: Engine
      spm: number
      replicas: number
      t: Throughput
    }[] = []
    const configs: [Delivery, Engine, number, number][] = []
    for (const delivery of ['at-least-once', 'exactly-once'] as const) {
      for (const spm of [100, 1_000])
        for (const replicas of [1, 2]) configs.push([delivery, 'native', spm, replicas])
      configs.push([delivery, 'avsc', 1_000, 1])
    }
    for (const [delivery, engine, spm, replicas] of values.quick
      ? configs.filter((c) => c[2] === 1_000 && c[3] === 1)
      : configs) {
      const label = `${delivery}-${engine}-${spm}-${replicas}`
      const t = await measure(brokers, inputs.get(spm) as Input, delivery, engine, replicas, label)
      rows.push({ delivery, engine, spm, replicas, t })
      console.error(`${label}: ${fmt(t.samplesPerSecond)} samples/s`)
    }

    const profiles: { delivery: Delivery; split: Record<Stage, number> }[] = []
    for (const delivery of ['at-least-once', 'exactly-once'] as const) {
      const dir = path.join(outDir, `profile-${delivery}`)
      await measure(
        brokers,
        inputs.get(1_000) as Input,
        delivery,
        'native',
        1,
        `profile-${delivery}`,
        dir,
      )
      const file = fs.readdirSync(dir).find((f) => f.endsWith('.cpuprofile'))
      if (file === undefined) throw new Error(`no CPU profile in ${dir}`)
      profiles.push({ delivery, split: profileSplit(path.join(dir, file)) })
    }

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
        l: await measureLatency(
          brokers,
          delivery,
          best(delivery) / 2,
          Number(values['latency-seconds']),
        ),
      })
    }

    console.log(
      `\n${os.cpus().length} cores, Node ${process.version}; ${fmt(totalSamples)} samples per run, ${partitions} partitions, ${fmt(keys)} series, ${window.sizeMs} ms tumbling windows, grace ${window.graceMs} ms; clock from the group's first commit to its last`,
    )
    console.log(
      '| delivery | decoder | samples/message | replicas | samples/s | messages/s | seconds |',
    )
    console.log('|---|---|---|---|---|---|---|')
    for (const r of rows) {
      console.log(
        `| ${r.delivery} | ${r.engine} | ${fmt(r.spm)} | ${r.replicas} | ${fmt(r.t.samplesPerSecond)} | ${fmt(r.t.messagesPerSecond)} | ${r.t.seconds.toFixed(2)} |`,
      )
    }
    console.log(
      '\nCPU profile of one replica (1000 samples/message, native decoder): time by stage, % of the run after start-up (module loading, shown apart)',
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
