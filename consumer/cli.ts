#!/usr/bin/env node
import { Command } from 'commander'
import { commanderOption, parseConfig, type OptionName } from './config'
import { ConfigError, isConfigError, isKwaError } from './errors'
import { ConfluentSchemaRegistrySource, type WriterSchemaSource } from './decode'
import { createLogger, type Logger } from './logger'
import { produceTelemetry } from './produce'
import { AggregatorService } from './service'
import { tailAggregates } from './tail'

const common = ['brokers', 'clientId', 'logLevel'] as const satisfies readonly OptionName[]
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
  'minEventTime',
  'maxKeyBytes',
  'maxOpenWindows',
  'wireFormat',
  'decoder',
  'schemaRegistryUrl',
  'maxMessageBytes',
  'maxBatchSamples',
  'sessionTimeout',
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

export function buildProgram(): Command {
  const program = new Command('kwa')
    .description('Windowed aggregation of Avro telemetry on Apache Kafka')
    .showHelpAfterError()

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
      const logger = createLogger(c.logLevel)
      const service = new AggregatorService(
        {
          brokers: c.brokers,
          clientId: c.clientId,
          groupId: c.groupId,
          inputTopic: c.inputTopic,
          outputTopic: c.outputTopic,
          window: { sizeMs: c.windowSize, advanceMs, graceMs: c.grace },
          sessionTimeoutMs: c.sessionTimeout,
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
        },
        logger,
      )
      const signal = shutdownSignal(logger)
      await service.start()
      const failure = await Promise.race([waitFor(signal), service.failed])
      await service.stop()
      if (failure instanceof Error) throw failure
    },
  )

  command(
    'produce',
    'produce synthetic Avro telemetry batches (demo and load)',
    produceOptions,
  ).action(async (raw: Record<string, unknown>) => {
    const c = parseConfig(produceOptions, raw)
    const logger = createLogger(c.logLevel)
    await produceTelemetry(
      {
        brokers: c.brokers,
        clientId: c.clientId,
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
      const logger = createLogger(c.logLevel)
      await tailAggregates(
        {
          brokers: c.brokers,
          clientId: c.clientId,
          topic: c.outputTopic,
          fromBeginning: c.fromBeginning ?? false,
          format: c.format,
        },
        logger,
        shutdownSignal(logger),
      )
    },
  )
  return program
}

export async function main(argv: readonly string[]): Promise<number> {
  try {
    await buildProgram().parseAsync(argv)
    return 0
  } catch (error) {
    if (isConfigError(error)) {
      process.stderr.write(`kwa: ${error.message}\n`)
      return 2
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
