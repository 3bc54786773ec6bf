import { readFileSync, statSync } from 'node:fs'
import { Option, type Command } from 'commander'
import { parse as parseYaml } from 'yaml'
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

const duration = (what: { min: number; max?: number }) =>
  z.string().transform((text, ctx) => {
    const ms = parseDuration(text)
    const max = what.max ?? Number.MAX_SAFE_INTEGER
    if (ms === undefined || ms < what.min || ms > max) {
      const range = what.max === undefined ? `at least ${what.min}` : `${what.min} to ${max}`
      ctx.addIssue({
        code: 'custom',
        message: `expected a duration like 500ms, 10s, 5m, 1h (${range} ms), got "${text}"`,
      })
      return z.NEVER
    }
    return ms
  })

/** "0.5,0.9,0.99": distinct numbers in [0, 1], ascending; "" or "none": none. */
const quantileList = z.string().transform((text, ctx) => {
  const trimmed = text.trim()
  if (trimmed === '' || trimmed === 'none') return undefined
  const qs = trimmed.split(',').map((part) => part.trim())
  const values = qs.map(Number)
  const bad = qs.find(
    (part, i) => part === '' || !((values[i] as number) >= 0 && (values[i] as number) <= 1),
  )
  if (bad !== undefined) {
    ctx.addIssue({
      code: 'custom',
      message: `expected comma-separated quantiles from 0 to 1 like 0.5,0.9,0.99, got "${text}"`,
    })
    return z.NEVER
  }
  return [...new Set(values)].sort((a, b) => a - b)
})

/** A relative accuracy: "1%" or "0.01", in [0.001, 0.5] (finer costs memory for little use). */
const relativeAccuracy = z.string().transform((text, ctx) => {
  const trimmed = text.trim()
  const n = trimmed.endsWith('%') ? Number(trimmed.slice(0, -1)) / 100 : Number(trimmed)
  if (trimmed === '' || trimmed === '%' || !(n >= 0.001 && n <= 0.5)) {
    ctx.addIssue({
      code: 'custom',
      message: `expected a relative accuracy from 0.1% to 50%, like 1% or 0.01, got "${text}"`,
    })
    return z.NEVER
  }
  return n
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

/** true/false/1/0 (flags and environment variables), or a bare flag (commander gives true). */
const booleanText = z.union([z.boolean(), z.string()]).transform((value, ctx) => {
  if (typeof value === 'boolean') return value
  const text = value.trim().toLowerCase()
  if (text === 'true' || text === '1') return true
  if (text === 'false' || text === '0') return false
  ctx.addIssue({ code: 'custom', message: `expected true, false, 1 or 0, got "${value}"` })
  return z.NEVER
})

/** A file path that must not be empty (read when the client is created). */
const filePath = z.string().trim().min(1, 'must not be empty')

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
  ssl: spec({
    // An optional value, not a bare flag: commander sets a bare flag whenever its variable
    // exists, so KWA_SSL=false would turn TLS on.
    flags: '--ssl [bool]',
    env: 'KWA_SSL',
    description: 'connect to Kafka over TLS (true, false; a bare --ssl means true)',
    schema: booleanText.optional(),
  }),
  sslCa: spec({
    flags: '--ssl-ca <file>',
    env: 'KWA_SSL_CA',
    description: 'PEM file of the CA(s) to trust instead of the system ones (with --ssl)',
    schema: filePath.optional(),
  }),
  sslCert: spec({
    flags: '--ssl-cert <file>',
    env: 'KWA_SSL_CERT',
    description: 'PEM client certificate for mutual TLS (with --ssl and --ssl-key)',
    schema: filePath.optional(),
  }),
  sslKey: spec({
    flags: '--ssl-key <file>',
    env: 'KWA_SSL_KEY',
    description: 'PEM private key of --ssl-cert',
    schema: filePath.optional(),
  }),
  sslRejectUnauthorized: spec({
    flags: '--ssl-reject-unauthorized <bool>',
    env: 'KWA_SSL_REJECT_UNAUTHORIZED',
    description: "verify the brokers' certificates and host names (false only for testing)",
    default: 'true',
    schema: booleanText,
  }),
  saslMechanism: spec({
    flags: '--sasl-mechanism <mechanism>',
    env: 'KWA_SASL_MECHANISM',
    description:
      'SASL authentication: plain, scram-sha-256 or scram-sha-512 (with --sasl-username and ' +
      '--sasl-password; use --ssl with plain, which sends the password as is)',
    schema: z.enum(['plain', 'scram-sha-256', 'scram-sha-512']).optional(),
  }),
  saslUsername: spec({
    flags: '--sasl-username <name>',
    env: 'KWA_SASL_USERNAME',
    description: 'SASL user name',
    schema: name.optional(),
  }),
  saslPassword: spec({
    flags: '--sasl-password <password>',
    env: 'KWA_SASL_PASSWORD',
    description: 'SASL password (prefer the environment variable: flags show up in ps)',
    // Never echo the value in an error message.
    schema: z.string().min(1, 'must not be empty').optional(),
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
  idleClose: spec({
    flags: '--idle-close <duration>',
    env: 'KWA_IDLE_CLOSE',
    description:
      'close the last windows of a partition without input for this long: its stream time then ' +
      'moves with the wall clock, never beyond now - max-future-skew (default: off, windows wait ' +
      'for input)',
    schema: duration({ min: 1 }).optional(),
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
  quantiles: spec({
    flags: '--quantiles <list>',
    env: 'KWA_QUANTILES',
    description:
      'also publish these quantiles of each window, e.g. 0.5,0.9,0.99, estimated by a DDSketch ' +
      'within --quantile-accuracy (output schema window-aggregate-quantiles.avsc; default: none)',
    schema: quantileList.optional(),
  }),
  quantileAccuracy: spec({
    flags: '--quantile-accuracy <fraction>',
    env: 'KWA_QUANTILE_ACCURACY',
    description:
      'relative accuracy of --quantiles: each is within this fraction of the exact value (smaller ' +
      'costs more memory per window)',
    default: '1%',
    schema: relativeAccuracy,
  }),
  sessionTimeout: spec({
    flags: '--session-timeout <duration>',
    env: 'KWA_SESSION_TIMEOUT',
    description: 'consumer group session timeout',
    default: '30s',
    schema: duration({ min: 1000 }),
  }),
  commitInterval: spec({
    flags: '--commit-interval <duration>',
    env: 'KWA_COMMIT_INTERVAL',
    description:
      'exactly-once: how long a partition gathers batches into one transaction; a window updated ' +
      'by many batches is written to the changelog once per interval (results wait up to this long, ' +
      'or 100 ms once the partition has caught up with its input)',
    default: '1s',
    schema: duration({ min: 0, max: 60_000 }),
  }),
  concurrency: spec({
    flags: '--concurrency <n>',
    env: 'KWA_CONCURRENCY',
    description:
      'partitions whose batches are processed at once (each partition stays in order; with ' +
      'exactly-once, their transactions overlap)',
    default: '8',
    schema: integer(1, 1024),
  }),
  httpHost: spec({
    flags: '--http-host <host>',
    env: 'KWA_HTTP_HOST',
    description:
      'address of the HTTP server for /metrics, /healthz and /readyz (0.0.0.0: all interfaces)',
    default: '127.0.0.1',
    schema: name,
  }),
  httpPort: spec({
    flags: '--http-port <port>',
    env: 'KWA_HTTP_PORT',
    description: 'port of the HTTP server (0: any free port, logged at start)',
    default: '9464',
    schema: integer(0, 65_535),
  }),
  shutdownTimeout: spec({
    flags: '--shutdown-timeout <duration>',
    env: 'KWA_SHUTDOWN_TIMEOUT',
    description:
      'on SIGTERM/SIGINT, how long to finish the batch in flight, commit and leave the group ' +
      'before exiting anyway with code 1',
    default: '30s',
    schema: duration({ min: 1 }),
  }),
  config: spec({
    flags: '--config <file>',
    env: 'KWA_CONFIG',
    description:
      'YAML or JSON file of option values, keyed by option name (inputTopic or input-topic); ' +
      'flags and environment variables override it',
    schema: z.string().trim().min(1, 'must not be empty').optional(),
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
  replicationFactor: spec({
    flags: '--replication-factor <n>',
    env: 'KWA_REPLICATION_FACTOR',
    description:
      "replicas of each topic created (default: the broker's default.replication.factor)",
    schema: integer(1, 32_767).optional(),
  }),
  retention: spec({
    flags: '--retention <duration>',
    env: 'KWA_RETENTION',
    description:
      "retention.ms of the output, dead-letter and late topics when created (default: the broker's)",
    schema: duration({ min: 1 }).optional(),
  }),
  createTopics: spec({
    flags: '--create-topics <bool>',
    env: 'KWA_CREATE_TOPICS',
    description:
      'create missing output, dead-letter, late and changelog topics at start; false: only check ' +
      'that they exist and that the changelog matches the input',
    default: 'true',
    schema: booleanText,
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
    // Optional value (see --ssl): a bare flag would read KWA_FROM_BEGINNING=false as true.
    flags: '--from-beginning [bool]',
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

export const optionLabel = (key: OptionName): string => {
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
  /** Values read from a config file: where, e.g. `windowSize in kwa.yaml` (named in errors). */
  origins: Partial<Record<OptionName, string>> = {},
): Config<K> {
  const out: Record<string, unknown> = {}
  for (const key of keys) {
    const s = optionSpecs[key]
    const value = raw[key] ?? s.default
    const origin = origins[key]
    const label = origin === undefined ? optionLabel(key) : `${optionLabel(key)} from ${origin}`
    if (value === undefined && !(s.schema as z.ZodType).safeParse(undefined).success) {
      throw new ConfigError(label, 'required but not set')
    }
    const result = (s.schema as z.ZodType).safeParse(value)
    if (!result.success) {
      throw new ConfigError(label, result.error.issues[0]?.message ?? 'invalid value')
    }
    out[key] = result.data
  }
  return out as Config<K>
}

const configFileLabel = optionLabel('config')

/** The long flag of an option without its dashes: `input-topic` for inputTopic. */
const flagName = (key: OptionName): string =>
  optionLabel(key).split(' ')[0]?.replace(/^--/, '') ?? key

/** A file value as the text a flag or environment variable would give. */
function fileValue(value: unknown): string | boolean | undefined {
  if (typeof value === 'string' || typeof value === 'boolean') return value
  if (typeof value === 'number' && Number.isFinite(value)) return String(value)
  // brokers: [a:9092, b:9092]
  if (
    Array.isArray(value) &&
    value.length > 0 &&
    value.every((v) => typeof v === 'string' || typeof v === 'number')
  ) {
    return value.join(',')
  }
  return undefined
}

const describeValue = (value: unknown): string =>
  value === null ? 'no value' : Array.isArray(value) ? 'a list' : `a ${typeof value}`

export interface ConfigFile {
  /** Values by option name, as strings (or booleans) like flags give them. */
  values: Partial<Record<OptionName, string | boolean>>
  /** Where each value was read, e.g. `"input-topic" in kwa.yaml`. */
  origins: Partial<Record<OptionName, string>>
  /** What the operator should fix, e.g. a password in a file every user can read. */
  warnings: string[]
}

/** Options whose value is a secret itself (not the path of one). */
const secretOptions: readonly OptionName[] = ['saslPassword']

/**
 * Reads a config file: JSON when named `*.json`, else YAML (which reads JSON too). Keys are option names, camelCase
 * (`inputTopic`) or the long flag without dashes (`input-topic`); only options in `keys` are
 * accepted. Throws a ConfigError naming the file and, for a bad key, the accepted ones.
 */
export function readConfigFile(file: string, keys: readonly OptionName[]): ConfigFile {
  let text: string
  try {
    text = readFileSync(file, 'utf8')
  } catch (error) {
    const reason = (error as NodeJS.ErrnoException).code ?? (error as Error).message
    throw new ConfigError(configFileLabel, `cannot read config file "${file}" (${reason})`)
  }
  let document: unknown
  try {
    document = /\.json$/i.test(file) ? JSON.parse(text) : parseYaml(text)
  } catch (error) {
    const reason = ((error as Error).message.split('\n')[0] ?? '').trim()
    throw new ConfigError(configFileLabel, `cannot parse config file "${file}": ${reason}`)
  }
  if (document === null || document === undefined) return { values: {}, origins: {}, warnings: [] }
  if (typeof document !== 'object' || Array.isArray(document)) {
    throw new ConfigError(
      configFileLabel,
      `config file "${file}" must be a mapping of option names to values, not ${describeValue(document)}`,
    )
  }
  const accepted = keys.filter((k) => k !== 'config')
  const byName = new Map<string, OptionName>()
  for (const key of accepted) {
    byName.set(key, key)
    byName.set(flagName(key), key)
  }
  const result: ConfigFile = { values: {}, origins: {}, warnings: [] }
  for (const [name, raw] of Object.entries(document)) {
    const key = byName.get(name)
    if (key === undefined) {
      const known =
        name in optionSpecs ||
        Object.keys(optionSpecs).some((k) => flagName(k as OptionName) === name)
      throw new ConfigError(
        configFileLabel,
        `${known ? 'option' : 'unknown key'} "${name}" in config file "${file}"` +
          `${known ? ' does not apply to this command' : ''}; accepted keys: ${accepted.join(', ')} ` +
          '(or their flag names, e.g. input-topic)',
      )
    }
    const origin = `"${name}" in ${file}`
    if (result.values[key] !== undefined) {
      throw new ConfigError(optionLabel(key), `set twice in config file "${file}" (${origin})`)
    }
    const value = fileValue(raw)
    if (value === undefined) {
      throw new ConfigError(
        `${optionLabel(key)} from ${origin}`,
        `expected a string, number or boolean, got ${describeValue(raw)}`,
      )
    }
    result.values[key] = value
    result.origins[key] = origin
  }
  const secrets = secretOptions.filter((key) => result.values[key] !== undefined)
  const mode = secrets.length > 0 ? statSync(file).mode : 0
  if ((mode & 0o004) !== 0) {
    result.warnings.push(
      `config file "${file}" holds ${secrets.map(flagName).join(', ')} and every user can read ` +
        `it (mode ${(mode & 0o777).toString(8)}): chmod 600 it, or pass the password in ` +
        'KWA_SASL_PASSWORD from a secret',
    )
  }
  return result
}

/**
 * Merges a `--config` file into a command's raw option values: a flag beats its environment
 * variable, which beats the file, which beats the default. `sourceOf` tells where commander got
 * each value (`Command.getOptionValueSource`: 'cli', 'env', 'default' or undefined). Returns the
 * values and, for those taken from the file, where (for error messages).
 */
export function mergeConfigFile<K extends OptionName>(
  keys: readonly K[],
  raw: Record<string, unknown>,
  sourceOf: (key: K) => string | undefined,
): {
  raw: Record<string, unknown>
  origins: Partial<Record<OptionName, string>>
  warnings: string[]
} {
  const file = typeof raw['config'] === 'string' ? raw['config'].trim() : ''
  if (file === '') return { raw, origins: {}, warnings: [] }
  const { values, origins, warnings } = readConfigFile(file, keys)
  const merged: Record<string, unknown> = { ...raw }
  const used: Partial<Record<OptionName, string>> = {}
  for (const key of keys) {
    const source = sourceOf(key)
    if (values[key] === undefined || source === 'cli' || source === 'env') continue
    merged[key] = values[key]
    used[key] = origins[key]
  }
  return { raw: merged, origins: used, warnings }
}

/** The validated options of a command from flags, environment, `--config` file and defaults. */
export function resolveConfig<K extends OptionName>(
  keys: readonly K[],
  raw: Record<string, unknown>,
  sourceOf: (key: K) => string | undefined,
): Config<K> {
  const merged = mergeConfigFile(keys, raw, sourceOf)
  return parseConfig(keys, merged.raw, merged.origins)
}

/**
 * A commander preAction hook: reads the command's `--config` file (if any) into its option
 * values, with source 'config', under flags and environment variables, and validates what it
 * took from the file, naming the file in errors. The action then parses as usual.
 */
export function applyConfigFile(command: Command): void {
  const keys = command.options
    .map((o) => o.attributeName())
    .filter((k): k is OptionName => k in optionSpecs)
  const merged = mergeConfigFile(keys, command.opts(), (key) => command.getOptionValueSource(key))
  // Before any logger exists (the log level may come from the file): plain lines on stderr.
  for (const warning of merged.warnings) process.stderr.write(`kwa: warning: ${warning}\n`)
  const fromFile = Object.keys(merged.origins) as OptionName[]
  parseConfig(fromFile, merged.raw, merged.origins)
  for (const key of fromFile) command.setOptionValueWithSource(key, merged.raw[key], 'config')
}
