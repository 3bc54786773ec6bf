#!/usr/bin/env node
import { Command } from 'commander'
import { applyConfigFile, commanderOption, parseConfig, type OptionName } from './config'
import { ConfigError, isConfigError, isKwaError } from './errors'
import { ConfluentSchemaRegistrySource, type WriterSchemaSource } from './decode'
import { createKafka, kafkaSecurity, securityOptions } from './kafka'
import { checkTls } from './tls'
import { createLogger, type Logger } from './logger'
import { produceTelemetry } from './produce'
import { AggregatorService, defaultChangelogTopic, defaultDeadLetterTopic } from './service'
import { tailAggregates } from './tail'
import { isTopicError, provisionTopics, type TopicStatus } from './topics'

const common = [
  'brokers',
  'clientId',
  'logLevel',
  'config',
  ...securityOptions,
] as const satisfies readonly OptionName[]
const runOptions = [
  ...common,
  'groupId',
  'inputTopic',
  'outputTopic',
  'windowSize',
  'windowAdvance',
  'grace',
  'delivery',
  'changelogTopic',
  'deadLetterTopic',
  'lateTopic',
  'onPoison',
  'maxFutureSkew',
  'idleClose',
  'minEventTime',
  'maxKeyBytes',
  'maxOpenWindows',
  'quantiles',
  'quantileAccuracy',
  'wireFormat',
  'decoder',
  'schemaRegistryUrl',
  'maxMessageBytes',
  'maxBatchSamples',
  'sessionTimeout',
  'commitInterval',
  'concurrency',
  'createTopics',
  'httpHost',
  'httpPort',
  'shutdownTimeout',
] as const satisfies readonly OptionName[]
const produceOptions = [
  ...common,
  'inputTopic',
  'rate',
  'samplesPerBatch',
  'keys',
  'partitions',
  'outOfOrder',
  'maxDelay',
  'duration',
] as const satisfies readonly OptionName[]
const tailOptions = [
  ...common,
  'outputTopic',
  'fromBeginning',
  'format',
] as const satisfies readonly OptionName[]
const topicsOptions = [
  ...common,
  'groupId',
  'inputTopic',
  'outputTopic',
  'delivery',
  'changelogTopic',
  'deadLetterTopic',
  'lateTopic',
  'partitions',
  'replicationFactor',
  'retention',
] as const satisfies readonly OptionName[]

/** One line per topic for `kwa topics`, e.g. `created  output  telemetry-aggregates  6 partitions`. */
function formatTopicStatus(status: TopicStatus): string {
  const configs = Object.entries(status.configs)
    .filter(([name]) => name === 'cleanup.policy' || status.role !== 'changelog')
    .map(([name, value]) => `${name}=${value}`)
  return [
    status.created ? 'created' : 'exists ',
    status.role.padEnd(11),
    status.topic,
    `${status.partitions} partitions`,
    ...configs,
    ...status.notes.map((note) => `(${note})`),
  ].join('  ')
}

/** Loaded only when used: the registry client is heavy to load. */
async function registrySource(host: string): Promise<WriterSchemaSource> {
  const { SchemaRegistry } = await import('@kafkajs/confluent-schema-registry')
  return new ConfluentSchemaRegistrySource(new SchemaRegistry({ host }))
}

/** Aborts on the first SIGINT or SIGTERM; a second one exits at once. */
function shutdownSignal(logger: Logger): AbortSignal {
  const controller = new AbortController()
  const onSignal = (signal: NodeJS.Signals) => {
    if (controller.signal.aborted) process.exit(130)
    logger.info({ signal }, 'shutting down')
    controller.abort()
  }
  process.on('SIGINT', onSignal)
  process.on('SIGTERM', onSignal)
  return controller.signal
}

const waitFor = (signal: AbortSignal) =>
  new Promise<void>((resolve) => signal.addEventListener('abort', () => resolve(), { once: true }))

/**
 * Runs a replica until SIGTERM/SIGINT (or a fatal error), then stops it: the batch in flight is
 * finished and committed, the group left, native memory freed, the HTTP server closed. If that
 * takes longer than `shutdownTimeoutMs` (counted from the signal, or from the failure), logs an
 * error and exits with code 1 so that an orchestrator is never left waiting.
 */
async function runReplica(
  service: AggregatorService,
  signal: AbortSignal,
  shutdownTimeoutMs: number,
  logger: Logger,
): Promise<void> {
  let bound: NodeJS.Timeout | undefined
  let starting = true
  const startBound = () => {
    bound ??= setTimeout(() => {
      // Typically a broker that does not answer. Nothing committed is lost: the partitions'
      // next owners fence this replica's transactions and restore from what was committed.
      const pending =
        service.pendingShutdownStep ??
        (starting ? 'starting (connecting, provisioning topics, joining the group)' : 'stopping')
      logger.error(
        { shutdownTimeoutMs, pending },
        `shutdown did not finish within --shutdown-timeout (left undone: ${pending}); exiting ` +
          'with code 1; exactly once, nothing is lost: the next owner of each partition fences ' +
          "this replica's transactions and restores what was committed",
      )
      process.exit(1)
    }, shutdownTimeoutMs).unref()
  }
  signal.addEventListener('abort', startBound, { once: true })
  try {
    try {
      // A signal during start is acted on once start settles (the bound runs from the signal).
      await service.start()
      starting = false
    } catch (error) {
      startBound()
      await service.stop().catch(() => undefined)
      throw error
    }
    const failure = signal.aborted
      ? undefined
      : await Promise.race([waitFor(signal), service.failed])
    startBound()
    await service.stop()
    if (failure instanceof Error) throw failure
  } finally {
    clearTimeout(bound)
  }
}

export function buildProgram(): Command {
  const program = new Command('kwa')
    .description('Windowed aggregation of Avro telemetry on Apache Kafka')
    .showHelpAfterError()
    // `--config <file>`: its values go under flags and environment variables, over defaults.
    .hook('preAction', (_program, actionCommand) => applyConfigFile(actionCommand))

  const command = (name: string, description: string, options: readonly OptionName[]) => {
    const cmd = program.command(name).description(description)
    for (const option of options) cmd.addOption(commanderOption(option))
    return cmd
  }

  command('run', 'run an aggregator replica (a consumer group member)', runOptions).action(
    async (raw: Record<string, unknown>) => {
      const c = parseConfig(runOptions, raw)
      const advanceMs = c.windowAdvance ?? c.windowSize
      if (advanceMs > c.windowSize || c.windowSize % advanceMs !== 0) {
        throw new ConfigError(
          '--window-advance (KWA_WINDOW_ADVANCE)',
          `must divide the window size (${c.windowSize} ms) and be at most that, got ${advanceMs} ms`,
        )
      }
      if (c.wireFormat !== 'plain' && c.schemaRegistryUrl === undefined) {
        throw new ConfigError(
          '--schema-registry-url (KWA_SCHEMA_REGISTRY_URL)',
          `required with --wire-format ${c.wireFormat} (writer schemas are looked up by id)`,
        )
      }
      const security = kafkaSecurity(c)
      const logger = createLogger(c.logLevel)
      const service = new AggregatorService(
        {
          brokers: c.brokers,
          clientId: c.clientId,
          security,
          createTopics: c.createTopics,
          groupId: c.groupId,
          inputTopic: c.inputTopic,
          outputTopic: c.outputTopic,
          window: { sizeMs: c.windowSize, advanceMs, graceMs: c.grace },
          sessionTimeoutMs: c.sessionTimeout,
          commitIntervalMs: c.commitInterval,
          idleCloseMs: c.idleClose,
          quantiles:
            c.quantiles === undefined
              ? undefined
              : { quantiles: c.quantiles, accuracy: c.quantileAccuracy },
          concurrency: c.concurrency,
          delivery: c.delivery,
          changelogTopic: c.changelogTopic,
          deadLetterTopic: c.deadLetterTopic,
          lateTopic: c.lateTopic,
          onPoison: c.onPoison,
          decoding: {
            wireFormat: c.wireFormat,
            engine: c.decoder,
            schemas:
              c.schemaRegistryUrl === undefined
                ? undefined
                : await registrySource(c.schemaRegistryUrl),
            maxMessageBytes: c.maxMessageBytes,
            maxSamplesPerBatch: c.maxBatchSamples,
          },
          limits: {
            maxFutureSkewMs: c.maxFutureSkew,
            minEventTimeMs: c.minEventTime,
            maxKeyBytes: c.maxKeyBytes,
            maxOpenWindows: c.maxOpenWindows,
          },
          // Fault injection for the chaos suite only; deliberately not a documented option.
          crashAfterSendProbability: Number(process.env['KWA_FAULT_CRASH_AFTER_SEND'] ?? 0),
          http: { host: c.httpHost, port: c.httpPort },
        },
        logger,
      )
      logger.info({ config: c }, 'configuration')
      await runReplica(service, shutdownSignal(logger), c.shutdownTimeout, logger)
    },
  )

  command(
    'produce',
    'produce synthetic Avro telemetry batches (demo and load)',
    produceOptions,
  ).action(async (raw: Record<string, unknown>) => {
    const c = parseConfig(produceOptions, raw)
    const security = kafkaSecurity(c)
    const logger = createLogger(c.logLevel)
    await produceTelemetry(
      {
        brokers: c.brokers,
        clientId: c.clientId,
        security,
        topic: c.inputTopic,
        rate: c.rate,
        samplesPerBatch: c.samplesPerBatch,
        keys: c.keys,
        partitions: c.partitions,
        outOfOrder: c.outOfOrder,
        maxDelayMs: c.maxDelay,
        durationMs: c.duration,
      },
      logger,
      shutdownSignal(logger),
    )
  })

  command('tail', 'print the window aggregates published to the output topic', tailOptions).action(
    async (raw: Record<string, unknown>) => {
      const c = parseConfig(tailOptions, raw)
      const security = kafkaSecurity(c)
      const logger = createLogger(c.logLevel)
      await tailAggregates(
        {
          brokers: c.brokers,
          clientId: c.clientId,
          security,
          topic: c.outputTopic,
          fromBeginning: c.fromBeginning ?? false,
          format: c.format,
        },
        logger,
        shutdownSignal(logger),
      )
    },
  )

  command(
    'topics',
    'create the input, output, dead-letter, late and changelog topics (idempotent); refuses a ' +
      'changelog whose partition count or cleanup policy does not match',
    topicsOptions,
  ).action(async (raw: Record<string, unknown>) => {
    const c = parseConfig(topicsOptions, raw)
    const security = kafkaSecurity(c)
    const logger = createLogger(c.logLevel)
    const kafka = createKafka({ brokers: c.brokers, clientId: c.clientId, security, logger })
    await checkTls(c.brokers, security.ssl, c.clientId)
    const admin = kafka.admin()
    await admin.connect()
    try {
      const statuses = await provisionTopics(
        admin,
        {
          input: c.inputTopic,
          output: c.outputTopic,
          deadLetter: c.deadLetterTopic ?? defaultDeadLetterTopic(c.inputTopic),
          late: c.lateTopic,
          changelog:
            c.delivery === 'exactly-once'
              ? (c.changelogTopic ?? defaultChangelogTopic(c.groupId))
              : undefined,
        },
        {
          create: true,
          inputPartitions: c.partitions,
          replicationFactor: c.replicationFactor,
          retentionMs: c.retention,
          report: true,
          log: logger.child({ ns: 'Topics' }),
        },
      )
      for (const status of statuses) process.stdout.write(`${formatTopicStatus(status)}\n`)
    } finally {
      await admin.disconnect()
    }
  })
  return program
}

/** kafkajs' error for rejected credentials (a non-retriable error: it fails fast). */
const isAuthenticationError = (error: unknown): error is Error =>
  error instanceof Error && error.name === 'KafkaJSSASLAuthenticationError'

export async function main(argv: readonly string[]): Promise<number> {
  try {
    await buildProgram().parseAsync(argv)
    return 0
  } catch (error) {
    if (isConfigError(error) || isTopicError(error)) {
      process.stderr.write(`kwa: ${error.message}\n`)
      return 2
    }
    if (isAuthenticationError(error)) {
      process.stderr.write(
        `kwa: Kafka authentication failed (${error.message}); check --sasl-mechanism, ` +
          '--sasl-username and --sasl-password\n',
      )
      return 1
    }
    if (isKwaError(error)) {
      process.stderr.write(`kwa: ${error.message}\n`)
      return 1
    }
    process.stderr.write(
      `kwa: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`,
    )
    return 1
  }
}

if (require.main === module) {
  // Exit explicitly: a client socket left half-closed must not keep a stopped replica alive.
  void main(process.argv).then((code) => process.exit(code))
}
