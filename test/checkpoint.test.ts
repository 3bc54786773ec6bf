import { describe, expect, it } from 'vitest'
import { decodeCheckpoint, encodeCheckpoint, type Checkpoint } from '../consumer/checkpoint'
import { CheckpointError } from '../consumer/errors'
import { PartitionAggregator } from '../consumer/native'

describe('checkpoint metadata', () => {
  const checkpoints: Checkpoint[] = [
    { streamTime: null, processedUpTo: 0 },
    { streamTime: 0, processedUpTo: 1 },
    { streamTime: 1_700_000_000_123, processedUpTo: 123_456_789 },
    { streamTime: Number.MAX_SAFE_INTEGER, processedUpTo: Number.MAX_SAFE_INTEGER },
  ]

  it.each(checkpoints)('round-trips %j', (checkpoint) => {
    const metadata = encodeCheckpoint(checkpoint)
    expect(decodeCheckpoint(metadata)).toEqual(checkpoint)
    // Kafka keeps at most 4 KiB of commit metadata by default.
    expect(Buffer.byteLength(metadata)).toBeLessThan(4096)
  })

  it.each([null, undefined, ''])('no metadata (%j) means no checkpoint', (metadata) => {
    expect(decodeCheckpoint(metadata)).toBeNull()
  })

  it('a decoded stream time restores an aggregator', () => {
    const checkpoint = decodeCheckpoint(
      encodeCheckpoint({ streamTime: 1_700_000_000_000, processedUpTo: 42 }),
    )
    const aggregator = new PartitionAggregator({
      sizeMs: 1000,
      streamTime: checkpoint?.streamTime ?? undefined,
    })
    expect(aggregator.streamTime).toBe(1_700_000_000_000)
    aggregator.free()
  })

  const foreign = [
    'hello',
    'consumer-x committed this',
    '{',
    '42',
    'true',
    '"text"',
    'null',
    '[]',
    '{}',
    '{"offset":5}',
    '{"v":2,"streamTime":1,"processedUpTo":2}',
    '{"v":"1","streamTime":1,"processedUpTo":2}',
    '{"v":1,"processedUpTo":2}',
    '{"v":1,"streamTime":1}',
    '{"v":1,"streamTime":1.5,"processedUpTo":2}',
    '{"v":1,"streamTime":1,"processedUpTo":"2"}',
    '{"v":1,"streamTime":1,"processedUpTo":1e300}',
    '{"v":1,"streamTime":-1,"processedUpTo":2}',
    '{"v":1,"streamTime":1,"processedUpTo":-2}',
  ]

  it.each(foreign)('foreign metadata %j throws a CheckpointError quoting it', (metadata) => {
    expect(() => decodeCheckpoint(metadata)).toThrow(CheckpointError)
    expect(() => decodeCheckpoint(metadata)).toThrow(metadata)
  })

  it('a CheckpointError is not retriable', () => {
    try {
      decodeCheckpoint('hello')
      expect.unreachable()
    } catch (error) {
      expect(error).toBeInstanceOf(CheckpointError)
      expect((error as CheckpointError).retriable).toBe(false)
    }
  })
})
