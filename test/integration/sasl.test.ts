/**
 * SASL/SCRAM end to end on a real broker: `kwa topics` and `kwa produce` (CLI processes) and a
 * replica (in-process) authenticate on a SASL_PLAINTEXT listener, and the results are read back
 * with SCRAM-SHA-256 and with SCRAM-SHA-512 credentials; a wrong password fails fast.
 *
 *   npx vitest run --project integration test/integration/sasl.test.ts
 *
 * Always starts its own jar broker (scripts/local-kafka.ts with `sasl`), even when KAFKA_BROKERS
 * names another one: that one may not have SCRAM users. Fails, never skips, without java + mvn.
 */
import { describe, expect, it } from 'vitest'
import { parseConfig } from '../../consumer/config'
import { kafkaSecurity, securityOptions, type KafkaSecurity } from '../../consumer/kafka'
import { createLogger } from '../../consumer/logger'
import { decodeWindowAggregate } from '../../consumer/schemas'
import { AggregatorService, defaultChangelogTopic } from '../../consumer/service'
import { eventually, kwa } from '../helpers/cli'
import { expectMatchesReference, referenceOfInput } from '../helpers/expected'
import { readAll, uniqueTopic } from '../helpers/kafka'
import { ownBroker } from '../helpers/own-broker'

const USER = 'kwa-user'
const PASSWORD = 'kwa-secret-7d1f'
const PARTITIONS = 2
const WINDOW = { sizeMs: 1_000, advanceMs: 1_000, graceMs: 0 }
const logger = createLogger((process.env['KWA_TEST_LOG_LEVEL'] as 'info' | undefined) ?? 'silent')

const scramBroker = ownBroker({
  heapMb: 512,
  sasl: { users: [{ username: USER, password: PASSWORD }] },
})

/** Bootstrap string of the SASL_PLAINTEXT listener, starting the broker if needed. */
async function saslBrokers(): Promise<string> {
  const { saslBrokers } = await scramBroker()
  if (saslBrokers === undefined) throw new Error('the broker has no SASL listener')
  return saslBrokers
}

/** Security exactly as `kwa` builds it from its options. */
const security = (mechanism: string, password = PASSWORD): KafkaSecurity =>
  kafkaSecurity(
    parseConfig(securityOptions, {
      saslMechanism: mechanism,
      saslUsername: USER,
      saslPassword: password,
    }),
  )

const saslEnv = async (mechanism: string, password = PASSWORD) => ({
  KAFKA_BROKERS: await saslBrokers(),
  KWA_SASL_MECHANISM: mechanism,
  KWA_SASL_USERNAME: USER,
  KWA_SASL_PASSWORD: password,
})

describe('SASL/SCRAM', () => {
  it('kwa topics, kwa produce and a replica authenticate; results read with SCRAM-SHA-256 and -512', async () => {
    const brokers = await saslBrokers()
    const input = uniqueTopic('sasl-in')
    const output = uniqueTopic('sasl-out')
    const groupId = uniqueTopic('sasl-group')
    const topicArgs = ['--input-topic', input, '--output-topic', output, '--group-id', groupId]

    const topics = await kwa(
      ['topics', ...topicArgs, '--partitions', String(PARTITIONS)],
      await saslEnv('scram-sha-256'),
    )
    expect(topics.status, topics.stderr).toBe(0)
    expect(topics.stdout).toMatch(new RegExp(`created +input +${input} +${PARTITIONS} partitions`))
    expect(topics.stdout).toContain(defaultChangelogTopic(groupId))

    // Same provisioning through PLAIN: everything exists already.
    const again = await kwa(['topics', ...topicArgs], await saslEnv('plain'))
    expect(again.status, again.stderr).toBe(0)
    expect(again.stdout).not.toContain('created')
    expect(again.stdout.trim().split('\n')).toHaveLength(4) // input, output, dead-letter, changelog

    const produced = await kwa(
      [
        'produce',
        '--input-topic',
        input,
        '--duration',
        '3s',
        '--rate',
        '2000',
        '--keys',
        '6',
        '--samples-per-batch',
        '50',
        '--out-of-order',
        '0',
      ],
      await saslEnv('scram-sha-512'),
    )
    expect(produced.status, produced.stderr).toBe(0)

    // The expected windows, from what really is in the input topic.
    const inputMessages = await readAll(brokers, input, {
      security: security('scram-sha-512'),
    })
    const { reference, samples } = referenceOfInput(inputMessages, PARTITIONS, WINDOW)
    expect(reference.closed.size).toBeGreaterThan(6)

    const replica = new AggregatorService(
      {
        brokers: [brokers],
        clientId: 'kwa-sasl-test',
        groupId,
        inputTopic: input,
        outputTopic: output,
        window: WINDOW,
        sessionTimeoutMs: 10_000,
        statsIntervalMs: 0,
        security: security('scram-sha-256'),
        createTopics: false, // kwa topics made them: only check
      },
      logger,
    )
    try {
      await replica.start()
      await eventually('the replica to aggregate every input sample', () =>
        Promise.resolve(replica.totals.samples === samples),
      )
    } finally {
      await replica.stop()
    }

    for (const mechanism of ['scram-sha-256', 'scram-sha-512']) {
      const results = (
        await readAll(brokers, output, {
          expected: reference.closed.size,
          timeoutMs: 60_000,
          security: security(mechanism),
        })
      ).map((m) => decodeWindowAggregate(m.value as Buffer))
      expectMatchesReference(results, reference, mechanism)
    }
  })

  it('a wrong password fails fast with an authentication error, and never shows it', async () => {
    const brokers = await saslBrokers()
    const wrong = 'not-the-password-91c'
    const cli = await kwa(['topics', '--input-topic', uniqueTopic('sasl-wrong')], {
      ...(await saslEnv('scram-sha-256', wrong)),
    })
    expect(cli.status, cli.stderr).toBe(1)
    expect(cli.stderr).toMatch(/^kwa: Kafka authentication failed \(SASL SCRAM SHA256/m)
    expect(cli.stderr).not.toMatch(/\n\s+at /) // one clear line, no stack trace
    expect(cli.stderr + cli.stdout).not.toContain(wrong)
    expect(cli.ms).toBeLessThan(30_000)

    const replica = new AggregatorService(
      {
        brokers: [brokers],
        clientId: 'kwa-sasl-test',
        groupId: uniqueTopic('sasl-wrong-group'),
        inputTopic: uniqueTopic('sasl-wrong-in'),
        outputTopic: uniqueTopic('sasl-wrong-out'),
        window: WINDOW,
        sessionTimeoutMs: 10_000,
        statsIntervalMs: 0,
        security: security('scram-sha-512', wrong),
      },
      logger,
    )
    const started = Date.now()
    try {
      await expect(replica.start()).rejects.toThrow(/SASL SCRAM SHA512 authentication failed/)
      expect(Date.now() - started).toBeLessThan(30_000)
    } finally {
      await replica.stop()
    }
  })
})
