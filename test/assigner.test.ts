import { AssignerProtocol } from 'kafkajs'
import { describe, expect, it } from 'vitest'
import { decodeOwned, encodeOwned, stickyAssigner, stickyAssignment } from '../consumer/assigner'
import { mulberry32 } from './reference'

const topic = 'in'
const partitions = (n: number) =>
  Array.from({ length: n }, (_, partition) => ({ topic, partition }))
const held = (assignment: Map<string, { partition: number }[]>) =>
  Object.fromEntries([...assignment].map(([m, ps]) => [m, ps.map((p) => p.partition)]))

describe('stickyAssignment', () => {
  it('scale out moves only the partitions the new member needs', () => {
    const before = { a: [0, 1, 2, 3, 4, 5, 6, 7] }
    const after = held(
      stickyAssignment(partitions(8), [
        { memberId: 'a', owned: { [topic]: before.a } },
        { memberId: 'b', owned: {} },
      ]),
    )
    expect(after).toEqual({ a: [0, 1, 2, 3], b: [4, 5, 6, 7] })
  })

  it('scale in and failover keep the survivors where they are', () => {
    const after = held(
      stickyAssignment(partitions(8), [{ memberId: 'b', owned: { [topic]: [4, 5, 6, 7] } }]),
    )
    expect(after).toEqual({ b: [0, 1, 2, 3, 4, 5, 6, 7] })
    const three = held(
      stickyAssignment(partitions(8), [
        { memberId: 'a', owned: { [topic]: [0, 2, 4] } },
        { memberId: 'c', owned: { [topic]: [1, 3, 5] } },
      ]),
    )
    expect(three.a).toEqual(expect.arrayContaining([0, 2, 4]))
    expect(three.c).toEqual(expect.arrayContaining([1, 3, 5]))
  })

  it('is balanced, complete, and moves no more than it must (random claims)', () => {
    const random = mulberry32(7)
    for (let run = 0; run < 300; run++) {
      const n = 1 + Math.floor(random() * 24)
      const m = 1 + Math.floor(random() * 6)
      const members = Array.from({ length: m }, (_, i) => ({
        memberId: `m${i}`,
        owned: { [topic]: [] as number[] },
      }))
      // Previous owners (a partition may be claimed twice, or by nobody, or not exist any more).
      for (let p = 0; p < n + 2; p++) {
        if (random() < 0.8) members[Math.floor(random() * m)]?.owned[topic]?.push(p)
        if (random() < 0.1) members[Math.floor(random() * m)]?.owned[topic]?.push(p)
      }
      const assignment = stickyAssignment(partitions(n), members)
      const counts = [...assignment.values()].map((ps) => ps.length)
      expect(Math.max(...counts) - Math.min(...counts)).toBeLessThanOrEqual(1)
      const all = [...assignment.values()].flat().map((p) => p.partition)
      expect(all.sort((a, b) => a - b)).toEqual(partitions(n).map((p) => p.partition))
      // A member claiming at most ⌊n/m⌋ partitions that nobody else claims keeps them all.
      for (const member of members) {
        const claims = [...new Set(member.owned[topic])].filter((p) => p < n)
        const contested = claims.some((p) =>
          members.some((o) => o !== member && o.owned[topic]?.includes(p)),
        )
        if (contested || claims.length > Math.floor(n / m)) continue
        const kept = (assignment.get(member.memberId) ?? []).map((p) => p.partition)
        expect(kept).toEqual(expect.arrayContaining(claims))
      }
    }
  })
})

describe('stickyAssigner (kafkajs protocol)', () => {
  it('round-trips claims through the join metadata', async () => {
    const cluster = {
      findTopicPartitionMetadata: () => partitions(4).map((p) => ({ partitionId: p.partition })),
    }
    const make = (owned: number[]) =>
      // eslint-disable-next-line @typescript-eslint/no-unsafe-argument, @typescript-eslint/no-explicit-any
      stickyAssigner(() => ({ [topic]: owned }))({ cluster, groupId: 'g', logger: {} } as any)
    const a = make([0, 1, 2, 3])
    const b = make([])
    const members = [
      { memberId: 'a', memberMetadata: a.protocol({ topics: [topic] }).metadata },
      { memberId: 'b', memberMetadata: b.protocol({ topics: [topic] }).metadata },
    ]
    const result = await a.assign({ members, topics: [topic] })
    const decoded = Object.fromEntries(
      result.map((r) => [
        r.memberId,
        AssignerProtocol.MemberAssignment.decode(r.memberAssignment)?.assignment[topic],
      ]),
    )
    expect(decoded).toEqual({ a: [0, 1], b: [2, 3] })
  })

  it('ignores user data of another format', () => {
    expect(decodeOwned(Buffer.from('not json'))).toEqual({})
    expect(decodeOwned(undefined)).toEqual({})
    expect(decodeOwned(encodeOwned({ t: [1, 2] }))).toEqual({ t: [1, 2] })
  })
})
