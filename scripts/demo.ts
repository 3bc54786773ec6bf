/**
 * The quick start (`npm run demo`): a local Kafka broker, the topics, two aggregator replicas in
 * one consumer group, a synthetic producer, and the windowed averages as they are published.
 * Ctrl-C stops everything, broker included.
 *
 *   --brokers host:port   use a running broker instead of starting one
 *   --seconds N           stop by itself after N seconds
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { createWriteStream, mkdirSync } from 'node:fs'
import path from 'node:path'
import { createInterface } from 'node:readline'
import { parseArgs } from 'node:util'
import { Kafka, logLevel } from 'kafkajs'
import { createLogger } from '../consumer/logger'
import { tailAggregates } from '../consumer/tail'
import { startLocalBroker, type LocalBroker } from './local-kafka'

const root = path.resolve(__dirname, '..')
const logDir = path.join(root, '.cache', 'demo')
const cli = path.join(root, 'dist', 'consumer', 'cli.js')
const inputTopic = 'telemetry'
const outputTopic = 'telemetry-aggregates'
const partitions = 4

const say = (line: string) => process.stdout.write(`${line}\n`)

async function createTopics(brokers: string): Promise<void> {
  const admin = new Kafka({ brokers: [brokers], logLevel: logLevel.NOTHING }).admin()
  await admin.connect()
  await admin.createTopics({
    topics: [inputTopic, outputTopic].map((topic) => ({ topic, numPartitions: partitions })),
    waitForLeaders: true,
  })
  await admin.disconnect()
}

/** Runs `kwa <args>`, its JSON logs to a file; group joins are echoed to the terminal. */
function kwa(name: string, args: string[], brokers: string): ChildProcess {
  const child = spawn(process.execPath, [cli, ...args], {
    env: { ...process.env, KAFKA_BROKERS: brokers },
    stdio: ['ignore', 'inherit', 'pipe'],
    // Own process group: Ctrl-C reaches the demo only, which then stops each child once.
    detached: true,
  })
  const log = createWriteStream(path.join(logDir, `${name}.log`))
  createInterface({ input: child.stderr }).on('line', (line) => {
    log.write(`${line}\n`)
    try {
      const entry = JSON.parse(line) as {
        msg?: string
        partitions?: number[]
        level?: number
        url?: string
      }
      if (entry.msg === 'joined group')
        say(`[${name}] joined the group: partitions ${JSON.stringify(entry.partitions)}`)
      else if (entry.msg === 'http server listening')
        say(`[${name}] metrics ${entry.url}/metrics, health ${entry.url}/healthz and /readyz`)
      else if ((entry.level ?? 0) >= 50) say(`[${name}] ${entry.msg ?? line}`)
    } catch {
      say(`[${name}] ${line}`)
    }
  })
  return child
}

const exited = (child: ChildProcess) =>
  child.exitCode !== null || child.signalCode !== null
    ? Promise.resolve()
    : new Promise<void>((resolve) => child.once('exit', () => resolve()))

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: { brokers: { type: 'string' }, seconds: { type: 'string' } },
  })
  mkdirSync(logDir, { recursive: true })
  const stop = new AbortController()
  process.on('SIGINT', () => stop.abort())
  process.on('SIGTERM', () => stop.abort())
  if (values.seconds !== undefined)
    setTimeout(() => stop.abort(), Number(values.seconds) * 1000).unref()

  let broker: LocalBroker | undefined
  let brokers = values.brokers
  if (brokers === undefined) {
    say('starting a local Kafka broker (first run downloads it from Maven Central)...')
    broker = await startLocalBroker()
    brokers = broker.brokers
    say(`broker ready at ${brokers} (log: ${broker.logFile})`)
  }
  const children: ChildProcess[] = []
  try {
    await createTopics(brokers)
    // --http-port 0: two replicas on one machine cannot share the default port 9464.
    const window = ['--window-size', '5s', '--grace', '1s', '--http-port', '0']
    for (const n of [1, 2]) children.push(kwa(`replica-${n}`, ['run', ...window], brokers))
    children.push(
      kwa(
        'producer',
        [
          'produce',
          '--rate',
          '20000',
          '--keys',
          '8',
          '--partitions',
          String(partitions),
          '--samples-per-batch',
          '250',
        ],
        brokers,
      ),
    )
    say(`replica and producer logs: ${logDir}`)
    say('5-second windows per series (n = samples, mean/min/max of values), as they close:')
    await tailAggregates(
      {
        brokers: [brokers],
        clientId: 'kwa-demo',
        topic: outputTopic,
        fromBeginning: false,
        format: 'text',
      },
      createLogger('silent'),
      stop.signal,
    )
  } finally {
    say('stopping...')
    for (const child of children) child.kill('SIGTERM')
    await Promise.all(children.map(exited))
    await broker?.cleanup()
    say('stopped')
  }
}

main().then(
  () => process.exit(0),
  (error: unknown) => {
    process.stderr.write(
      `demo failed: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`,
    )
    process.exit(1)
  },
)
