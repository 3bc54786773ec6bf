/**
 * Topic provisioning on a real broker: `kwa topics` (the CLI) and the check `kwa run` does at
 * start (`--create-topics false`).
 *
 *   npx vitest run --project integration test/integration/topics.test.ts
 */
import { spawn } from 'node:child_process'
import type { Admin } from 'kafkajs'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createKafka } from '../../consumer/kafka'
import { createLogger } from '../../consumer/logger'
import { packageRoot } from '../../consumer/paths'
import {
  AggregatorService,
  defaultChangelogTopic,
  defaultDeadLetterTopic,
  type ServiceConfig,
} from '../../consumer/service'
import { isTopicError, provisionTopics } from '../../consumer/topics'
import { createTopic, kafkaBrokers, uniqueTopic } from '../helpers/kafka'

const logger = createLogger('silent')

interface CliResult {
  status: number | null
  stdout: string
  stderr: string
}

/** `kwa topics ...` from source against the test broker. */
function kwaTopics(args: string[]): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(
      process.execPath,
      ['--import', 'tsx', 'consumer/cli.ts', 'topics', ...args],
      {
        cwd: packageRoot,
        env: { PATH: process.env.PATH ?? '', KAFKA_BROKERS: kafkaBrokers(), KWA_LOG_LEVEL: 'warn' },
        stdio: ['ignore', 'pipe', 'pipe'],
      },
    )
    let stdout = ''
    let stderr = ''
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk))
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk))
    const timer = setTimeout(() => child.kill('SIGKILL'), 60_000)
    child.once('error', reject)
    child.once('exit', (status) => {
      clearTimeout(timer)
      resolve({ status, stdout, stderr })
    })
  })
}

let admin: Admin

beforeAll(async () => {
  admin = createKafka({ brokers: [kafkaBrokers()], clientId: 'kwa-topics-test', logger }).admin()
  await admin.connect()
})

afterAll(async () => {
  await admin?.disconnect()
})

async function partitions(topic: string): Promise<number> {
  const [metadata] = (await admin.fetchTopicMetadata({ topics: [topic] })).topics
  return metadata?.partitions.length ?? 0
}

async function topicConfigs(topic: string): Promise<Record<string, string>> {
  const described = await admin.describeConfigs({
    includeSynonyms: false,
    resources: [{ type: 2, name: topic, configNames: ['cleanup.policy', 'retention.ms'] }],
  })
  return Object.fromEntries(
    (described.resources[0]?.configEntries ?? []).map((e) => [e.configName, e.configValue]),
  )
}

/** A deployment's topic names, with the options `kwa topics` takes for them. */
function deployment(name: string) {
  const input = uniqueTopic(`${name}-in`)
  const output = uniqueTopic(`${name}-out`)
  const late = uniqueTopic(`${name}-late`)
  const groupId = uniqueTopic(`${name}-group`)
  return {
    input,
    output,
    late,
    groupId,
    deadLetter: defaultDeadLetterTopic(input),
    changelog: defaultChangelogTopic(groupId),
    args: [
      '--input-topic',
      input,
      '--output-topic',
      output,
      '--late-topic',
      late,
      '--group-id',
      groupId,
    ],
  }
}

describe('kwa topics', () => {
  it('creates every topic with the right partitions and configs, and a re-run changes nothing', async () => {
    const d = deployment('provision')
    const first = await kwaTopics([
      ...d.args,
      '--partitions',
      '3',
      '--replication-factor',
      '1',
      '--retention',
      '2h',
    ])
    expect(first.status, first.stderr).toBe(0)
    const lines = first.stdout.trim().split('\n')
    expect(lines.map((l) => l.split(/\s+/).slice(0, 3))).toEqual([
      ['created', 'input', d.input],
      ['created', 'output', d.output],
      ['created', 'dead-letter', d.deadLetter],
      ['created', 'late', d.late],
      ['created', 'changelog', d.changelog],
    ])

    for (const topic of [d.input, d.output, d.deadLetter, d.late, d.changelog]) {
      expect(await partitions(topic), topic).toBe(3)
    }
    const twoHours = String(2 * 3_600_000)
    expect(await topicConfigs(d.changelog)).toMatchObject({ 'cleanup.policy': 'compact' })
    for (const topic of [d.output, d.deadLetter, d.late]) {
      expect(await topicConfigs(topic), topic).toEqual({
        'cleanup.policy': 'delete',
        'retention.ms': twoHours,
      })
    }
    // The input belongs to the producers: created with the broker's retention.
    expect((await topicConfigs(d.input))['retention.ms']).not.toBe(twoHours)

    // Idempotent: another run (another --partitions, another --retention) leaves all as it is.
    const again = await kwaTopics([...d.args, '--partitions', '5', '--retention', '1h'])
    expect(again.status, again.stderr).toBe(0)
    expect(again.stdout).not.toMatch(/^created/m)
    expect(again.stdout.trim().split('\n')).toHaveLength(5)
    expect(again.stdout).toMatch(/retention\.ms is 7200000, not 3600000: left as is/)
    for (const topic of [d.input, d.output, d.deadLetter, d.late, d.changelog]) {
      expect(await partitions(topic), topic).toBe(3)
    }
    expect((await topicConfigs(d.output))['retention.ms']).toBe(twoHours)
  })

  it('uses the partition count of an existing input; at least once has no changelog', async () => {
    const d = deployment('existing')
    await createTopic(kafkaBrokers(), d.input, 2)
    const result = await kwaTopics([...d.args, '--partitions', '7', '--delivery', 'at-least-once'])
    expect(result.status, result.stderr).toBe(0)
    expect(result.stdout).toMatch(new RegExp(`^exists +input +${d.input} +2 partitions`, 'm'))
    for (const topic of [d.output, d.deadLetter, d.late]) expect(await partitions(topic)).toBe(2)
    expect(await admin.listTopics()).not.toContain(d.changelog)
  })

  it('refuses a changelog with another partition count than the input (exit 2), creating nothing', async () => {
    const d = deployment('mismatch')
    await createTopic(kafkaBrokers(), d.input, 3)
    await createTopic(kafkaBrokers(), d.changelog, 2, { 'cleanup.policy': 'compact' })
    const result = await kwaTopics(d.args)
    expect(result.status).toBe(2)
    expect(result.stderr.trim().split('\n')).toHaveLength(1)
    expect(result.stderr).toMatch(
      new RegExp(
        `^kwa: changelog topic ${d.changelog} has 2 partitions but input topic ${d.input} has 3`,
      ),
    )
    const topics = await admin.listTopics()
    expect(topics).not.toContain(d.output)
    expect(topics).not.toContain(d.deadLetter)
  })

  it('refuses a changelog that is not compacted (exit 2)', async () => {
    const d = deployment('delete-policy')
    await createTopic(kafkaBrokers(), d.input, 2)
    await createTopic(kafkaBrokers(), d.changelog, 2)
    const result = await kwaTopics(d.args)
    expect(result.status).toBe(2)
    expect(result.stderr).toMatch(/has cleanup\.policy=delete: it must be compact/)
  })
})

describe('kwa run --create-topics false', () => {
  const config = (d: ReturnType<typeof deployment>): ServiceConfig => ({
    brokers: [kafkaBrokers()],
    clientId: 'kwa-topics-test',
    groupId: d.groupId,
    inputTopic: d.input,
    outputTopic: d.output,
    lateTopic: d.late,
    window: { sizeMs: 1_000, advanceMs: 1_000, graceMs: 0 },
    sessionTimeoutMs: 10_000,
    statsIntervalMs: 0,
    createTopics: false,
  })

  it('only checks: refuses missing topics, runs once they exist', async () => {
    const d = deployment('check')
    await createTopic(kafkaBrokers(), d.input, 2)

    const refused = new AggregatorService(config(d), logger)
    const error: unknown = await refused.start().then(
      () => undefined,
      (e: unknown) => e,
    )
    await refused.stop()
    expect(isTopicError(error)).toBe(true)
    expect(String(error)).toContain(
      `missing topics: ${d.output} (output), ${d.deadLetter} (dead-letter), ${d.late} (late), ${d.changelog} (changelog)`,
    )
    expect(await admin.listTopics()).not.toContain(d.output) // nothing created

    expect((await kwaTopics(d.args)).status).toBe(0)
    const service = new AggregatorService(config(d), logger)
    try {
      await service.start()
    } finally {
      await service.stop()
    }
  })

  it('refuses a missing input topic, creating or not', async () => {
    const d = deployment('no-input')
    const plan = { input: d.input, output: d.output, deadLetter: d.deadLetter }
    for (const create of [false, true]) {
      await expect(provisionTopics(admin, plan, { create })).rejects.toThrow(
        `input topic ${d.input} not found`,
      )
    }
    expect(await admin.listTopics()).not.toContain(d.output)
  })
})
