import { Option } from 'commander'
import { z } from 'zod'
import { decodeEngines } from './decode'
import { ConfigError } from './errors'
import { logLevels } from './logger'

/**
 * Every option of every command, defined once: flag, environment variable, default, and the
 * zod schema that validates it. Commands pick the options they take.
 */

const durationUnits: Record<string, number> = { ms: 1, s: 1_000, m: 60_000, h: 3_600_000 }

/** "250ms", "10s", "5m", "1h" or a bare number of milliseconds. */
export function parseDuration(text: string): number | undefined {
  const match = /^(\d+)(?:\.(\d+))?\s*(ms|s|m|h)?$/.exec(text.trim())
  if (!match) return undefined
  const [, whole = '', fraction = '', unit = 'ms'] = match
  // Exact decimal arithmetic: in floating point 1.1h would be 3960000.0000000005 ms.
  const scale = 10n ** BigInt(fraction.length)
  const scaled = BigInt(whole + fraction) * BigInt(durationUnits[unit] ?? 1)
  if (scaled % scale !== 0n) return undefined
  const ms = Number(scaled / scale)
  return Number.isSafeInteger(ms) ? ms : undefined
}

const duration = (what: { min: number }) =>
  z.string().transform((text, ctx) => {
    const ms = parseDuration(text)
    if (ms === undefined || ms < what.min) {
      ctx.addIssue({
        code: 'custom',
        message: `expected a duration like 500ms, 10s, 5m, 1h (at least ${what.min} ms), got "${text}"`,
      })
      return z.NEVER
    }
    return ms
  })

const integer = (min: number, max = Number.MAX_SAFE_INTEGER) =>
  z.string().transform((text, ctx) => {
    const n = Number(text)
    if (text.trim() === '' || !Number.isInteger(n) || n < min || n > max) {
      ctx.addIssue({
        code: 'custom',
        message: `expected an integer from ${min} to ${max}, got "${text}"`,
      })
      return z.NEVER
    }
    return n
  })

const fraction = z.string().transform((text, ctx) => {
  const n = Number(text)
  if (text.trim() === '' || !(n >= 0 && n <= 1)) {
    ctx.addIssue({ code: 'custom', message: `expected a number from 0 to 1, got "${text}"` })
    return z.NEVER
  }
  return n
})

const brokerList = z.string().transform((text, ctx) => {
  const brokers = text
    .split(',')
    .map((b) => b.trim())
    .filter((b) => b !== '')
  const bad = brokers.find((b) => !/^[^\s:]+:\d{1,5}$/.test(b))
  if (brokers.length === 0 || bad !== undefined) {
    ctx.addIssue({
      code: 'custom',
      message: `expected comma-separated host:port pairs, got "${bad ?? text}"`,
    })
    return z.NEVER
  }
  return brokers
})

const name = z.string().trim().min(1, 'must not be empty')
const topic = name.regex(/^[a-zA-Z0-9._-]{1,249}$/, 'expected a Kafka topic name ([a-zA-Z0-9._-])')

interface OptionSpec<T extends z.ZodType> {
  flags: string
  env: string
  description: string
  default?: string
  schema: T
}

const spec = <T extends z.ZodType>(s: OptionSpec<T>): OptionSpec<T> => s

export const optionSpecs = {
  brokers: spec({
    flags: '-b, --brokers <list>',
    env: 'KAFKA_BROKERS',
    description: 'Kafka bootstrap brokers, comma-separated host:port',
    schema: brokerList,
  }),
  clientId: spec({
    flags: '--client-id <id>',
    env: 'KWA_CLIENT_ID',
    description: 'Kafka client id',
    default: 'kwa',
    schema: name,
  }),
  groupId: spec({
    flags: '--group-id <id>',
    env: 'KWA_GROUP_ID',
    description: 'consumer group id shared by all replicas',
    default: 'kwa-aggregator',
    schema: name,
  }),
  inputTopic: spec({
    flags: '--input-topic <topic>',
    env: 'KWA_INPUT_TOPIC',
    description: 'topic of Avro telemetry batches (schemas/telemetry-batch.avsc)',
    default: 'telemetry',
    schema: topic,
  }),
  outputTopic: spec({
    flags: '--output-topic <topic>',
    env: 'KWA_OUTPUT_TOPIC',
    description: 'topic of Avro window aggregates (schemas/window-aggregate.avsc)',
    default: 'telemetry-aggregates',
    schema: topic,
  }),
  windowSize: spec({
    flags: '--window-size <duration>',
    env: 'KWA_WINDOW_SIZE',
    description: 'window length (e.g. 10s, 1m)',
    default: '10s',
    schema: duration({ min: 1 }),
  }),
  windowAdvance: spec({
    flags: '--window-advance <duration>',
    env: 'KWA_WINDOW_ADVANCE',
    description:
      'hop between window starts; must divide the size (default: the size, i.e. tumbling)',
    schema: duration({ min: 1 }).optional(),
  }),
  grace: spec({
    flags: '--grace <duration>',
    env: 'KWA_GRACE',
    description: 'how long after its end a window waits for out-of-order samples',
    default: '2s',
    schema: duration({ min: 0 }),
  }),
  delivery: spec({
    flags: '--delivery <mode>',
    env: 'KWA_DELIVERY',
    description:
      'exactly-once (transactions and a state changelog) or at-least-once (no transactions; ' +
      'a window may be republished, always with the identical value)',
    default: 'exactly-once',
    schema: z.enum(['exactly-once', 'at-least-once']),
  }),
  changelogTopic: spec({
    flags: '--changelog-topic <topic>',
    env: 'KWA_CHANGELOG_TOPIC',
    description:
      'exactly-once: compacted window-state topic, co-partitioned with the input, created when ' +
      'missing (default: <group-id>-window-state-changelog)',
    schema: topic.optional(),
  }),
  deadLetterTopic: spec({
    flags: '--dead-letter-topic <topic>',
    env: 'KWA_DEAD_LETTER_TOPIC',
    description:
      'poison messages (raw bytes) and rejected samples, with error headers; created when missing ' +
      '(default: <input-topic>-dead-letter)',
    schema: topic.optional(),
  }),
  lateTopic: spec({
    flags: '--late-topic <topic>',
    env: 'KWA_LATE_TOPIC',
    description: 'publish each late sample and the window it missed here (default: count only)',
    schema: topic.optional(),
  }),
  onPoison: spec({
    flags: '--on-poison <policy>',
    env: 'KWA_ON_POISON',
    description: 'dead-letter (skip it, keep going) or fail (stop, naming the offset)',
    default: 'dead-letter',
    schema: z.enum(['dead-letter', 'fail']),
  }),
  maxFutureSkew: spec({
    flags: '--max-future-skew <duration>',
    env: 'KWA_MAX_FUTURE_SKEW',
    description:
      'reject samples stamped further ahead of the wall clock (they never move stream time)',
    default: '5m',
    schema: duration({ min: 0 }),
  }),
  minEventTime: spec({
    flags: '--min-event-time <time>',
    env: 'KWA_MIN_EVENT_TIME',
    description: 'reject samples stamped earlier (ISO 8601 date or epoch ms)',
    default: '2000-01-01T00:00:00Z',
    schema: z.string().transform((text, ctx) => {
      const ms = /^\d+$/.test(text.trim()) ? Number(text) : Date.parse(text)
      if (!Number.isSafeInteger(ms) || ms < 0) {
        ctx.addIssue({
          code: 'custom',
          message: `expected an ISO 8601 date or epoch ms, got "${text}"`,
        })
        return z.NEVER
      }
      return ms
    }),
  }),
  wireFormat: spec({
    flags: '--wire-format <format>',
    env: 'KWA_WIRE_FORMAT',
    description:
      'input framing: plain (Avro binary), confluent (magic byte 0 + 4-byte schema id + Avro; ' +
      'writer schemas from --schema-registry-url) or auto (by the magic byte)',
    default: 'plain',
    schema: z.enum(['plain', 'confluent', 'auto']),
  }),
  decoder: spec({
    flags: '--decoder <engine>',
    env: 'KWA_DECODER',
    description:
      'who decodes input Avro: native (in Rust, straight into the aggregator; fastest) or avsc ' +
      '(a JS object per sample; the reference decoder)',
    default: 'native',
    schema: z.enum(decodeEngines),
  }),
  schemaRegistryUrl: spec({
    flags: '--schema-registry-url <url>',
    env: 'KWA_SCHEMA_REGISTRY_URL',
    description: 'Confluent Schema Registry for writer schemas (needed by confluent and auto)',
    schema: z.url().optional(),
  }),
  maxMessageBytes: spec({
    flags: '--max-message-bytes <n>',
    env: 'KWA_MAX_MESSAGE_BYTES',
    description: 'larger input messages go to the dead-letter topic (too-large)',
    default: '1048576',
    schema: integer(1),
  }),
  maxBatchSamples: spec({
    flags: '--max-batch-samples <n>',
    env: 'KWA_MAX_BATCH_SAMPLES',
    description: 'input messages with more samples go to the dead-letter topic (too-many-samples)',
    default: '100000',
    schema: integer(1),
  }),
  maxKeyBytes: spec({
    flags: '--max-key-bytes <n>',
    env: 'KWA_MAX_KEY_BYTES',
    description: 'reject samples whose series key is longer (UTF-8 bytes)',
    default: '1024',
    schema: integer(1, 1_000_000),
  }),
  maxOpenWindows: spec({
    flags: '--max-open-windows <n>',
    env: 'KWA_MAX_OPEN_WINDOWS',
    description:
      'per partition bound on open (series, window) aggregates; samples that would open more are ' +
      'rejected (window-limit) and counted',
    default: '5000000',
    schema: integer(1),
  }),
  sessionTimeout: spec({
    flags: '--session-timeout <duration>',
    env: 'KWA_SESSION_TIMEOUT',
    description: 'consumer group session timeout',
    default: '30s',
    schema: duration({ min: 1000 }),
  }),
  logLevel: spec({
    flags: '--log-level <level>',
    env: 'KWA_LOG_LEVEL',
    description: `log level (${logLevels.join(', ')})`,
    default: 'info',
    schema: z.enum(logLevels),
  }),
  rate: spec({
    flags: '--rate <samples/s>',
    env: 'KWA_PRODUCE_RATE',
    description: 'samples per second to produce (0: as fast as possible)',
    default: '10000',
    schema: integer(0),
  }),
  samplesPerBatch: spec({
    flags: '--samples-per-batch <n>',
    env: 'KWA_SAMPLES_PER_BATCH',
    description: 'samples per Kafka message',
    default: '100',
    schema: integer(1, 1_000_000),
  }),
  keys: spec({
    flags: '--keys <n>',
    env: 'KWA_PRODUCE_KEYS',
    description: 'distinct series keys',
    default: '1000',
    schema: integer(1, 100_000_000),
  }),
  partitions: spec({
    flags: '--partitions <n>',
    env: 'KWA_PARTITIONS',
    description: 'partitions of the input topic (created with this count when missing)',
    default: '4',
    schema: integer(1, 100_000),
  }),
  outOfOrder: spec({
    flags: '--out-of-order <fraction>',
    env: 'KWA_OUT_OF_ORDER',
    description: 'fraction of samples stamped up to --max-delay in the past',
    default: '0.01',
    schema: fraction,
  }),
  maxDelay: spec({
    flags: '--max-delay <duration>',
    env: 'KWA_MAX_DELAY',
    description: 'how far in the past an out-of-order sample may be',
    default: '1s',
    schema: duration({ min: 0 }),
  }),
  duration: spec({
    flags: '--duration <duration>',
    env: 'KWA_PRODUCE_DURATION',
    description: 'stop producing after this long (default: until interrupted)',
    schema: duration({ min: 1 }).optional(),
  }),
  fromBeginning: spec({
    flags: '--from-beginning',
    env: 'KWA_FROM_BEGINNING',
    description: 'read the output topic from its start instead of new results only',
    schema: z
      .union([z.boolean(), z.enum(['true', 'false', '1', '0'])])
      .transform((v) => v === true || v === 'true' || v === '1')
      .optional(),
  }),
  format: spec({
    flags: '--format <format>',
    env: 'KWA_TAIL_FORMAT',
    description: 'output format of tail (text, json)',
    default: 'text',
    schema: z.enum(['text', 'json']),
  }),
} as const

export type OptionName = keyof typeof optionSpecs
type Parsed<K extends OptionName> = z.output<(typeof optionSpecs)[K]['schema']>
export type Config<K extends OptionName> = { [P in K]: Parsed<P> }

/** The commander option for a spec, reading its environment variable too. */
export function commanderOption(key: OptionName): Option {
  const s: OptionSpec<z.ZodType> = optionSpecs[key]
  const option = new Option(s.flags, s.description).env(s.env)
  return s.default === undefined ? option : option.default(s.default)
}

const optionLabel = (key: OptionName): string => {
  const s = optionSpecs[key]
  const long = s.flags.split(/[ ,]+/).find((f) => f.startsWith('--')) ?? key
  return `${long} (${s.env})`
}

/**
 * Validates the raw option values of a command; the first bad one throws a ConfigError
 * naming the flag, the environment variable and what is accepted.
 */
export function parseConfig<K extends OptionName>(
  keys: readonly K[],
  raw: Record<string, unknown>,
): Config<K> {
  const out: Record<string, unknown> = {}
  for (const key of keys) {
    const s = optionSpecs[key]
    const value = raw[key] ?? s.default
    if (value === undefined && !(s.schema as z.ZodType).safeParse(undefined).success) {
      throw new ConfigError(optionLabel(key), 'required but not set')
    }
    const result = (s.schema as z.ZodType).safeParse(value)
    if (!result.success) {
      throw new ConfigError(optionLabel(key), result.error.issues[0]?.message ?? 'invalid value')
    }
    out[key] = result.data
  }
  return out as Config<K>
}
