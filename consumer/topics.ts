import type { Admin } from 'kafkajs'
import { KwaError } from './errors'

/** Topic provisioning: what the service creates when missing and what it refuses to run with. */

/** Creates side topics (dead-letter, late) that are missing, with the input's partition count. */
export async function ensureTopics(
  admin: Admin,
  inputTopic: string,
  topics: string[],
): Promise<void> {
  const existing = new Set(await admin.listTopics())
  const missing = topics.filter((t) => !existing.has(t))
  if (missing.length === 0) return
  const metadata = await admin.fetchTopicMetadata({ topics: [inputTopic] })
  const numPartitions = metadata.topics[0]?.partitions.length ?? 1
  await admin.createTopics({
    waitForLeaders: true,
    topics: missing.map((topic) => ({ topic, numPartitions })),
  })
}

/**
 * Creates the changelog topic when missing: compacted, with the input's partition count. Refuses
 * to go on when an existing one has another partition count or is not compacted.
 */
export async function ensureChangelogTopic(
  admin: Admin,
  inputTopic: string,
  changelogTopic: string,
): Promise<void> {
  const metadata = await admin.fetchTopicMetadata({ topics: [inputTopic] })
  const partitions = metadata.topics[0]?.partitions.length ?? 0
  if (partitions === 0) throw new KwaError(`input topic ${inputTopic} not found`)
  const existing = await admin.listTopics()
  if (!existing.includes(changelogTopic)) {
    await admin.createTopics({
      waitForLeaders: true,
      topics: [
        {
          topic: changelogTopic,
          numPartitions: partitions,
          configEntries: [{ name: 'cleanup.policy', value: 'compact' }],
        },
      ],
    })
    return
  }
  const [changelog] = (await admin.fetchTopicMetadata({ topics: [changelogTopic] })).topics
  const count = changelog?.partitions.length ?? 0
  if (count !== partitions) {
    throw new KwaError(
      `changelog topic ${changelogTopic} has ${count} partitions but input topic ${inputTopic} has ${partitions}: ` +
        'they must match (co-partitioned); delete the changelog topic or use another --changelog-topic',
    )
  }
  const configs = await admin.describeConfigs({
    includeSynonyms: false,
    resources: [{ type: 2 /* TOPIC */, name: changelogTopic, configNames: ['cleanup.policy'] }],
  })
  const policy = configs.resources[0]?.configEntries.find(
    (e) => e.configName === 'cleanup.policy',
  )?.configValue
  if (policy === undefined || !policy.split(',').includes('compact')) {
    throw new KwaError(
      `changelog topic ${changelogTopic} has cleanup.policy=${policy}: it must be compact`,
    )
  }
}
