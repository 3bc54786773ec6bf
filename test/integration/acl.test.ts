/**
 * Least privilege on a broker that enforces ACLs (KRaft's StandardAuthorizer): a replica whose
 * SASL principal holds exactly the ACLs docs/OPERATIONS.md lists runs the exactly-once pipeline
 * end to end, read back by librdkafka and checked against a recomputation of the input.
 *
 *   npx vitest run --project integration test/integration/acl.test.ts
 *
 * Always starts its own jar broker (scripts/local-kafka.ts with `sasl` and `authorizer`); the
 * harness works as the PLAINTEXT listener's super user. Fails, never skips, without java + mvn.
 */
import {
  AclOperationTypes,
  AclPermissionTypes,
  AclResourceTypes,
  Kafka,
  logLevel,
  ResourcePatternTypes,
  type AclEntry,
} from 'kafkajs'
import { describe, expect, it } from 'vitest'
import { parseConfig } from '../../consumer/config'
import { createKafka, kafkaSecurity, securityOptions } from '../../consumer/kafka'
import { createLogger } from '../../consumer/logger'
import { decodeWindowAggregate } from '../../consumer/schemas'
import {
  AggregatorService,
  defaultChangelogTopic,
  defaultDeadLetterTopic,
} from '../../consumer/service'
import { readCommittedWithLibrdkafka } from '../chaos/librdkafka-reader'
import { eventually, kwa } from '../helpers/cli'
import { expectMatchesReference, referenceOfInput } from '../helpers/expected'
import { readAll, uniqueTopic } from '../helpers/kafka'
import { ownBroker } from '../helpers/own-broker'

const USER = 'kwa-acl-user'
const PASSWORD = 'kwa-acl-secret-8c3d'
const PRINCIPAL = `User:${USER}`
const PARTITIONS = 2
const WINDOW = { sizeMs: 1_000, advanceMs: 1_000, graceMs: 0 }
const logger = createLogger((process.env['KWA_TEST_LOG_LEVEL'] as 'info' | undefined) ?? 'silent')

const aclBroker = ownBroker({
  heapMb: 512,
  sasl: { users: [{ username: USER, password: PASSWORD }] },
  authorizer: true,
})

const security = () =>
  kafkaSecurity(
    parseConfig(securityOptions, {
      saslMechanism: 'scram-sha-512',
      saslUsername: USER,
      saslPassword: PASSWORD,
    }),
  )

interface Names {
  input: string
  output: string
  deadLetter: string
  changelog: string
  groupId: string
}

const allow = (
  resourceType: AclResourceTypes,
  resourceName: string,
  operation: AclOperationTypes,
  prefixed = false,
): AclEntry => ({
  resourceType,
  resourceName,
  resourcePatternType: prefixed ? ResourcePatternTypes.PREFIXED : ResourcePatternTypes.LITERAL,
  principal: PRINCIPAL,
  host: '*',
  operation,
  permissionType: AclPermissionTypes.ALLOW,
})

/** The ACLs docs/OPERATIONS.md lists for a replica, exactly once, `--create-topics false`. */
function documentedAcls(n: Names): AclEntry[] {
  const { TOPIC, GROUP, TRANSACTIONAL_ID, CLUSTER } = AclResourceTypes
  const { READ, WRITE, DESCRIBE, DESCRIBE_CONFIGS, IDEMPOTENT_WRITE } = AclOperationTypes
  return [
    allow(TOPIC, n.input, READ),
    allow(TOPIC, n.input, DESCRIBE),
    ...[n.output, n.deadLetter].flatMap((t) => [allow(TOPIC, t, WRITE), allow(TOPIC, t, DESCRIBE)]),
    ...[READ, WRITE, DESCRIBE, DESCRIBE_CONFIGS].map((op) => allow(TOPIC, n.changelog, op)),
    allow(GROUP, n.groupId, READ, true),
    allow(GROUP, n.groupId, DESCRIBE, true),
    allow(TRANSACTIONAL_ID, `${n.groupId}.${n.input}.`, WRITE, true),
    allow(TRANSACTIONAL_ID, `${n.groupId}.${n.input}.`, DESCRIBE, true),
    allow(CLUSTER, 'kafka-cluster', IDEMPOTENT_WRITE),
  ]
}

describe('ACLs', () => {
  it('exactly once with only the documented ACLs (--create-topics false)', async () => {
    const started = await aclBroker()
    const saslBrokers = started.saslBrokers ?? ''
    const groupId = uniqueTopic('acl-group')
    const names: Names = {
      input: uniqueTopic('acl-in'),
      output: uniqueTopic('acl-out'),
      deadLetter: '',
      changelog: defaultChangelogTopic(groupId),
      groupId,
    }
    names.deadLetter = defaultDeadLetterTopic(names.input)
    // The harness (super user) provisions the topics and the ACLs, and writes the input.
    const topics = await kwa(
      ['topics', '--input-topic', names.input, '--output-topic', names.output].concat([
        '--group-id',
        groupId,
        '--partitions',
        String(PARTITIONS),
      ]),
      { KAFKA_BROKERS: started.brokers },
    )
    expect(topics.status, topics.stderr).toBe(0)
    const admin = new Kafka({ brokers: [started.brokers], logLevel: logLevel.NOTHING }).admin()
    await admin.connect()
    try {
      await admin.createAcls({ acl: documentedAcls(names) })
    } finally {
      await admin.disconnect()
    }
    // The broker enforces ACLs: this principal may not create topics.
    const restricted = createKafka({
      brokers: [saslBrokers],
      clientId: 'kwa-acl-probe',
      logger,
      security: security(),
    }).admin()
    await restricted.connect()
    try {
      const denied: unknown = await restricted
        .createTopics({ topics: [{ topic: uniqueTopic('acl-denied') }] })
        .then(
          () => undefined,
          (error: unknown) => error,
        )
      const types = (denied as { errors?: { type?: string }[] } | undefined)?.errors?.map(
        (e) => e.type,
      )
      expect(types).toEqual(['TOPIC_AUTHORIZATION_FAILED'])
    } finally {
      await restricted.disconnect()
    }
    const produced = await kwa(
      ['produce', '--input-topic', names.input, '--duration', '3s', '--rate', '2000'].concat([
        '--keys',
        '6',
        '--samples-per-batch',
        '50',
        '--out-of-order',
        '0',
      ]),
      { KAFKA_BROKERS: started.brokers },
    )
    expect(produced.status, produced.stderr).toBe(0)
    const inputMessages = await readAll(started.brokers, names.input)
    const { reference, samples } = referenceOfInput(inputMessages, PARTITIONS, WINDOW)
    expect(reference.closed.size).toBeGreaterThan(6)

    const replica = new AggregatorService(
      {
        brokers: [saslBrokers],
        clientId: 'kwa-acl-test',
        groupId,
        inputTopic: names.input,
        outputTopic: names.output,
        window: WINDOW,
        delivery: 'exactly-once',
        sessionTimeoutMs: 10_000,
        statsIntervalMs: 0,
        security: security(),
        createTopics: false,
      },
      logger,
    )
    try {
      await replica.start()
      await eventually('the replica to aggregate every input sample', () =>
        Promise.resolve(replica.totals.samples === samples),
      )
      await eventually(`${reference.closed.size} results committed`, async () => {
        const committed = await readCommittedWithLibrdkafka(started.brokers, names.output, 30_000)
        return committed.length >= reference.closed.size
      })
    } finally {
      await replica.stop()
    }
    const results = (await readCommittedWithLibrdkafka(started.brokers, names.output, 30_000)).map(
      (r) => decodeWindowAggregate(Buffer.from(r.value ?? '', 'hex')),
    )
    expectMatchesReference(results, reference, 'documented ACLs')
  })
})
