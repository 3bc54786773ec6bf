/**
 * TLS end to end on a real broker. The exactly-once pipeline runs over each TLS listener of the
 * jar broker: SSL with `--ssl --ssl-ca`, mutual TLS with `--ssl-cert/--ssl-key`, and SASL_SSL
 * (SCRAM-SHA-512). `kwa topics` and `kwa produce` are CLI processes; the replica runs in-process.
 * Its results are read back by librdkafka (read_committed) and checked against a recomputation
 * from the input. A CA that did not sign the broker's certificate, an expired broker certificate,
 * one for another host, a mutual-TLS listener without a client certificate or with one of another
 * CA, and a wrong SASL_SSL password, each fail fast with a message naming the cause
 * and a non-zero exit; `--ssl-reject-unauthorized false` logs a warning.
 *
 *   npx vitest run --project integration test/integration/tls.test.ts
 *
 * Always starts its own jar broker (scripts/local-kafka.ts with `tls` and `sasl`: certificates
 * made by openssl at start), even when KAFKA_BROKERS names another one. Fails, never skips,
 * without java, mvn or openssl.
 */
import { spawn } from 'node:child_process'
import { readFile } from 'node:fs/promises'
import net from 'node:net'
import { describe, expect, it } from 'vitest'
import { parseConfig } from '../../consumer/config'
import { kafkaSecurity, securityOptions, type KafkaSecurity } from '../../consumer/kafka'
import { createLogger } from '../../consumer/logger'
import { packageRoot } from '../../consumer/paths'
import { decodeWindowAggregate } from '../../consumer/schemas'
import { AggregatorService } from '../../consumer/service'
import type { LocalBroker, LocalTlsFiles } from '../../scripts/local-kafka'
import { readCommittedWithLibrdkafka } from '../chaos/librdkafka-reader'
import { eventually, kwa } from '../helpers/cli'
import { expectMatchesReference, referenceOfInput } from '../helpers/expected'
import { readAll, uniqueTopic } from '../helpers/kafka'
import { ownBroker } from '../helpers/own-broker'

const USER = 'kwa-tls-user'
const PASSWORD = 'kwa-tls-secret-4b2e'
const PARTITIONS = 2
const WINDOW = { sizeMs: 1_000, advanceMs: 1_000, graceMs: 0 }
const logger = createLogger((process.env['KWA_TEST_LOG_LEVEL'] as 'info' | undefined) ?? 'silent')

const tlsBroker = ownBroker({
  heapMb: 512,
  sasl: { users: [{ username: USER, password: PASSWORD }] },
  tls: {},
})

async function tlsOf(): Promise<NonNullable<LocalBroker['tls']> & { plaintext: string }> {
  const started = await tlsBroker()
  if (started.tls === undefined) throw new Error('the broker has no TLS listeners')
  return { ...started.tls, plaintext: started.brokers }
}

/** One way to connect: the listener, and `kwa`'s options as environment variables. */
interface Listener {
  name: string
  brokers: string
  env: Record<string, string>
}

async function listeners(): Promise<Listener[]> {
  const tls = await tlsOf()
  const { files } = tls
  if (tls.saslSslBrokers === undefined) throw new Error('the broker has no SASL_SSL listener')
  return [
    { name: 'SSL', brokers: tls.sslBrokers, env: { KWA_SSL: 'true', KWA_SSL_CA: files.ca } },
    {
      name: 'mutual TLS',
      brokers: tls.mtlsBrokers,
      env: mutualEnv(files, files.clientCert, files.clientKey),
    },
    {
      name: 'SASL_SSL',
      brokers: tls.saslSslBrokers,
      env: {
        KWA_SSL: 'true',
        KWA_SSL_CA: files.ca,
        KWA_SASL_MECHANISM: 'scram-sha-512',
        KWA_SASL_USERNAME: USER,
        KWA_SASL_PASSWORD: PASSWORD,
      },
    },
  ]
}

const mutualEnv = (files: LocalTlsFiles, cert: string, key: string): Record<string, string> => ({
  KWA_SSL: 'true',
  KWA_SSL_CA: files.ca,
  KWA_SSL_CERT: cert,
  KWA_SSL_KEY: key,
})

/** Security exactly as `kwa` builds it from these environment variables. */
function securityFrom(env: Record<string, string>): KafkaSecurity {
  const options = {
    ssl: env['KWA_SSL'] === 'true',
    sslCa: env['KWA_SSL_CA'],
    sslCert: env['KWA_SSL_CERT'],
    sslKey: env['KWA_SSL_KEY'],
    saslMechanism: env['KWA_SASL_MECHANISM'],
    saslUsername: env['KWA_SASL_USERNAME'],
    saslPassword: env['KWA_SASL_PASSWORD'],
  }
  const given = Object.fromEntries(Object.entries(options).filter(([, v]) => v !== undefined))
  return kafkaSecurity(parseConfig(securityOptions, given))
}

/** A port nothing listens on now (for a replica's /metrics). */
async function freePort(): Promise<number> {
  const server = net.createServer()
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const { port } = server.address() as net.AddressInfo
  await new Promise<void>((resolve) => server.close(() => resolve()))
  return port
}

/** Topics, input, an exactly-once replica and its results, all over `listener`. */
async function pipelineOver(listener: Listener, plaintext: string): Promise<void> {
  const env = { KAFKA_BROKERS: listener.brokers, ...listener.env }
  const tag = listener.name.replace(/\W+/g, '-').toLowerCase()
  const input = uniqueTopic(`tls-${tag}-in`)
  const output = uniqueTopic(`tls-${tag}-out`)
  const groupId = uniqueTopic(`tls-${tag}-group`)
  const topics = await kwa(
    ['topics', '--input-topic', input, '--output-topic', output, '--group-id', groupId].concat([
      '--partitions',
      String(PARTITIONS),
    ]),
    env,
  )
  expect(topics.status, `${listener.name}: ${topics.stderr}`).toBe(0)
  expect(topics.stdout).toMatch(new RegExp(`created +input +${input} +${PARTITIONS} partitions`))

  const produced = await kwa(
    ['produce', '--input-topic', input, '--duration', '3s', '--rate', '2000', '--keys', '6'].concat(
      ['--samples-per-batch', '50', '--out-of-order', '0'],
    ),
    env,
  )
  expect(produced.status, `${listener.name}: ${produced.stderr}`).toBe(0)

  // The expected windows, from what really is in the input topic (read over the same listener).
  const security = securityFrom(listener.env)
  const inputMessages = await readAll(listener.brokers, input, { security })
  const { reference, samples } = referenceOfInput(inputMessages, PARTITIONS, WINDOW)
  expect(reference.closed.size).toBeGreaterThan(6)

  const replica = new AggregatorService(
    {
      brokers: [listener.brokers],
      clientId: `kwa-tls-${tag}`,
      groupId,
      inputTopic: input,
      outputTopic: output,
      window: WINDOW,
      delivery: 'exactly-once',
      sessionTimeoutMs: 10_000,
      statsIntervalMs: 0,
      security,
      createTopics: false, // kwa topics made them: only check
    },
    logger,
  )
  try {
    await replica.start()
    await eventually(`${listener.name}: the replica to aggregate every input sample`, () =>
      Promise.resolve(replica.totals.samples === samples),
    )
    // Every window closed by the input is published (committed) before the replica stops.
    await eventually(`${listener.name}: ${reference.closed.size} results committed`, async () => {
      const committed = await readCommittedWithLibrdkafka(plaintext, output, 30_000)
      return committed.length >= reference.closed.size
    })
  } finally {
    await replica.stop()
  }

  // librdkafka, read_committed: shares no code with kafkajs or ours.
  const committed = await readCommittedWithLibrdkafka(plaintext, output, 30_000)
  const results = committed.map((r) => decodeWindowAggregate(Buffer.from(r.value ?? '', 'hex')))
  expectMatchesReference(results, reference, listener.name)
}

describe('TLS', () => {
  it('exactly once over SSL, mutual TLS and SASL_SSL, read back by librdkafka', async () => {
    const { plaintext } = await tlsOf()
    for (const listener of await listeners()) await pipelineOver(listener, plaintext)
  })

  it('a CA that did not sign the broker certificate fails fast, naming the cause', async () => {
    const tls = await tlsOf()
    const cli = await kwa(['topics', '--input-topic', uniqueTopic('tls-wrong-ca')], {
      KAFKA_BROKERS: tls.sslBrokers,
      KWA_SSL: 'true',
      KWA_SSL_CA: tls.files.otherCa,
    })
    expect(cli.status, cli.stderr).toBe(1)
    expect(cli.stderr).toMatch(/^kwa: TLS: .*certificate.*--ssl-ca/m)
    expect(cli.stderr).not.toMatch(/\n\s+at /) // one clear line, no stack trace
    expect(cli.ms).toBeLessThan(20_000)
  })

  it('an expired broker certificate, and one for another host, fail fast, naming the cause', async () => {
    const tls = await tlsOf()
    for (const [what, brokers, expected] of [
      ['expired', tls.expiredBrokers, /^kwa: TLS: .*certificate.*out of date/m],
      ['wrong host', tls.wrongHostBrokers, /^kwa: TLS: .*does not name the host.*--brokers/m],
    ] as const) {
      const cli = await kwa(['topics', '--input-topic', uniqueTopic('tls-bad-cert')], {
        KAFKA_BROKERS: brokers,
        KWA_SSL: 'true',
        KWA_SSL_CA: tls.files.ca,
      })
      expect(cli.status, `${what}: ${cli.stderr}`).toBe(1)
      expect(cli.stderr, what).toMatch(expected)
      expect(cli.stderr, what).not.toMatch(/\n\s+at /)
      expect(cli.ms, what).toBeLessThan(20_000)
    }
  })

  it('a wrong password over SASL_SSL fails fast, and never shows it', async () => {
    const tls = await tlsOf()
    const wrong = 'not-the-tls-password-5e1'
    const cli = await kwa(['topics', '--input-topic', uniqueTopic('tls-wrong-password')], {
      KAFKA_BROKERS: tls.saslSslBrokers ?? '',
      KWA_SSL: 'true',
      KWA_SSL_CA: tls.files.ca,
      KWA_SASL_MECHANISM: 'scram-sha-512',
      KWA_SASL_USERNAME: USER,
      KWA_SASL_PASSWORD: wrong,
    })
    expect(cli.status, cli.stderr).toBe(1)
    expect(cli.stderr).toMatch(/^kwa: Kafka authentication failed \(SASL SCRAM SHA512/m)
    expect(cli.stderr).not.toMatch(/\n\s+at /)
    expect(cli.stderr + cli.stdout).not.toContain(wrong)
    expect(cli.ms).toBeLessThan(20_000)
  })

  it('mutual TLS without a client certificate, or with one of another CA, fails fast', async () => {
    const tls = await tlsOf()
    const none = await kwa(['topics', '--input-topic', uniqueTopic('tls-no-cert')], {
      KAFKA_BROKERS: tls.mtlsBrokers,
      KWA_SSL: 'true',
      KWA_SSL_CA: tls.files.ca,
    })
    const stranger = await kwa(['topics', '--input-topic', uniqueTopic('tls-stranger')], {
      KAFKA_BROKERS: tls.mtlsBrokers,
      ...mutualEnv(tls.files, tls.files.strangerCert, tls.files.strangerKey),
    })
    for (const [what, cli] of [
      ['no client certificate', none],
      ['a certificate of another CA', stranger],
    ] as const) {
      expect(cli.status, `${what}: ${cli.stderr}`).toBe(1)
      expect(cli.stderr, what).toMatch(/^kwa: TLS: .*client certificate.*--ssl-cert/m)
      expect(cli.stderr, what).not.toMatch(/\n\s+at /)
      expect(cli.ms, what).toBeLessThan(20_000)
    }
  })

  it('kwa run at debug level: the password and the client key stay out of logs and /metrics', async () => {
    const tls = await tlsOf()
    const keyLines = (await readFile(tls.files.clientKey, 'utf8'))
      .split('\n')
      .filter((line) => line.length > 40) // the key's base64 body, line by line
    expect(keyLines.length).toBeGreaterThan(10)
    for (const listener of await listeners()) {
      if (listener.name === 'SSL') continue // no secret in play
      const port = await freePort()
      const tag = listener.name.replace(/\W+/g, '-').toLowerCase()
      const input = uniqueTopic(`tls-debug-${tag}-in`)
      const topics = await kwa(['topics', '--input-topic', input, '--partitions', '1'], {
        KAFKA_BROKERS: listener.brokers,
        ...listener.env,
      })
      expect(topics.status, topics.stderr).toBe(0)
      const replica = spawn(process.execPath, ['--import', 'tsx', 'consumer/cli.ts', 'run'], {
        cwd: packageRoot,
        env: {
          PATH: process.env.PATH ?? '',
          KAFKA_BROKERS: listener.brokers,
          ...listener.env,
          KWA_LOG_LEVEL: 'debug',
          KWA_HTTP_PORT: String(port),
          KWA_INPUT_TOPIC: input,
          KWA_OUTPUT_TOPIC: uniqueTopic(`tls-debug-${tag}-out`),
          KWA_GROUP_ID: uniqueTopic(`tls-debug-${tag}-group`),
        },
        stdio: ['ignore', 'pipe', 'pipe'],
      })
      let output = ''
      replica.stdout.setEncoding('utf8').on('data', (chunk: string) => (output += chunk))
      replica.stderr.setEncoding('utf8').on('data', (chunk: string) => (output += chunk))
      const exited = new Promise<number | null>((resolve) => replica.once('exit', resolve))
      let metrics = ''
      try {
        await eventually(
          `${listener.name}: the replica to be ready`,
          async () => {
            const ready = await fetch(`http://127.0.0.1:${port}/readyz`).catch(() => undefined)
            return ready?.status === 200
          },
          30_000,
        )
        metrics = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text()
      } catch (error) {
        throw new Error(`${String(error)}; replica output:\n${output.slice(-3000)}`)
      } finally {
        replica.kill('SIGTERM')
      }
      expect(await exited, output).toBe(0)
      expect(metrics).toContain('kwa_')
      expect(output).toMatch(/"msg":"configuration"/)
      const everything = output + metrics
      expect(everything, listener.name).not.toContain(PASSWORD)
      for (const line of keyLines) expect(everything, listener.name).not.toContain(line)
      if (listener.name === 'SASL_SSL') expect(output).toContain('"saslPassword":"[redacted]"')
    }
  })

  it('--ssl-reject-unauthorized false connects and logs a warning', async () => {
    const tls = await tlsOf()
    const cli = await kwa(
      ['topics', '--input-topic', uniqueTopic('tls-unverified'), '--partitions', '1'],
      {
        KAFKA_BROKERS: tls.sslBrokers,
        KWA_SSL: 'true',
        KWA_SSL_REJECT_UNAUTHORIZED: 'false',
      },
    )
    expect(cli.status, cli.stderr).toBe(0)
    expect(cli.stderr).toMatch(/broker certificates are not verified/)
  })
})
