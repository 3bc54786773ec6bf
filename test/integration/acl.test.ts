/**
 * Least privilege on a broker that enforces ACLs (KRaft's StandardAuthorizer). For `kwa run` in
 * both delivery modes, with `--create-topics` true and false, and for `kwa topics` and `kwa tail`:
 * a SCRAM principal holding exactly the ACLs docs/OPERATIONS.md lists does the whole job (the
 * pipeline's results read back by librdkafka and checked against a recomputation of the input),
 * and with any one of them removed the command exits non-zero, naming the missing operation and
 * resource. So the documentation lists no ACL that is not needed, and none is missing.
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
  type Admin,
  type AclEntry,
  type Producer,
} from 'kafkajs'
import { describe, expect, it } from 'vitest'
import {
  decodeWindowAggregate,
  encodeTelemetryBatch,
  encodeWindowAggregate,
} from '../../consumer/schemas'
import { defaultChangelogTopic } from '../../consumer/service'
import { TAIL_GROUP_PREFIX } from '../../consumer/tail'
import { provisionTopics } from '../../consumer/topics'
import { readCommittedWithLibrdkafka } from '../chaos/librdkafka-reader'
import { eventually, kwa, startKwa, type CliResult } from '../helpers/cli'
import { expectMatchesReference, referenceOfInput } from '../helpers/expected'
import { readAll, uniqueTopic } from '../helpers/kafka'
import { ownBroker } from '../helpers/own-broker'

const USER = 'kwa-acl-user'
const PASSWORD = 'kwa-acl-secret-8c3d'
const PARTITIONS = 2
const KEYS = 6
const WINDOW = { sizeMs: 1_000, advanceMs: 1_000, graceMs: 0 }
/** A command that lacks an ACL fails at its first refused request: no retries to wait out. */
const REFUSED_WITHIN_MS = 60_000
const POISON = Buffer.from('not a TelemetryBatch')

const aclBroker = ownBroker({
  heapMb: 512,
  sasl: { users: [{ username: USER, password: PASSWORD }] },
  authorizer: true,
})

const { TOPIC, GROUP, TRANSACTIONAL_ID } = AclResourceTypes
const { READ, WRITE, CREATE, DESCRIBE, DESCRIBE_CONFIGS } = AclOperationTypes
const operationName = new Map<AclOperationTypes, string>([
  [READ, 'Read'],
  [WRITE, 'Write'],
  [CREATE, 'Create'],
  [DESCRIBE, 'Describe'],
  [DESCRIBE_CONFIGS, 'DescribeConfigs'],
])
const resourceName = new Map<AclResourceTypes, string>([
  [TOPIC, 'topic'],
  [GROUP, 'group'],
  [TRANSACTIONAL_ID, 'transactional id'],
])

/** One ACL of the principal, and how kwa's message must name it when it is missing. */
interface Acl {
  entry: AclEntry
  /** e.g. `allow Write on topic "out"`; a prefixed ACL's name is followed by the rest of the name. */
  named: string
}

function allow(
  resourceType: AclResourceTypes,
  name: string,
  operation: AclOperationTypes,
  prefixed = false,
): Acl {
  return {
    entry: {
      resourceType,
      resourceName: name,
      resourcePatternType: prefixed ? ResourcePatternTypes.PREFIXED : ResourcePatternTypes.LITERAL,
      principal: `User:${USER}`,
      host: '*',
      operation,
      permissionType: AclPermissionTypes.ALLOW,
    },
    named:
      `allow ${operationName.get(operation)} on ${resourceName.get(resourceType)} ` +
      `"${name}${prefixed ? '' : '"'}`,
  }
}

interface Names {
  input: string
  output: string
  deadLetter: string
  late: string
  changelog: string
  groupId: string
}

function freshNames(label: string): Names {
  const groupId = uniqueTopic(`acl-${label}-group`)
  return {
    input: uniqueTopic(`acl-${label}-in`),
    output: uniqueTopic(`acl-${label}-out`),
    deadLetter: uniqueTopic(`acl-${label}-dlq`),
    late: uniqueTopic(`acl-${label}-late`),
    changelog: defaultChangelogTopic(groupId),
    groupId,
  }
}

type Delivery = 'exactly-once' | 'at-least-once'

/** The ACLs docs/OPERATIONS.md lists for a replica (`kwa run`), row by row. */
function runAcls(n: Names, delivery: Delivery, createTopics: boolean): Acl[] {
  const written = [n.output, n.deadLetter, n.late]
  const exactlyOnce = delivery === 'exactly-once'
  return [
    allow(TOPIC, n.input, READ),
    ...written.map((topic) => allow(TOPIC, topic, WRITE)),
    ...(exactlyOnce
      ? [READ, WRITE, DESCRIBE_CONFIGS].map((op) => allow(TOPIC, n.changelog, op))
      : []),
    allow(GROUP, n.groupId, READ, true),
    ...(exactlyOnce ? [allow(TRANSACTIONAL_ID, `${n.groupId}.${n.input}.`, WRITE, true)] : []),
    ...(createTopics
      ? [...written, ...(exactlyOnce ? [n.changelog] : [])].map((topic) =>
          allow(TOPIC, topic, CREATE),
        )
      : []),
  ]
}

/** The ACLs docs/OPERATIONS.md lists for `kwa topics`: on each topic it creates. */
function topicsAcls(n: Names): Acl[] {
  return [n.input, n.output, n.deadLetter, n.late, n.changelog].flatMap((topic) =>
    [CREATE, DESCRIBE, DESCRIBE_CONFIGS].map((op) => allow(TOPIC, topic, op)),
  )
}

/** The ACLs docs/OPERATIONS.md lists for `kwa tail`. */
const tailAcls = (output: string): Acl[] => [
  allow(TOPIC, output, READ),
  allow(GROUP, TAIL_GROUP_PREFIX, READ, true),
]

const aclMatches = async (admin: Admin, entry: AclEntry): Promise<number> => {
  const { resources } = await admin.describeAcls(entry)
  return resources.reduce((n, r) => n + r.acls.length, 0)
}

/** Grants or revokes ACLs and waits until the broker's authorizer answers with the change. */
async function setAcls(admin: Admin, acls: Acl[], present: boolean): Promise<void> {
  const entries = acls.map((a) => a.entry)
  if (present) await admin.createAcls({ acl: entries })
  else await admin.deleteAcls({ filters: entries })
  await eventually(`ACLs ${present ? 'granted' : 'revoked'}`, async () => {
    for (const entry of entries)
      if ((await aclMatches(admin, entry)) !== (present ? 1 : 0)) return false
    return true
  })
}

interface Harness {
  brokers: string
  saslBrokers: string
  admin: Admin
  producer: Producer
}

async function harness(): Promise<Harness> {
  const started = await aclBroker()
  const kafka = new Kafka({ brokers: [started.brokers], logLevel: logLevel.NOTHING })
  const admin = kafka.admin()
  const producer = kafka.producer()
  await Promise.all([admin.connect(), producer.connect()])
  return { brokers: started.brokers, saslBrokers: started.saslBrokers ?? '', admin, producer }
}

async function closeHarness(h: Harness): Promise<void> {
  await Promise.all([h.admin.disconnect(), h.producer.disconnect()])
}

const saslEnv = (h: Harness) => ({ KAFKA_BROKERS: h.saslBrokers, KWA_SASL_PASSWORD: PASSWORD })
const saslFlags = ['--sasl-mechanism', 'scram-sha-512', '--sasl-username', USER]

/**
 * One round of input, after every earlier one in event time: samples of every key over five
 * windows (key k in partition k % PARTITIONS, each partition's messages in event-time order), a
 * sample of key 0 older than its partition's stream time (late: grace is 0), and a message that
 * is not Avro (dead-lettered). Returns the round's end time.
 */
async function produceRound(producer: Producer, topic: string, after: number): Promise<number> {
  const end = Math.max(Date.now(), after + 6_000)
  const messages: { partition: number; value: Buffer }[] = []
  for (let step = 0; step < 20; step++) {
    for (let partition = 0; partition < PARTITIONS; partition++) {
      const samples = []
      for (let k = partition; k < KEYS; k += PARTITIONS)
        samples.push({
          seriesKey: `acl-key-${k}`,
          eventTime: end - 5_000 + step * 250,
          value: k * 100 + step,
        })
      messages.push({ partition, value: encodeTelemetryBatch({ sourceId: 'acl', samples }) })
    }
  }
  const late = { seriesKey: 'acl-key-0', eventTime: end - 20_000, value: -1 }
  messages.push({ partition: 0, value: encodeTelemetryBatch({ sourceId: 'acl', samples: [late] }) })
  messages.push({ partition: 1, value: POISON })
  await producer.send({ topic, acks: -1, messages })
  return end
}

const runArgs = (n: Names, delivery: Delivery, createTopics: boolean): string[] =>
  ['run', '--input-topic', n.input, '--output-topic', n.output, '--group-id', n.groupId].concat(
    ['--dead-letter-topic', n.deadLetter, '--late-topic', n.late, '--changelog-topic', n.changelog],
    ['--delivery', delivery, '--create-topics', String(createTopics), '--http-port', '0'],
    ['--window-size', '1s', '--grace', '0s', '--log-level', 'error', ...saslFlags],
  )

/** A command that lacks `acl` exits non-zero in time, and its message names the ACL. */
function expectRefused(result: CliResult, acl: Acl, label: string): void {
  const context = `${label} without ${acl.named}:\n${result.stderr.slice(-3000)}`
  expect(result.status, context).not.toBe(0)
  expect(result.status, context).not.toBeNull()
  expect(result.stderr, context).toContain(acl.named)
  expect(result.stdout + result.stderr, context).not.toContain(PASSWORD)
}

const count = async (brokers: string, topic: string) =>
  (await readCommittedWithLibrdkafka(brokers, topic, 30_000)).length

describe('ACLs (StandardAuthorizer)', () => {
  const cells: [Delivery, boolean][] = [
    ['exactly-once', false],
    ['at-least-once', false],
    ['exactly-once', true],
    ['at-least-once', true],
  ]
  it.each(cells)(
    'kwa run, %s, --create-topics %s: the documented ACLs suffice, and each is needed',
    async (delivery, createTopics) => {
      const h = await harness()
      const label = `run ${delivery} --create-topics ${createTopics}`
      try {
        const n = freshNames(delivery === 'exactly-once' ? 'eos' : 'alo')
        // The harness (super user) creates the input, and the other topics unless kwa is to.
        if (createTopics) {
          await h.admin.createTopics({ topics: [{ topic: n.input, numPartitions: PARTITIONS }] })
        } else {
          const { input, output, deadLetter, late } = n
          const changelog = delivery === 'exactly-once' ? n.changelog : undefined
          await provisionTopics(
            h.admin,
            { input, output, deadLetter, late, changelog },
            { create: true, inputPartitions: PARTITIONS },
          )
        }
        const acls = runAcls(n, delivery, createTopics)
        await setAcls(h.admin, acls, true)

        // With exactly those ACLs: the whole pipeline, checked against a recomputation.
        let roundEnd = await produceRound(h.producer, n.input, 0)
        const input = (await readAll(h.brokers, n.input)).filter(
          (m) => !POISON.equals(m.value ?? Buffer.alloc(0)),
        )
        const { reference } = referenceOfInput(input, PARTITIONS, WINDOW)
        expect(reference.closed.size).toBeGreaterThanOrEqual(KEYS * 4)
        expect(reference.late).toBe(1)
        const replica = startKwa(runArgs(n, delivery, createTopics), saslEnv(h))
        try {
          await eventually(
            `${label}: every result, dead letter and late sample committed`,
            async () => {
              const exit = replica.ended()
              if (exit !== undefined)
                throw new Error(`kwa run exited (${exit.status}):\n${exit.stderr}`)
              return (
                (await count(h.brokers, n.output)) >= reference.closed.size &&
                (await count(h.brokers, n.deadLetter)) >= 1 &&
                (await count(h.brokers, n.late)) >= reference.late
              )
            },
          )
        } finally {
          const stopped = await replica.stop()
          expect(stopped.status, stopped.stderr).toBe(0)
        }
        const results = (await readCommittedWithLibrdkafka(h.brokers, n.output, 30_000)).map((r) =>
          decodeWindowAggregate(Buffer.from(r.value ?? '', 'hex')),
        )
        expectMatchesReference(results, reference, label)
        expect(await count(h.brokers, n.deadLetter)).toBe(1)
        expect(await count(h.brokers, n.late)).toBe(reference.late)

        // Each ACL removed in turn, with new input (and, exactly once, state to restore): refused.
        for (const [i, acl] of acls.entries()) {
          roundEnd = await produceRound(h.producer, n.input, roundEnd)
          if (acl.entry.operation !== CREATE) {
            await setAcls(h.admin, [acl], false)
            const result = await kwa(
              runArgs(n, delivery, createTopics),
              saslEnv(h),
              REFUSED_WITHIN_MS,
            )
            expectRefused(result, acl, label)
            await setAcls(h.admin, [acl], true)
            continue
          }
          // Create matters only for a missing topic: a new one takes the old one's place.
          const m = { ...n, ...renamed(n, acl.entry.resourceName) }
          const granted = runAcls(m, delivery, createTopics).filter((_, j) => j !== i)
          const missing = runAcls(m, delivery, createTopics)[i]
          if (missing === undefined) throw new Error('ACL lists differ in length')
          await setAcls(h.admin, acls, false)
          await setAcls(h.admin, granted, true)
          const result = await kwa(
            runArgs(m, delivery, createTopics),
            saslEnv(h),
            REFUSED_WITHIN_MS,
          )
          expectRefused(result, missing, label)
          await setAcls(h.admin, granted, false)
          await setAcls(h.admin, acls, true)
        }
      } finally {
        await closeHarness(h)
      }
    },
    600_000,
  )

  it('kwa topics: the documented ACLs suffice, and each is needed', async () => {
    const h = await harness()
    try {
      const topicsArgs = (n: Names) =>
        [
          'topics',
          '--input-topic',
          n.input,
          '--output-topic',
          n.output,
          '--group-id',
          n.groupId,
        ].concat(
          ['--dead-letter-topic', n.deadLetter, '--late-topic', n.late],
          ['--changelog-topic', n.changelog, '--delivery', 'exactly-once'],
          ['--partitions', String(PARTITIONS), ...saslFlags],
        )
      const n = freshNames('topics')
      const acls = topicsAcls(n)
      await setAcls(h.admin, acls, true)
      const created = await kwa(topicsArgs(n), saslEnv(h))
      expect(created.status, created.stderr).toBe(0)
      const listed = new Set(await h.admin.listTopics())
      for (const topic of [n.input, n.output, n.deadLetter, n.late, n.changelog])
        expect(listed.has(topic), topic).toBe(true)
      await setAcls(h.admin, acls, false)
      // Each removed in turn, on new topics (Create matters only for a missing topic).
      for (let i = 0; i < acls.length; i++) {
        const m = freshNames('topics')
        const granted = topicsAcls(m)
        const missing = granted[i]
        if (missing === undefined) throw new Error('ACL lists differ in length')
        await setAcls(
          h.admin,
          granted.filter((_, j) => j !== i),
          true,
        )
        const result = await kwa(topicsArgs(m), saslEnv(h), REFUSED_WITHIN_MS)
        expectRefused(result, missing, 'kwa topics')
        await setAcls(
          h.admin,
          granted.filter((_, j) => j !== i),
          false,
        )
      }
    } finally {
      await closeHarness(h)
    }
  }, 600_000)

  it('kwa tail: the documented ACLs suffice, and each is needed', async () => {
    const h = await harness()
    try {
      const output = uniqueTopic('acl-tail-out')
      await h.admin.createTopics({ topics: [{ topic: output, numPartitions: 1 }] })
      const aggregate = { seriesKey: 'acl-tail-key', windowStart: 0, windowEnd: 1_000 }
      await h.producer.send({
        topic: output,
        messages: [
          {
            key: aggregate.seriesKey,
            value: encodeWindowAggregate({
              ...aggregate,
              count: 2,
              sum: 3,
              mean: 1.5,
              min: 1,
              max: 2,
            }),
          },
        ],
      })
      const acls = tailAcls(output)
      await setAcls(h.admin, acls, true)
      const tailArgs = ['tail', '--output-topic', output, '--from-beginning', ...saslFlags]
      const tail = startKwa(tailArgs, saslEnv(h))
      try {
        await eventually('kwa tail to print the result', () => {
          const exit = tail.ended()
          if (exit !== undefined)
            throw new Error(`kwa tail exited (${exit.status}):\n${exit.stderr}`)
          return tail.output.stdout.includes(aggregate.seriesKey)
        })
      } finally {
        const stopped = await tail.stop()
        expect(stopped.status, stopped.stderr).toBe(0)
      }
      for (const acl of acls) {
        await setAcls(h.admin, [acl], false)
        const result = await kwa(tailArgs, saslEnv(h), REFUSED_WITHIN_MS)
        expectRefused(result, acl, 'kwa tail')
        await setAcls(h.admin, [acl], true)
      }
    } finally {
      await closeHarness(h)
    }
  }, 300_000)
})

/** `n` with a new name for the topic `topic` (output, dead-letter, late or changelog). */
function renamed(n: Names, topic: string): Partial<Names> {
  const role = (['output', 'deadLetter', 'late', 'changelog'] as const).find((r) => n[r] === topic)
  if (role === undefined) throw new Error(`no topic ${topic} among ${JSON.stringify(n)}`)
  return { [role]: uniqueTopic(`acl-new-${role}`) }
}
