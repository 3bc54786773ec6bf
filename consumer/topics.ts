import type { Admin, ITopicConfig } from 'kafkajs'
import { aclResource, asAuthorizationError, KwaError, type AclNeed } from './errors'
import type { Logger } from './logger'
import { isTransientBrokerError, retryWithBackoff, START_RETRY_BOUND_MS } from './retry'

/**
 * Topic provisioning: `kwa topics` creates every topic of a deployment; `kwa run` creates the
 * ones it writes when missing (or, with `--create-topics false`, only checks them). Either way a
 * changelog topic that cannot hold the state (another partition count than the input, or not
 * compacted) is refused before anything is created.
 */

export type TopicRole = 'input' | 'output' | 'dead-letter' | 'late' | 'changelog'

/** The topics of one deployment. */
export interface TopicPlan {
  input: string
  output: string
  deadLetter: string
  /** Only when late samples are published. */
  late?: string
  /** Exactly once only: the compacted window-state topic, co-partitioned with the input. */
  changelog?: string
  /**
   * The window geometry, when known (`kwa run`): a changelog that deletes records sooner than a
   * window can stay open is refused.
   */
  window?: { sizeMs: number; graceMs: number }
}

export interface ProvisionOptions {
  /** Create missing topics (true) or only check that they exist (false). */
  create: boolean
  /** Create a missing input topic with this many partitions; undefined: the input must exist. */
  inputPartitions?: number
  /** Replicas of each topic created; undefined: the broker's `default.replication.factor`. */
  replicationFactor?: number
  /** `retention.ms` of the output, dead-letter and late topics created; undefined: the broker's. */
  retentionMs?: number
  /**
   * Describe every topic afterwards (partitions, configs, differences from what was asked) for
   * the result. Needs DescribeConfigs on all of them: `kwa topics` asks for it, `kwa run` does
   * not (a replica may only write to its output), and then gets an empty result.
   */
  report?: boolean
  /** Logs each topic created and each existing topic whose retention differs from the one asked. */
  log?: Logger
  /** How long to retry transient broker errors; default START_RETRY_BOUND_MS. */
  retryBoundMs?: number
}

/** What provisioning found or did, per topic. */
export interface TopicStatus {
  topic: string
  role: TopicRole
  partitions: number
  created: boolean
  /** Topic configs that matter here (cleanup.policy, retention.ms), as the broker reports them. */
  configs: Record<string, string>
  /** Differences from what was asked that provisioning leaves alone (e.g. another retention). */
  notes: string[]
}

/**
 * A topic the service cannot run with: missing (and not to be created), or a changelog that does
 * not match the input. Not retriable: an operator must act (the CLI exits with code 2).
 */
export class TopicError extends KwaError {
  constructor(
    readonly topic: string,
    message: string,
  ) {
    super(message)
  }
}

export const isTopicError = (error: unknown): error is TopicError => error instanceof TopicError

const TOPIC_RESOURCE = 2 // ConfigResourceTypes.TOPIC (a const enum in kafkajs' typings)
/**
 * What a changelog is created with, so that compaction keeps up and a restore reads about the
 * open windows, not the topic's history (docs/OPERATIONS.md, "The changelog topic"). Kafka never
 * compacts the active segment, so it rolls every minute (or 64 MiB); the cleaner takes a log once
 * a tenth of it is dirty; a closed window's tombstone stays a minute after it was compacted (a
 * restore that misses a tombstone still drops the window: its end is before the restored stream
 * time minus grace).
 */
export const CHANGELOG_CONFIGS: Readonly<Record<string, string>> = {
  'cleanup.policy': 'compact',
  'segment.ms': String(60_000),
  'segment.bytes': String(64 * 1024 * 1024),
  'min.cleanable.dirty.ratio': '0.1',
  'delete.retention.ms': String(60_000),
}

/** Beyond these, an existing changelog works but restores read much more than the open windows. */
const SLOW_RESTORE_LIMITS: Record<string, number> = {
  'segment.ms': 3_600_000,
  'segment.bytes': 256 * 1024 * 1024,
  'min.cleanable.dirty.ratio': 0.5,
  'delete.retention.ms': 3_600_000,
}

const CHECKED_CONFIGS = [
  'cleanup.policy',
  'retention.ms',
  'segment.ms',
  'segment.bytes',
  'min.cleanable.dirty.ratio',
  'delete.retention.ms',
]

/**
 * Makes sure every topic of `plan` exists (creating the missing ones when `options.create`) and
 * that an existing changelog has the input's partition count and `cleanup.policy=compact`.
 * Idempotent: existing topics are left as they are. Created topics get the input's partition
 * count; concurrent callers (replicas starting together) are fine. Returns the status of every
 * topic with `options.report`, else nothing.
 */
export async function provisionTopics(
  admin: Admin,
  plan: TopicPlan,
  options: ProvisionOptions,
): Promise<TopicStatus[]> {
  /** Missing when we looked, so created by this call (or, racing, by another at the same time). */
  const created = new Set<string>()
  // Every attempt starts from what exists now, so a retry creates only what is still missing.
  return retryWithBackoff(() => provisionOnce(admin, plan, options, created), {
    what: 'provisioning topics',
    boundMs: options.retryBoundMs ?? START_RETRY_BOUND_MS,
    log: options.log,
  })
}

async function provisionOnce(
  admin: Admin,
  plan: TopicPlan,
  options: ProvisionOptions,
  created: Set<string>,
): Promise<TopicStatus[]> {
  const existing = new Set(await admin.listTopics())
  if (!existing.has(plan.input)) await checkVisible(admin, [[plan.input, 'input']], options)

  if (!existing.has(plan.input)) {
    if (!options.create || options.inputPartitions === undefined) {
      throw new TopicError(
        plan.input,
        `input topic ${plan.input} not found: create it (kwa topics --partitions N) or check --input-topic`,
      )
    }
    await createTopics(admin, [topicSpec(plan.input, 'input', options.inputPartitions, options)])
    created.add(plan.input)
    options.log?.info(
      { topic: plan.input, role: 'input', partitions: options.inputPartitions },
      'created topic',
    )
  }
  const inputPartitions = await partitionCount(admin, plan.input)

  // One entry per topic name (the output may be the dead-letter topic, in tests even the input).
  const wanted = new Map<string, TopicRole>()
  const roles: [string | undefined, TopicRole][] = [
    [plan.output, 'output'],
    [plan.deadLetter, 'dead-letter'],
    [plan.late, 'late'],
    [plan.changelog, 'changelog'],
  ]
  for (const [topic, role] of roles) {
    if (topic !== undefined && topic !== plan.input && !wanted.has(topic)) wanted.set(topic, role)
  }

  // Refuse a bad changelog before creating anything.
  if (plan.changelog !== undefined && existing.has(plan.changelog)) {
    await checkChangelog(admin, plan, plan.changelog, inputPartitions, options.log)
  }

  const missing = [...wanted].filter(([topic]) => !existing.has(topic))
  await checkVisible(admin, missing, options)
  if (missing.length > 0 && !options.create) {
    throw new TopicError(
      missing[0]?.[0] ?? '',
      `missing topics: ${missing.map(([topic, role]) => `${topic} (${role})`).join(', ')}; ` +
        'create them (kwa topics) or run with --create-topics true',
    )
  }
  if (missing.length > 0) {
    const specs = missing.map(([topic, role]) => topicSpec(topic, role, inputPartitions, options))
    await createTopics(admin, specs)
    for (const [topic, role] of missing) {
      created.add(topic)
      options.log?.info({ topic, role, partitions: inputPartitions }, 'created topic')
    }
    // A create that timed out may or may not have happened: look again before going on.
    const now = new Set(await admin.listTopics())
    const absent = missing.filter(([topic]) => !now.has(topic)).map(([topic]) => topic)
    if (absent.length > 0) {
      throw new KwaError(`topics not visible after creating them: ${absent.join(', ')}`, {
        retriable: true,
      })
    }
    // Another replica may have created the changelog at the same moment: check what is there.
    if (plan.changelog !== undefined && missing.some(([topic]) => topic === plan.changelog)) {
      await checkChangelog(admin, plan, plan.changelog, inputPartitions, options.log)
    }
  }

  if (options.report !== true) return []
  const all: [string, TopicRole][] = [[plan.input, 'input'], ...wanted]
  const configs = await describeTopicConfigs(
    admin,
    all.map(([topic]) => topic),
  )
  const statuses: TopicStatus[] = []
  for (const [topic, role] of all) {
    const status: TopicStatus = {
      topic,
      role,
      partitions: topic === plan.input ? inputPartitions : await partitionCount(admin, topic),
      created: created.has(topic),
      configs: configs.get(topic) ?? {},
      notes: [],
    }
    const retention = status.configs['retention.ms']
    if (
      !status.created &&
      hasRetention(role) &&
      options.retentionMs !== undefined &&
      retention !== undefined &&
      retention !== String(options.retentionMs)
    ) {
      status.notes.push(
        `retention.ms is ${retention}, not ${options.retentionMs}: left as is ` +
          '(kafka-configs --alter --add-config retention.ms=... to change it)',
      )
      options.log?.warn(
        { topic, role, retentionMs: retention },
        'existing topic kept its retention',
      )
    }
    statuses.push(status)
  }
  return statuses
}

/** What a replica does with a topic of each role, and the ACL operations that takes. */
const roleAccess: Record<TopicRole, { doing: string; operation: string }> = {
  input: { doing: 'read', operation: 'Read' },
  output: { doing: 'write to', operation: 'Write' },
  'dead-letter': { doing: 'write to', operation: 'Write' },
  late: { doing: 'write to', operation: 'Write' },
  changelog: { doing: 'read and write', operation: 'Read, Write and DescribeConfigs' },
}

/**
 * A topic listTopics leaves out may be missing, or there but hidden from this principal: the
 * broker lists only the topics it may Describe (which Read and Write include). Asked by name, it
 * answers TOPIC_AUTHORIZATION_FAILED for those (whether they exist or not), UNKNOWN_TOPIC for the
 * missing ones. A refusal is thrown naming the ACL the topic's role needs (a replica's access, or
 * Describe for `kwa topics`, which only creates and describes).
 */
async function checkVisible(
  admin: Admin,
  topics: [string, TopicRole][],
  options: ProvisionOptions,
): Promise<void> {
  for (const [topic, role] of topics) {
    const error: unknown = await admin.fetchTopicMetadata({ topics: [topic] }).then(
      () => undefined,
      (e: unknown) => e,
    )
    const { doing, operation } =
      options.report === true ? { doing: 'describe', operation: 'Describe' } : roleAccess[role]
    const refused = asAuthorizationError(error, `${doing} the ${role} topic ${topic}`, {
      topic: { operation, resource: aclResource.topic(topic) },
    })
    if (refused !== undefined) throw refused
  }
}

const hasRetention = (role: TopicRole) =>
  role === 'output' || role === 'dead-letter' || role === 'late'

function topicSpec(
  topic: string,
  role: TopicRole,
  numPartitions: number,
  options: ProvisionOptions,
): ITopicConfig {
  const configEntries: { name: string; value: string }[] = []
  if (role === 'changelog') {
    for (const [name, value] of Object.entries(CHANGELOG_CONFIGS))
      configEntries.push({ name, value })
  }
  if (hasRetention(role) && options.retentionMs !== undefined) {
    configEntries.push({ name: 'retention.ms', value: String(options.retentionMs) })
  }
  return {
    topic,
    numPartitions,
    ...(options.replicationFactor !== undefined && {
      replicationFactor: options.replicationFactor,
    }),
    ...(configEntries.length > 0 && { configEntries }),
  }
}

/**
 * Topics another client created meanwhile are fine: kafkajs resolves false when all of them
 * exist, but throws when only some do while others failed (replicas starting together on a busy
 * controller). Then the failures decide: transient ones are retried by the caller.
 */
async function createTopics(admin: Admin, topics: ITopicConfig[]): Promise<void> {
  try {
    await admin.createTopics({ waitForLeaders: true, topics })
  } catch (error) {
    const errors = (error as { errors?: unknown } | null)?.errors
    if (!Array.isArray(errors)) throw error
    const failures = errors.filter(
      (e) => (e as { type?: unknown } | null)?.type !== 'TOPIC_ALREADY_EXISTS',
    )
    if (failures.length === 0) return
    for (const failure of failures) {
      const { topic } = (failure ?? {}) as { topic?: unknown }
      const name = typeof topic === 'string' ? topic : topics.map((t) => t.topic).join(', ')
      const refused = asAuthorizationError(failure, `create topic ${name}`, {
        topic: createNeed(name),
        cluster: createNeed(name),
      })
      if (refused !== undefined) throw refused
    }
    if (failures.every(isTransientBrokerError)) {
      throw new KwaError(`creating topics failed: ${failures.map(describeFailure).join('; ')}`, {
        retriable: true,
        cause: error,
      })
    }
    throw error
  }
}

/** Creating a topic takes Create on it (least privilege) or on the whole cluster. */
const createNeed = (topic: string): AclNeed => ({
  operation: 'Create',
  resource: `${aclResource.topic(topic)} (or on the cluster)`,
})

const describeFailure = (error: unknown): string => {
  const { topic, message } = (error ?? {}) as { topic?: unknown; message?: unknown }
  return `${typeof topic === 'string' ? `${topic}: ` : ''}${String(message)}`
}

/**
 * Partitions of an existing topic. Only for topics listTopics returned: a metadata request for an
 * unknown topic may auto-create it on a broker that allows that.
 */
async function partitionCount(admin: Admin, topic: string): Promise<number> {
  const metadata = await admin.fetchTopicMetadata({ topics: [topic] })
  return metadata.topics.find((t) => t.name === topic)?.partitions.length ?? 0
}

/** One request per topic: the broker's refusal does not say which topic it is about. */
async function describeTopicConfigs(
  admin: Admin,
  topics: string[],
): Promise<Map<string, Record<string, string>>> {
  const byTopic = new Map<string, Record<string, string>>()
  for (const name of new Set(topics)) {
    const described = await admin
      .describeConfigs({
        includeSynonyms: false,
        resources: [{ type: TOPIC_RESOURCE, name, configNames: CHECKED_CONFIGS }],
      })
      .catch((error: unknown) => {
        throw (
          asAuthorizationError(error, `read the configuration of topic ${name}`, {
            topic: { operation: 'DescribeConfigs', resource: aclResource.topic(name) },
          }) ?? error
        )
      })
    for (const resource of described.resources) {
      const configs: Record<string, string> = {}
      for (const entry of resource.configEntries) configs[entry.configName] = entry.configValue
      byTopic.set(resource.resourceName, configs)
    }
  }
  return byTopic
}

/**
 * The changelog must be co-partitioned with the input and compacted, and must not delete records
 * of windows that are still open, or state would be lost: refused. Settings that only make
 * restores slow (segments that roll late, a lazy cleaner, long-kept tombstones) are logged.
 */
async function checkChangelog(
  admin: Admin,
  plan: TopicPlan,
  changelog: string,
  inputPartitions: number,
  log: Logger | undefined,
): Promise<void> {
  const count = await partitionCount(admin, changelog)
  if (count !== inputPartitions) {
    throw new TopicError(
      changelog,
      `changelog topic ${changelog} has ${count} partitions but input topic ${plan.input} has ${inputPartitions}: ` +
        'they must match (co-partitioned); delete the changelog topic (its state is lost: see ' +
        'docs/OPERATIONS.md) or use another --changelog-topic',
    )
  }
  const configs = (await describeTopicConfigs(admin, [changelog])).get(changelog) ?? {}
  const policy = configs['cleanup.policy']
  const alter = `kafka-configs --alter --entity-type topics --entity-name ${changelog} --add-config`
  if (policy === undefined || !policy.split(',').includes('compact')) {
    throw new TopicError(
      changelog,
      `changelog topic ${changelog} has cleanup.policy=${policy}: it must be compact ` +
        `(${alter} cleanup.policy=compact)`,
    )
  }
  const retention = Number(configs['retention.ms'] ?? -1)
  if (policy.split(',').includes('delete') && retention >= 0 && plan.window !== undefined) {
    const open = plan.window.sizeMs + plan.window.graceMs
    if (retention < open) {
      throw new TopicError(
        changelog,
        `changelog topic ${changelog} has cleanup.policy=${policy} with retention.ms=${retention}, ` +
          `shorter than a window stays open (window size + grace = ${open} ms): open windows ` +
          `would be deleted. Use cleanup.policy=compact (${alter} cleanup.policy=compact)`,
      )
    }
    log?.warn(
      { topic: changelog, policy, retentionMs: retention },
      'changelog deletes records after retention.ms: a window that gets no sample for that long ' +
        '(input stopped) loses its state; cleanup.policy=compact keeps it',
    )
  }
  for (const [name, limit] of Object.entries(SLOW_RESTORE_LIMITS)) {
    const value = Number(configs[name])
    if (configs[name] !== undefined && Number.isFinite(value) && value > limit) {
      log?.warn(
        {
          topic: changelog,
          config: name,
          value: configs[name],
          recommended: CHANGELOG_CONFIGS[name],
        },
        `changelog ${name} makes restores read far more than the open windows ` +
          `(${alter} ${name}=${CHANGELOG_CONFIGS[name]})`,
      )
    }
  }
}
