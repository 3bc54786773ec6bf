import { spawnSync } from 'node:child_process'
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { Command } from 'commander'
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest'
import { buildProgram } from '../consumer/cli'
import {
  applyConfigFile,
  commanderOption,
  optionSpecs,
  parseConfig,
  parseDuration,
  resolveConfig,
  type OptionName,
  readConfigFile,
} from '../consumer/config'
import { ConfigError } from '../consumer/errors'
import { packageRoot } from '../consumer/paths'
import { mulberry32 } from './reference'

/** The documented label of each option: its long flag and its environment variable. */
const labels: Record<OptionName, string> = {
  brokers: '--brokers (KAFKA_BROKERS)',
  clientId: '--client-id (KWA_CLIENT_ID)',
  ssl: '--ssl (KWA_SSL)',
  sslCa: '--ssl-ca (KWA_SSL_CA)',
  sslCert: '--ssl-cert (KWA_SSL_CERT)',
  sslKey: '--ssl-key (KWA_SSL_KEY)',
  sslRejectUnauthorized: '--ssl-reject-unauthorized (KWA_SSL_REJECT_UNAUTHORIZED)',
  saslMechanism: '--sasl-mechanism (KWA_SASL_MECHANISM)',
  saslUsername: '--sasl-username (KWA_SASL_USERNAME)',
  saslPassword: '--sasl-password (KWA_SASL_PASSWORD)',
  groupId: '--group-id (KWA_GROUP_ID)',
  inputTopic: '--input-topic (KWA_INPUT_TOPIC)',
  outputTopic: '--output-topic (KWA_OUTPUT_TOPIC)',
  windowSize: '--window-size (KWA_WINDOW_SIZE)',
  windowAdvance: '--window-advance (KWA_WINDOW_ADVANCE)',
  grace: '--grace (KWA_GRACE)',
  delivery: '--delivery (KWA_DELIVERY)',
  changelogTopic: '--changelog-topic (KWA_CHANGELOG_TOPIC)',
  deadLetterTopic: '--dead-letter-topic (KWA_DEAD_LETTER_TOPIC)',
  lateTopic: '--late-topic (KWA_LATE_TOPIC)',
  onPoison: '--on-poison (KWA_ON_POISON)',
  maxFutureSkew: '--max-future-skew (KWA_MAX_FUTURE_SKEW)',
  idleClose: '--idle-close (KWA_IDLE_CLOSE)',
  minEventTime: '--min-event-time (KWA_MIN_EVENT_TIME)',
  maxKeyBytes: '--max-key-bytes (KWA_MAX_KEY_BYTES)',
  maxOpenWindows: '--max-open-windows (KWA_MAX_OPEN_WINDOWS)',
  quantiles: '--quantiles (KWA_QUANTILES)',
  quantileAccuracy: '--quantile-accuracy (KWA_QUANTILE_ACCURACY)',
  wireFormat: '--wire-format (KWA_WIRE_FORMAT)',
  decoder: '--decoder (KWA_DECODER)',
  concurrency: '--concurrency (KWA_CONCURRENCY)',
  schemaRegistryUrl: '--schema-registry-url (KWA_SCHEMA_REGISTRY_URL)',
  maxMessageBytes: '--max-message-bytes (KWA_MAX_MESSAGE_BYTES)',
  maxBatchSamples: '--max-batch-samples (KWA_MAX_BATCH_SAMPLES)',
  sessionTimeout: '--session-timeout (KWA_SESSION_TIMEOUT)',
  commitInterval: '--commit-interval (KWA_COMMIT_INTERVAL)',
  httpHost: '--http-host (KWA_HTTP_HOST)',
  httpPort: '--http-port (KWA_HTTP_PORT)',
  shutdownTimeout: '--shutdown-timeout (KWA_SHUTDOWN_TIMEOUT)',
  config: '--config (KWA_CONFIG)',
  logLevel: '--log-level (KWA_LOG_LEVEL)',
  rate: '--rate (KWA_PRODUCE_RATE)',
  samplesPerBatch: '--samples-per-batch (KWA_SAMPLES_PER_BATCH)',
  keys: '--keys (KWA_PRODUCE_KEYS)',
  partitions: '--partitions (KWA_PARTITIONS)',
  replicationFactor: '--replication-factor (KWA_REPLICATION_FACTOR)',
  retention: '--retention (KWA_RETENTION)',
  createTopics: '--create-topics (KWA_CREATE_TOPICS)',
  outOfOrder: '--out-of-order (KWA_OUT_OF_ORDER)',
  maxDelay: '--max-delay (KWA_MAX_DELAY)',
  duration: '--duration (KWA_PRODUCE_DURATION)',
  fromBeginning: '--from-beginning (KWA_FROM_BEGINNING)',
  format: '--format (KWA_TAIL_FORMAT)',
}
const allOptions = Object.keys(labels) as OptionName[]

function configError(key: OptionName, value: unknown): ConfigError {
  try {
    parseConfig([key], { [key]: value })
  } catch (error) {
    if (error instanceof ConfigError) return error
    throw error
  }
  throw new Error(`${key}=${JSON.stringify(value)} was accepted`)
}

describe('parseDuration', () => {
  it.each([
    ['250ms', 250],
    ['10s', 10_000],
    ['5m', 300_000],
    ['1h', 3_600_000],
    ['1500', 1500],
    ['0', 0],
    [' 10 s ', 10_000],
    ['1.5s', 1500],
    ['0.25m', 15_000],
    ['1.1h', 3_960_000],
    ['4.1m', 246_000],
    ['1.005s', 1005],
    ['2.50s', 2500],
  ])('%j is %d ms', (text, ms) => {
    expect(parseDuration(text)).toBe(ms)
  })

  it.each(['', 'banana', '-1s', '10x', '1.s', '.5s', '0.5ms', '1.0001s', '1e3', 'ms', '10 ss'])(
    '%j is not a duration',
    (text) => {
      expect(parseDuration(text)).toBeUndefined()
    },
  )

  it('is exact for every decimal of up to 3 places, in every unit', () => {
    const units: [string, bigint][] = [
      ['', 1n],
      ['ms', 1n],
      ['s', 1000n],
      ['m', 60_000n],
      ['h', 3_600_000n],
    ]
    const rand = mulberry32(42)
    const wrong: string[] = []
    for (let n = 0; n < 3000; n++) {
      const whole = Math.floor(rand() * 1000)
      const places = Math.floor(rand() * 4)
      const fraction =
        places === 0 ? '' : String(Math.floor(rand() * 10 ** places)).padStart(places, '0')
      for (const [unit, factor] of units) {
        const text = `${whole}${places === 0 ? '' : `.${fraction}`}${unit}`
        // Exact decimal arithmetic: whole.fraction * factor, defined only if a whole number of ms.
        const scale = 10n ** BigInt(places)
        const scaled = (BigInt(whole) * scale + BigInt(fraction === '' ? 0 : fraction)) * factor
        const expected = scaled % scale === 0n ? Number(scaled / scale) : undefined
        if (parseDuration(text) !== expected) wrong.push(`${text} -> ${parseDuration(text)}`)
      }
    }
    expect(wrong.slice(0, 10)).toEqual([])
  })

  it('rejects durations beyond 2^53 ms', () => {
    expect(parseDuration(`${2 ** 53}`)).toBeUndefined()
    expect(parseDuration('9007199254740991')).toBe(Number.MAX_SAFE_INTEGER)
    expect(parseDuration('3000000000000h')).toBeUndefined()
  })
})

describe('parseConfig', () => {
  it('applies the documented defaults', () => {
    const config = parseConfig(allOptions, { brokers: 'localhost:9092' })
    expect(config).toEqual({
      brokers: ['localhost:9092'],
      clientId: 'kwa',
      ssl: undefined,
      sslCa: undefined,
      sslCert: undefined,
      sslKey: undefined,
      sslRejectUnauthorized: true,
      saslMechanism: undefined,
      saslUsername: undefined,
      saslPassword: undefined,
      groupId: 'kwa-aggregator',
      inputTopic: 'telemetry',
      outputTopic: 'telemetry-aggregates',
      windowSize: 10_000,
      windowAdvance: undefined,
      grace: 2_000,
      delivery: 'exactly-once',
      changelogTopic: undefined,
      deadLetterTopic: undefined,
      lateTopic: undefined,
      onPoison: 'dead-letter',
      maxFutureSkew: 300_000,
      idleClose: undefined,
      minEventTime: Date.UTC(2000, 0, 1),
      maxKeyBytes: 1024,
      maxOpenWindows: 5_000_000,
      quantiles: undefined,
      quantileAccuracy: 0.01,
      wireFormat: 'plain',
      decoder: 'native',
      schemaRegistryUrl: undefined,
      maxMessageBytes: 1_048_576,
      maxBatchSamples: 100_000,
      sessionTimeout: 30_000,
      commitInterval: 1000,
      concurrency: 8,
      httpHost: '127.0.0.1',
      httpPort: 9464,
      shutdownTimeout: 30_000,
      config: undefined,
      logLevel: 'info',
      rate: 10_000,
      samplesPerBatch: 100,
      keys: 1000,
      partitions: 4,
      replicationFactor: undefined,
      retention: undefined,
      createTopics: true,
      outOfOrder: 0.01,
      maxDelay: 1_000,
      duration: undefined,
      fromBeginning: undefined,
      format: 'text',
    })
  })

  it('parses environment-variable-shaped strings', () => {
    const config = parseConfig(allOptions, {
      brokers: ' kafka-1:9092, kafka-2:19092 ,',
      clientId: ' kwa-test ',
      ssl: 'true',
      sslCa: '/etc/kwa/ca.pem',
      sslCert: '/etc/kwa/client.pem',
      sslKey: '/etc/kwa/client.key',
      sslRejectUnauthorized: 'false',
      saslMechanism: 'scram-sha-512',
      saslUsername: 'kwa-user',
      saslPassword: ' s3cret with spaces ',
      groupId: 'group.1',
      inputTopic: 'in.topic_1',
      outputTopic: 'out-topic',
      windowSize: '1m',
      windowAdvance: '15s',
      grace: '0',
      delivery: 'at-least-once',
      changelogTopic: 'state.log',
      deadLetterTopic: 'in.dlq',
      lateTopic: 'in.late',
      onPoison: 'fail',
      maxFutureSkew: '30s',
      idleClose: '10m',
      minEventTime: '2020-01-01T00:00:00Z',
      maxKeyBytes: '64',
      maxOpenWindows: '1000',
      quantiles: ' 0.99, 0.5,0.9,0.5',
      quantileAccuracy: '0.5%',
      wireFormat: 'auto',
      decoder: 'avsc',
      schemaRegistryUrl: 'http://registry:8081',
      maxMessageBytes: '4096',
      maxBatchSamples: '10',
      sessionTimeout: '45000',
      concurrency: '2',
      httpHost: '0.0.0.0',
      httpPort: '0',
      shutdownTimeout: '1m',
      config: ' kwa.yaml ',
      logLevel: 'debug',
      rate: '0',
      samplesPerBatch: '1000000',
      keys: '7',
      partitions: '1',
      replicationFactor: '3',
      retention: '168h',
      createTopics: '0',
      outOfOrder: '0.25',
      maxDelay: '250ms',
      duration: '1h',
      fromBeginning: 'true',
      format: 'json',
    })
    expect(config).toEqual({
      brokers: ['kafka-1:9092', 'kafka-2:19092'],
      clientId: 'kwa-test',
      ssl: true,
      sslCa: '/etc/kwa/ca.pem',
      sslCert: '/etc/kwa/client.pem',
      sslKey: '/etc/kwa/client.key',
      sslRejectUnauthorized: false,
      saslMechanism: 'scram-sha-512',
      saslUsername: 'kwa-user',
      saslPassword: ' s3cret with spaces ',
      groupId: 'group.1',
      inputTopic: 'in.topic_1',
      outputTopic: 'out-topic',
      windowSize: 60_000,
      windowAdvance: 15_000,
      grace: 0,
      delivery: 'at-least-once',
      changelogTopic: 'state.log',
      deadLetterTopic: 'in.dlq',
      lateTopic: 'in.late',
      onPoison: 'fail',
      maxFutureSkew: 30_000,
      idleClose: 600_000,
      minEventTime: Date.UTC(2020, 0, 1),
      maxKeyBytes: 64,
      maxOpenWindows: 1000,
      quantiles: [0.5, 0.9, 0.99],
      quantileAccuracy: 0.005,
      wireFormat: 'auto',
      decoder: 'avsc',
      schemaRegistryUrl: 'http://registry:8081',
      maxMessageBytes: 4096,
      maxBatchSamples: 10,
      sessionTimeout: 45_000,
      commitInterval: 1000,
      concurrency: 2,
      httpHost: '0.0.0.0',
      httpPort: 0,
      shutdownTimeout: 60_000,
      config: 'kwa.yaml',
      logLevel: 'debug',
      rate: 0,
      samplesPerBatch: 1_000_000,
      keys: 7,
      partitions: 1,
      replicationFactor: 3,
      retention: 604_800_000,
      createTopics: false,
      outOfOrder: 0.25,
      maxDelay: 250,
      duration: 3_600_000,
      fromBeginning: true,
      format: 'json',
    })
  })

  it.each([
    [true, true],
    ['1', true],
    ['true', true],
    ['false', false],
    ['0', false],
  ])('--from-beginning %j is %j', (raw, value) => {
    expect(parseConfig(['fromBeginning'], { fromBeginning: raw }).fromBeginning).toBe(value)
  })

  const badValues: [OptionName, string][] = [
    ['brokers', ''],
    ['brokers', 'localhost'],
    ['brokers', 'localhost:port'],
    ['brokers', 'a:1,b c:2'],
    ['clientId', '   '],
    ['groupId', ''],
    ['inputTopic', 'bad topic!'],
    ['outputTopic', ''],
    ['windowSize', 'banana'],
    ['windowSize', '0'],
    ['windowSize', '-10s'],
    ['windowSize', '0.5ms'],
    ['windowAdvance', '10x'],
    ['windowAdvance', '0s'],
    ['grace', '-1s'],
    ['grace', ''],
    ['sessionTimeout', '999ms'],
    ['quantiles', '0.5,1.5'],
    ['quantiles', '0.5,,0.9'],
    ['quantiles', 'p99'],
    ['quantileAccuracy', '0'],
    ['quantileAccuracy', '60%'],
    ['quantileAccuracy', '%'],
    ['idleClose', '0'],
    ['idleClose', 'never'],
    ['httpHost', ''],
    ['httpPort', '65536'],
    ['httpPort', '-1'],
    ['httpPort', 'http'],
    ['shutdownTimeout', '0'],
    ['shutdownTimeout', 'soon'],
    ['config', '  '],
    ['logLevel', 'loud'],
    ['rate', 'fast'],
    ['rate', '-1'],
    ['rate', '1.5'],
    ['rate', ''],
    ['samplesPerBatch', '0'],
    ['samplesPerBatch', '1000001'],
    ['keys', '0'],
    ['partitions', '100001'],
    ['outOfOrder', '1.5'],
    ['outOfOrder', '-0.1'],
    ['outOfOrder', 'some'],
    ['outOfOrder', ''],
    ['maxDelay', '1 day'],
    ['duration', '0s'],
    ['fromBeginning', 'yes'],
    ['format', 'xml'],
    ['ssl', 'yes'],
    ['sslCa', ' '],
    ['sslRejectUnauthorized', 'maybe'],
    ['saslMechanism', 'gssapi'],
    ['saslMechanism', 'SCRAM-SHA-256'],
    ['saslUsername', ''],
    ['saslPassword', ''],
    ['replicationFactor', '0'],
    ['retention', '0s'],
    ['createTopics', 'no'],
  ]

  it.each(badValues)('%s = %j throws a ConfigError naming the flag and env var', (key, value) => {
    const error = configError(key, value)
    expect(error.option).toBe(labels[key])
    expect(error.message).toContain(`invalid ${labels[key]}: `)
    expect(error.message).not.toContain('\n')
    expect(error.retriable).toBe(false)
  })

  it('says what a duration accepts and echoes the bad value', () => {
    const error = configError('windowSize', 'banana')
    expect(error.message).toMatch(/duration/)
    expect(error.message).toContain('"banana"')
  })

  it('missing brokers are "required"', () => {
    expect(() => parseConfig(['brokers', 'windowSize'], {})).toThrow(ConfigError)
    const error = configError('brokers', undefined)
    expect(error.message).toBe(`invalid ${labels.brokers}: required but not set`)
  })

  it('reports the first bad option in the order asked', () => {
    expect(() => parseConfig(['grace', 'windowSize'], { grace: 'x', windowSize: 'y' })).toThrow(
      labels.grace,
    )
  })
})

describe('kwa CLI', () => {
  const cli = (args: string[], env: Record<string, string>) =>
    spawnSync(process.execPath, ['--import', 'tsx', 'consumer/cli.ts', ...args], {
      cwd: packageRoot,
      env: { PATH: process.env.PATH ?? '', ...env },
      encoding: 'utf8',
      timeout: 30_000,
    })

  /** Exit code 2 and one line on stderr naming the option, no stack trace. */
  function expectUsageError(result: ReturnType<typeof cli>, ...mentions: string[]): void {
    expect(result.status, result.stderr).toBe(2)
    const lines = result.stderr.trimEnd().split('\n')
    expect(lines, result.stderr).toHaveLength(1)
    expect(lines[0]).toMatch(/^kwa: invalid /)
    for (const text of mentions) expect(lines[0]).toContain(text)
    expect(result.stderr).not.toMatch(/\n\s+at /)
    expect(result.stdout).toBe('')
  }

  it('exits 2 with a one-line message for a bad flag', () => {
    const result = cli(['run', '--window-size', 'banana'], { KAFKA_BROKERS: 'localhost:9092' })
    expectUsageError(result, labels.windowSize, '"banana"')
  })

  it('exits 2 with a one-line message for a bad environment variable', () => {
    const result = cli(['run'], { KAFKA_BROKERS: 'localhost:9092', KWA_GRACE: '-1s' })
    expectUsageError(result, labels.grace, '"-1s"')
  })

  it('exits 2 when no brokers are set', () => {
    expectUsageError(cli(['run'], {}), labels.brokers, 'required')
  })

  it('exits 2 when the advance does not divide the window size', () => {
    const result = cli(['run', '--window-size', '10s', '--window-advance', '3s'], {
      KAFKA_BROKERS: 'localhost:9092',
    })
    expectUsageError(result, labels.windowAdvance)
  })
})

describe('config file (--config)', () => {
  let dir: string
  beforeAll(() => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'kwa-config-'))
  })
  afterAll(() => {
    rmSync(dir, { recursive: true, force: true })
  })
  afterEach(() => {
    vi.unstubAllEnvs()
  })

  let files = 0
  const write = (text: string, ext = 'yaml'): string => {
    const file = path.join(dir, `kwa-${++files}.${ext}`)
    writeFileSync(file, text)
    return file
  }
  const runKeys = [
    'brokers',
    'config',
    'groupId',
    'inputTopic',
    'outputTopic',
    'windowSize',
    'grace',
    'delivery',
    'httpPort',
    'shutdownTimeout',
    'lateTopic',
  ] as const satisfies readonly OptionName[]
  const fromFile = (file: string) =>
    resolveConfig(runKeys, { ...defaults(runKeys), config: file }, () => 'default')
  /** What commander gives without flags or variables (brokers has no default: one is given). */
  const defaults = (keys: readonly OptionName[]) => ({
    ...Object.fromEntries(keys.map((k) => [k, optionSpecs[k].default])),
    brokers: 'default:9092',
  })

  function fileError(file: string, keys: readonly OptionName[] = runKeys): ConfigError {
    try {
      resolveConfig(keys, { ...defaults(keys), config: file }, () => 'default')
    } catch (error) {
      if (error instanceof ConfigError) return error
      throw error
    }
    throw new Error(`${file} was accepted`)
  }

  it('reads YAML with camelCase keys and flag names, numbers and lists', () => {
    const file = write(
      [
        'brokers: [kafka-1:9092, kafka-2:9092]',
        'input-topic: in.telemetry',
        'windowSize: 1m',
        'grace: 0',
        'http-port: 9100',
        'shutdownTimeout: 45s',
        'late-topic: in.late',
      ].join('\n'),
    )
    expect(fromFile(file)).toEqual({
      brokers: ['kafka-1:9092', 'kafka-2:9092'],
      config: file,
      groupId: 'kwa-aggregator',
      inputTopic: 'in.telemetry',
      outputTopic: 'telemetry-aggregates',
      windowSize: 60_000,
      grace: 0,
      delivery: 'exactly-once',
      httpPort: 9100,
      shutdownTimeout: 45_000,
      lateTopic: 'in.late',
    })
  })

  it('reads JSON', () => {
    const file = write(
      JSON.stringify({ brokers: 'k:9092', delivery: 'at-least-once', httpPort: 0 }),
      'json',
    )
    expect(fromFile(file)).toMatchObject({
      brokers: ['k:9092'],
      delivery: 'at-least-once',
      httpPort: 0,
    })
  })

  it('an empty file sets nothing', () => {
    expect(fromFile(write(''))).toMatchObject({ groupId: 'kwa-aggregator', windowSize: 10_000 })
  })

  /** A `kwa`-like command with the --config hook; returns what its action parsed. */
  async function parseWithCommander(args: string[]): Promise<Record<string, unknown>> {
    let parsed: Record<string, unknown> = {}
    const program = new Command('kwa')
      .exitOverride()
      .hook('preAction', (_program, actionCommand) => applyConfigFile(actionCommand))
    const run = program.command('run')
    for (const key of runKeys) run.addOption(commanderOption(key))
    run.action((raw: Record<string, unknown>) => {
      parsed = parseConfig(runKeys, raw)
    })
    await program.parseAsync(['node', 'kwa', 'run', ...args])
    return parsed
  }

  it('precedence: flag > environment variable > file > default', async () => {
    const file = write(
      [
        'brokers: file:9092',
        'groupId: group-from-file',
        'inputTopic: input-from-file',
        'windowSize: 20s',
        'grace: 3s',
      ].join('\n'),
    )
    vi.stubEnv('KWA_CONFIG', file)
    vi.stubEnv('KWA_GROUP_ID', 'group-from-env')
    vi.stubEnv('KWA_GRACE', '4s')
    vi.stubEnv('KAFKA_BROKERS', 'env:9092')
    const c = await parseWithCommander(['--group-id', 'group-from-flag', '--grace', '5s'])
    expect(c).toMatchObject({
      groupId: 'group-from-flag', // flag over env and file
      grace: 5_000, // flag over env and file
      brokers: ['env:9092'], // env over file
      inputTopic: 'input-from-file', // file over default
      windowSize: 20_000, // file over default
      outputTopic: 'telemetry-aggregates', // default
      config: file,
    })
    vi.unstubAllEnvs()
    vi.stubEnv('KWA_GROUP_ID', 'group-from-env')
    // The integration setup may export KAFKA_BROKERS into this process.
    vi.stubEnv('KAFKA_BROKERS', undefined)
    expect(await parseWithCommander(['--config', file])).toMatchObject({
      groupId: 'group-from-env',
      grace: 3_000,
      brokers: ['file:9092'],
    })
  })

  it('through commander, a bad file value names the file, the key, the flag and the variable', async () => {
    const file = write('brokers: k:9092\nwindow-size: soon\n')
    await expect(parseWithCommander(['--config', file])).rejects.toThrow(
      `invalid ${labels.windowSize} from "window-size" in ${file}: expected a duration`,
    )
  })

  it('an unknown key is an error naming it, the file and the accepted keys', () => {
    const file = write('brokers: k:9092\ninputTopics: typo\n')
    const error = fileError(file)
    expect(error.option).toBe(labels.config)
    expect(error.message).toContain(`unknown key "inputTopics" in config file "${file}"`)
    expect(error.message).toContain(
      'accepted keys: brokers, groupId, inputTopic, outputTopic, windowSize, grace, delivery, ' +
        'httpPort, shutdownTimeout, lateTopic (or their flag names, e.g. input-topic)',
    )
    expect(error.message).not.toContain('\n')
  })

  it('an option of another command is refused as such', () => {
    const error = fileError(write('rate: 10\n'))
    expect(error.message).toMatch(
      /option "rate" in config file ".*" does not apply to this command/,
    )
  })

  it('the same option twice (camelCase and flag name) is an error', () => {
    const error = fileError(write('inputTopic: a\ninput-topic: b\n'))
    expect(error.option).toBe(labels.inputTopic)
    expect(error.message).toContain('set twice')
  })

  it.each([
    ['windowSize: banana', labels.windowSize, /expected a duration like .*got "banana"/],
    ['delivery: sometimes', labels.delivery, /"exactly-once"\|"at-least-once"/],
    ['httpPort: 70000', labels.httpPort, /expected an integer from 0 to 65535, got "70000"/],
    ['grace: {seconds: 2}', labels.grace, /expected a string, number or boolean, got a object/],
    ['lateTopic:', labels.lateTopic, /got no value/],
  ])('%j: names the file, the key and what is accepted', (line, label, accepted) => {
    const file = write(`${line}\n`)
    const error = fileError(file)
    const key = line.split(':')[0] ?? ''
    expect(error.option).toBe(`${label} from "${key}" in ${file}`)
    expect(error.message).toMatch(accepted)
    expect(error.message).not.toContain('\n')
  })

  it.each([
    ['windowSize: [1, {a: 1}', 'yaml', /cannot parse config file ".*kwa-\d+\.yaml": \S/],
    ['{"windowSize": "1s",}', 'json', /cannot parse config file ".*kwa-\d+\.json": \S/],
    ['- a\n- b', 'yaml', /must be a mapping of option names to values, not a list/],
    ['just text', 'yml', /must be a mapping of option names to values, not a string/],
  ])('%j (.%s) is refused, naming the file, on one line', (text, ext, message) => {
    const error = fileError(write(text, ext))
    expect(error.option).toBe(labels.config)
    expect(error.message).toMatch(message)
    expect(error.message).not.toContain('\n')
  })

  it('a missing file is named', () => {
    const file = path.join(dir, 'missing.yaml')
    expect(fileError(file).message).toBe(
      `invalid ${labels.config}: cannot read config file "${file}" (ENOENT)`,
    )
  })

  it('warns when a config file holding the SASL password is readable by every user', () => {
    const secret = 'file-held-secret-31a'
    const file = write(`saslPassword: ${secret}\n`)
    const topics = () =>
      spawnSync(
        process.execPath,
        ['--import', 'tsx', 'consumer/cli.ts', 'topics', '--config', file],
        {
          cwd: packageRoot,
          env: { PATH: process.env.PATH ?? '' },
          encoding: 'utf8',
          timeout: 30_000,
        },
      )
    chmodSync(file, 0o644)
    const open = topics()
    // The missing SASL options stop it next (exit 2), after the warning.
    expect(open.status, open.stderr).toBe(2)
    expect(open.stderr).toContain(
      `kwa: warning: config file "${file}" holds sasl-password and every user can read it (mode 644)`,
    )
    expect(open.stderr).not.toContain(secret)
    chmodSync(file, 0o600)
    const closed = topics()
    expect(closed.status, closed.stderr).toBe(2)
    expect(closed.stderr).not.toContain('warning')
    // No password, no warning, whatever the mode.
    const plain = write('inputTopic: in\n')
    chmodSync(plain, 0o644)
    expect(readConfigFile(plain, ['inputTopic']).warnings).toEqual([])
  })

  it('kwa run exits 2 with one line for a bad config file', () => {
    const file = write('brokers: localhost:9092\nwindowSize: 10s\ncolour: blue\n')
    const result = spawnSync(
      process.execPath,
      ['--import', 'tsx', 'consumer/cli.ts', 'run', '--config', file],
      {
        cwd: packageRoot,
        env: { PATH: process.env.PATH ?? '' },
        encoding: 'utf8',
        timeout: 30_000,
      },
    )
    expect(result.status, result.stderr).toBe(2)
    expect(result.stderr.trimEnd().split('\n')).toHaveLength(1)
    expect(result.stderr).toContain(`unknown key "colour" in config file "${file}"`)
  })
})

describe('kwa run --help', () => {
  it('documents every option with its environment variable and default', () => {
    const run = buildProgram().commands.find((c) => c.name() === 'run')
    expect(run).toBeDefined()
    const help = (run?.helpInformation() ?? '').replace(/\s+/g, ' ')
    const keys = (run?.options ?? [])
      .map((o) => o.attributeName())
      .filter((k): k is OptionName => k in optionSpecs)
    expect(keys).toEqual(
      expect.arrayContaining(['httpHost', 'httpPort', 'shutdownTimeout', 'config']),
    )
    for (const key of keys) {
      const s = optionSpecs[key]
      const long = labels[key].split(' ')[0] ?? ''
      expect(help, key).toContain(long)
      expect(help, key).toMatch(new RegExp(`env: ${s.env}\\)`))
      if (s.default !== undefined) expect(help, key).toContain(`default: "${s.default}"`)
    }
  })
})
