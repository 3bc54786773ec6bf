import { describe, expect, it } from 'vitest'
import {
  ChangelogError,
  ChangelogState,
  changelogRecords,
  positionRecord,
} from '../consumer/changelog'
import type { ClosedWindows, WindowStates } from '../consumer/native'

const states = (
  rows: [string, number, number, number, number, number, number, number][],
): WindowStates => ({
  seriesKeys: rows.map((r) => r[0]),
  windowStart: Float64Array.from(rows.map((r) => r[1])),
  count: Float64Array.from(rows.map((r) => r[2])),
  sum: Float64Array.from(rows.map((r) => r[3])),
  compensation: Float64Array.from(rows.map((r) => r[4])),
  min: Float64Array.from(rows.map((r) => r[5])),
  max: Float64Array.from(rows.map((r) => r[6])),
  firstOffset: Float64Array.from(rows.map((r) => r[7])),
})

const closed = (rows: [string, number][]): ClosedWindows => ({
  seriesKeys: rows.map((r) => r[0]),
  windowStart: Float64Array.from(rows.map((r) => r[1])),
  windowEnd: Float64Array.from(rows.map((r) => r[1] + 10)),
  count: new Float64Array(rows.length).fill(1),
  sum: new Float64Array(rows.length),
  mean: new Float64Array(rows.length),
  min: new Float64Array(rows.length),
  max: new Float64Array(rows.length),
  quantiles: new Float64Array(0),
})

describe('changelog records', () => {
  it('fold into the latest state the way compaction keeps it', () => {
    const log = new ChangelogState()
    const apply = (records: ReturnType<typeof changelogRecords>) =>
      records.forEach((r) => log.fold(r.key, r.value))
    apply(
      changelogRecords(
        states([
          ['a', 0, 1, 1.5, 0, 1.5, 1.5, 7],
          ['ü/b', -10, 2, 3, 1e-17, 1, 2, 8],
        ]),
        closed([]),
        5,
        0,
        100,
      ),
    )
    apply(
      changelogRecords(
        states([
          ['a', 0, 2, 4, -1e-16, 1.5, 2.5, 7],
          ['a', 10, 1, 9, 0, 9, 9, 9],
        ]),
        closed([['ü/b', -10]]),
        12,
        0,
        107,
      ),
    )
    const restored = log.toRestoredState()
    expect(restored.streamTime).toBe(12)
    expect(restored.nextOffset).toBe('107')
    expect(restored.records).toBe(7)
    const rows = restored.states.seriesKeys.map((key, i) => [
      key,
      restored.states.windowStart[i],
      restored.states.count[i],
      restored.states.sum[i],
      restored.states.compensation[i],
      restored.states.min[i],
      restored.states.max[i],
      restored.states.firstOffset[i],
    ])
    expect(rows).toEqual([
      ['a', 0, 2, 4, -1e-16, 1.5, 2.5, 7],
      ['a', 10, 1, 9, 0, 9, 9, 9],
    ])
  })

  it('key window starts as big-endian int64, negative and beyond 32 bits included', () => {
    const starts = [
      0,
      -1,
      -10,
      2 ** 32,
      -(2 ** 32) - 1,
      1_700_000_000_000,
      2 ** 53 - 1,
      -(2 ** 53 - 1),
    ]
    const records = changelogRecords(
      states(starts.map((start) => ['k', start, 1, 1, 0, 1, 1, 0])),
      closed([]),
      null,
      3,
      0,
    ).filter((r) => r.key[0] === 0x57)
    expect(records.map((r) => r.key.readBigInt64BE(1))).toEqual(starts.map((s) => BigInt(s)))
    expect(records.map((r) => r.partition)).toEqual(starts.map(() => 3))
  })

  it('leave out windows closed at the stream time (their tombstone compacted away mid-read)', () => {
    const log = new ChangelogState()
    const records = changelogRecords(
      states([
        ['a', 0, 1, 1, 0, 1, 1, 0],
        ['a', 10, 1, 1, 0, 1, 1, 1],
        ['b', 20, 1, 1, 0, 1, 1, 2],
      ]),
      // Several batches' closed windows in one transaction.
      [closed([]), closed([['c', -10]])],
      // Window [10, 20) closes at stream time 20 + grace 5.
      25,
      0,
      3,
    )
    records.forEach((r) => log.fold(r.key, r.value))
    const restored = log.toRestoredState({ sizeMs: 10, graceMs: 5 })
    expect(restored.states.seriesKeys).toEqual(['b'])
    expect([...restored.states.windowStart]).toEqual([20])
    expect(log.records).toBe(5)
  })

  it('restore nothing from an empty changelog', () => {
    const restored = new ChangelogState().toRestoredState()
    expect(restored.streamTime).toBeNull()
    expect(restored.nextOffset).toBeNull()
    expect(restored.states.seriesKeys).toEqual([])
  })

  it('record the position of every transaction, even one that changed no window', () => {
    const log = new ChangelogState()
    const records = changelogRecords(null, null, null, 2, 42)
    expect(records).toHaveLength(1)
    records.forEach((r) => log.fold(r.key, r.value))
    expect(log.toRestoredState()).toMatchObject({ streamTime: null, nextOffset: '42' })
  })

  it('read the snapshot start of a position: absolute, the record itself, or unknown', () => {
    const at = (snapshotStart: number | null, offset: number) => {
      const log = new ChangelogState()
      const record = positionRecord(7, 0, 42, snapshotStart)
      log.fold(record.key, record.value, offset)
      return log.toRestoredState()
    }
    expect(at(1000, 1500)).toMatchObject({ streamTime: 7, nextOffset: '42', snapshotStart: 1000n })
    expect(at(-1, 1500).snapshotStart).toBe(1500n)
    expect(at(null, 1500).snapshotStart).toBeUndefined()
    // A version 2 position (before snapshots) has none either.
    const v2 = Buffer.alloc(17)
    v2[0] = 2
    v2.writeDoubleLE(7, 1)
    v2.writeDoubleLE(42, 9)
    const log = new ChangelogState()
    log.fold(Buffer.from('T'), v2, 10)
    expect(log.toRestoredState()).toMatchObject({ streamTime: 7, nextOffset: '42' })
    expect(log.snapshotStart).toBeNull()
  })

  it('read the stream time of a version 1 position (no offset: kwa before 0.2)', () => {
    const log = new ChangelogState()
    const value = Buffer.alloc(9)
    value[0] = 1
    value.writeDoubleLE(1234, 1)
    log.fold(Buffer.from('T'), value)
    expect(log.toRestoredState()).toMatchObject({ streamTime: 1234, nextOffset: null })
  })

  it('refuse records of another format', () => {
    const log = new ChangelogState()
    expect(() => log.fold(Buffer.from('X1'), Buffer.from([1]))).toThrow(ChangelogError)
    expect(() => log.fold(Buffer.from('T'), Buffer.from([3, 0, 0, 0, 0, 0, 0, 0, 0]))).toThrow(
      /unknown format/,
    )
    const negative = Buffer.alloc(17)
    negative[0] = 2
    negative.writeDoubleLE(-1, 9)
    expect(() => log.fold(Buffer.from('T'), negative)).toThrow(/invalid offset/)
    expect(() => log.fold(null, null)).toThrow(/without a key/)
  })
})
