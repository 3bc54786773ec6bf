// The CLI: `fetch` and `start` commands, argument parsing, graceful stop on SIGINT/SIGTERM.
import { parseArgs } from 'node:util'
import { startLocalBroker } from './broker'
import { fetchKafka } from './fetch'
import { LOCAL_SASL_MECHANISMS, type LocalSaslOptions, type LocalSaslUser } from './sasl'
import { errorText } from './util'
import { defaultKafkaVersion } from './versions'

const USAGE = `Usage:
  npx tsx scripts/local-kafka.ts fetch [--version V]
  npx tsx scripts/local-kafka.ts start [--version V] [--port P] [--data-dir D]
                                       [--sasl-user NAME:PASSWORD ...] [--sasl-port P]`

export async function main(argv: string[]): Promise<void> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      version: { type: 'string' },
      port: { type: 'string' },
      'data-dir': { type: 'string' },
      'sasl-user': { type: 'string', multiple: true },
      'sasl-port': { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  })
  const command = positionals[0]
  if (values.help || positionals.length !== 1 || (command !== 'fetch' && command !== 'start')) {
    console.error(USAGE)
    process.exitCode = values.help ? 0 : 2
    return
  }
  const version = values.version ?? defaultKafkaVersion()
  if (command === 'fetch') {
    console.log(await fetchKafka(version))
    return
  }
  const saslUsers = values['sasl-user']?.map(parseSaslUser)
  const sasl =
    saslUsers === undefined
      ? undefined
      : { users: saslUsers, port: parsePort(values['sasl-port'], '--sasl-port') }
  await runStartCommand(version, parsePort(values.port), values['data-dir'], sasl)
}

function parsePort(value: string | undefined, flag = '--port'): number | undefined {
  if (value === undefined) return undefined
  const port = Number(value)
  if (!Number.isInteger(port) || port < 1 || port > 65535)
    throw new Error(`Invalid ${flag}: ${value}`)
  return port
}

function parseSaslUser(value: string): LocalSaslUser {
  const colon = value.indexOf(':')
  if (colon <= 0) throw new Error('Invalid --sasl-user: expected NAME:PASSWORD')
  return { username: value.slice(0, colon), password: value.slice(colon + 1) }
}

async function runStartCommand(
  version: string,
  port: number | undefined,
  dataDir: string | undefined,
  sasl: LocalSaslOptions | undefined,
): Promise<void> {
  const startedAt = Date.now()
  let stopping = false
  const broker = await startLocalBroker({
    version,
    port,
    dataDir,
    sasl,
    onUnexpectedExit: (exit) => {
      if (stopping) return // Ctrl-C reaches the JVM too (same process group)
      console.error(
        `local-kafka: broker exited unexpectedly (code ${exit.code}, signal ${exit.signal})`,
      )
      process.exit(1)
    },
  })
  console.error(
    `local-kafka: Kafka ${version} ready in ${((Date.now() - startedAt) / 1000).toFixed(1)} s ` +
      `(data dir ${broker.dataDir}, log ${broker.logFile})`,
  )
  console.log(`KAFKA_BROKERS=${broker.brokers}`)
  if (broker.saslBrokers !== undefined) {
    console.log(`KAFKA_SASL_BROKERS=${broker.saslBrokers}`)
    console.error(
      `local-kafka: SASL_PLAINTEXT on ${broker.saslBrokers} (${LOCAL_SASL_MECHANISMS.join(', ')}) ` +
        `for ${sasl?.users.map((u) => u.username).join(', ')}`,
    )
  }

  const shutdown = (signal: NodeJS.Signals): void => {
    if (stopping) return
    stopping = true
    console.error(`local-kafka: ${signal}, stopping the broker`)
    broker.cleanup().then(
      () => process.exit(0),
      (error: unknown) => {
        console.error(`local-kafka: stop failed: ${errorText(error)}`)
        process.exit(1)
      },
    )
  }
  process.on('SIGINT', shutdown)
  process.on('SIGTERM', shutdown)
}
