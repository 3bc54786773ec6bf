/**
 * The fence a new owner relies on, on a real broker: once PartitionTransactor.connect() returns,
 * the previous producer of the same transactional id can commit nothing more, and a transaction
 * it had open is gone. (kafkajs 2.2.4's producer.connect() alone does not fence: it asks for a
 * producer id without the transactional id. Two chaos scenarios duplicated windows because of it.)
 */
import { describe, expect, it } from 'vitest'
import { createKafka } from '../../consumer/kafka'
import { createLogger } from '../../consumer/logger'
import { FencedError, PartitionTransactor } from '../../consumer/transactions'
import { createTopic, kafkaBrokers, readAll, uniqueTopic } from '../helpers/kafka'

const logger = createLogger('silent')

describe('PartitionTransactor.connect on a real broker', () => {
  it('fences the previous producer of the transactional id', async () => {
    const topic = uniqueTopic('fence')
    await createTopic(kafkaBrokers(), topic, 1)
    const kafka = createKafka({ brokers: [kafkaBrokers()], clientId: 'fence-test', logger })
    const id = `${topic}.tx`
    const previous = new PartitionTransactor(kafka, id, logger, 1)
    const next = new PartitionTransactor(kafka, id, logger, 1)
    const content = (value: string) => ({
      records: [{ topic, messages: [{ key: 'k', value, partition: 0 }] }],
      offsets: { consumerGroupId: `${topic}.group`, topic, partition: 0, offset: '1' },
    })
    try {
      await previous.connect()
      await previous.commit(content('before the fence'))
      await next.connect()
      // The previous owner's next transaction must fail as fenced, before anything commits.
      await expect(previous.commit(content('after the fence'))).rejects.toBeInstanceOf(FencedError)
      await next.commit(content('new owner'))
      const values = (await readAll(kafkaBrokers(), topic)).map((m) => m.value?.toString())
      expect(values).toEqual(['before the fence', 'new owner'])
    } finally {
      await Promise.all([previous.disconnect(), next.disconnect()])
    }
  })
})
