/**
 * Restores read from the last snapshot on a real broker (consumer/changelog.ts, "Snapshots"):
 * the reader finds the last committed position record (also behind an aborted transaction at the
 * partition's end) and folds only the records from the snapshot it names.
 */
import { describe, expect, it } from 'vitest'
import {
  ChangelogReader,
  positionRecord,
  windowRecords,
  type ChangelogRecord,
} from '../../consumer/changelog'
import { createKafka } from '../../consumer/kafka'
import { createLogger } from '../../consumer/logger'
import type { WindowStates } from '../../consumer/native'
import { PartitionTransactor } from '../../consumer/transactions'
import { createTopic, kafkaBrokers, uniqueTopic } from '../helpers/kafka'

const logger = createLogger('silent')

const windows = (rows: [string, number][]): WindowStates => ({
  seriesKeys: rows.map((r) => r[0]),
  windowStart: new Float64Array(rows.length),
  count: Float64Array.from(rows.map((r) => r[1])),
  sum: Float64Array.from(rows.map((r) => r[1])),
  compensation: new Float64Array(rows.length),
  min: new Float64Array(rows.length).fill(1),
  max: new Float64Array(rows.length).fill(1),
  firstOffset: new Float64Array(rows.length),
})

describe('changelog restore from the last snapshot', () => {
  it('reads from the snapshot the last committed position names, past an aborted tail', async () => {
    const topic = uniqueTopic('snapshot')
    await createTopic(kafkaBrokers(), topic, 1, { 'cleanup.policy': 'compact' })
    const kafka = createKafka({ brokers: [kafkaBrokers()], clientId: 'snapshot-test', logger })
    const writer = new PartitionTransactor(kafka, `${topic}.tx`, logger, 1)
    const commit = (
      records: ChangelogRecord[],
      last?: (first: bigint | undefined) => ChangelogRecord,
    ) =>
      writer.commit({
        records: [{ topic, messages: records }],
        offsets: { consumerGroupId: `${topic}.group`, topic, partition: 0, offset: '1' },
        track: { topic, partition: 0 },
        last,
      })
    await writer.connect()
    const reader = new ChangelogReader(kafka, topic, uniqueTopic('restore'), logger)
    try {
      // Before the snapshot: windows a and b (b closes before the snapshot, without a tombstone
      // here: a restore from the snapshot must not see it at all).
      await commit([
        ...windowRecords(
          windows([
            ['a', 1],
            ['b', 1],
          ]),
          null,
          0,
        ),
        positionRecord(10, 0, 100, null),
      ])
      // The snapshot: every open window; its position names its first record.
      const snapshot = await commit(
        windowRecords(
          windows([
            ['a', 2],
            ['c', 1],
          ]),
          null,
          0,
        ),
        (first) => positionRecord(20, 0, 200, first === undefined ? -1 : Number(first)),
      )
      expect(snapshot.firstTracked).toBeDefined()
      // After it: c changes.
      await commit([
        ...windowRecords(windows([['c', 5]]), null, 0),
        positionRecord(30, 0, 300, Number(snapshot.firstTracked)),
      ])
      // An aborted transaction at the end (an owner fenced mid-commit).
      const zombie = kafka.producer({ transactionalId: `${topic}.tx`, idempotent: true })
      await zombie.connect()
      const aborted = await zombie.transaction()
      await aborted.send({
        topic,
        messages: [
          ...windowRecords(windows([['ghost', 9]]), null, 0),
          positionRecord(99, 0, 999, 0),
        ],
      })
      await aborted.abort()
      await zombie.disconnect()

      await reader.start()
      const restored = await reader.restore(0, 30_000)
      expect(restored.nextOffset).toBe('300')
      expect(restored.streamTime).toBe(30)
      expect(restored.snapshotStart).toBe(snapshot.firstTracked)
      expect(restored.states.seriesKeys.sort()).toEqual(['a', 'c'])
      // The snapshot's 3 records and the 2 after it; nothing from before it.
      expect(restored.records).toBe(5)
    } finally {
      await Promise.all([reader.stop(), writer.disconnect()])
    }
  }, 60_000)
})
