import { AssignerProtocol, type PartitionAssigner } from 'kafkajs'

/** Partitions by topic. */
export type TopicPartitions = Record<string, number[]>

const protocolName = 'kwa-sticky'
const protocolVersion = 1

/**
 * The assignment of `partitions` to `members` that moves the fewest partitions from their
 * current owner while staying balanced (every member holds ⌊n/m⌋ or ⌈n/m⌉ partitions), as Kafka's
 * StickyAssignor does: members keep what they own (up to ⌈n/m⌉; a partition claimed twice goes to
 * the first claimant by member id), partitions without an owner go to the members holding fewest,
 * then partitions move from the fullest members to the emptiest until the counts differ by at most
 * one. Deterministic: members are taken in member id order.
 */
export function stickyAssignment(
  partitions: readonly { topic: string; partition: number }[],
  members: readonly { memberId: string; owned: TopicPartitions }[],
): Map<string, { topic: string; partition: number }[]> {
  const sorted = [...members].sort((a, b) => (a.memberId < b.memberId ? -1 : 1))
  const assignment = new Map(sorted.map((m) => [m.memberId, [] as (typeof partitions)[number][]]))
  if (sorted.length === 0) return assignment
  const id = (p: { topic: string; partition: number }) => `${p.topic}\u0000${p.partition}`
  const byId = new Map(partitions.map((p) => [id(p), p]))
  const cap = Math.ceil(partitions.length / sorted.length)
  const taken = new Set<string>()
  for (const { memberId, owned } of sorted) {
    const held = assignment.get(memberId) ?? []
    for (const [topic, list] of Object.entries(owned)) {
      for (const partition of [...list].sort((a, b) => a - b)) {
        const key = id({ topic, partition })
        const known = byId.get(key)
        if (known === undefined || taken.has(key) || held.length >= cap) continue
        taken.add(key)
        held.push(known)
      }
    }
  }
  const fewest = () =>
    [...assignment].reduce((best, entry) => (entry[1].length < best[1].length ? entry : best))
  const most = () =>
    [...assignment].reduce((best, entry) => (entry[1].length > best[1].length ? entry : best))
  for (const p of partitions) {
    if (!taken.has(id(p))) fewest()[1].push(p)
  }
  for (;;) {
    const [, low] = fewest()
    const [, high] = most()
    if (high.length - low.length <= 1) break
    low.push(high.pop() as (typeof partitions)[number])
  }
  for (const held of assignment.values()) {
    held.sort((a, b) =>
      a.topic === b.topic ? a.partition - b.partition : a.topic < b.topic ? -1 : 1,
    )
  }
  return assignment
}

/** A member's claim, as carried in its join request's user data. */
export function encodeOwned(owned: TopicPartitions): Buffer {
  return Buffer.from(JSON.stringify({ owned }))
}

/** A member's claim; nothing for user data of another format (the member keeps nothing). */
export function decodeOwned(userData: Buffer | null | undefined): TopicPartitions {
  if (userData === null || userData === undefined || userData.length === 0) return {}
  try {
    const parsed = JSON.parse(userData.toString('utf8')) as { owned?: unknown }
    const owned = parsed.owned
    if (typeof owned !== 'object' || owned === null) return {}
    const result: TopicPartitions = {}
    for (const [topic, list] of Object.entries(owned)) {
      if (Array.isArray(list)) result[topic] = list.filter((p): p is number => Number.isInteger(p))
    }
    return result
  } catch {
    return {}
  }
}

/**
 * A kafkajs partition assigner that keeps partitions where they are (stickyAssignment). Each
 * member claims, in its join request, the partitions whose state it holds (`owned()` is read at
 * every join); the leader assigns. A member that keeps a partition keeps its state in memory, when
 * it can prove it is still what is committed (AggregatorService.keep).
 */
export const stickyAssigner =
  (owned: () => TopicPartitions): PartitionAssigner =>
  ({ cluster }) => ({
    name: protocolName,
    version: protocolVersion,
    // eslint-disable-next-line @typescript-eslint/require-await
    async assign({ members, topics }) {
      const partitions = topics.flatMap((topic) =>
        cluster.findTopicPartitionMetadata(topic).map((m) => ({ topic, partition: m.partitionId })),
      )
      const claims = members.map(({ memberId, memberMetadata }) => ({
        memberId,
        owned: decodeOwned(AssignerProtocol.MemberMetadata.decode(memberMetadata)?.userData),
      }))
      const assignment = stickyAssignment(partitions, claims)
      return [...assignment].map(([memberId, held]) => {
        const byTopic: TopicPartitions = {}
        for (const { topic, partition } of held) (byTopic[topic] ??= []).push(partition)
        return {
          memberId,
          memberAssignment: AssignerProtocol.MemberAssignment.encode({
            version: protocolVersion,
            assignment: byTopic,
            userData: Buffer.alloc(0),
          }),
        }
      })
    },
    protocol({ topics }) {
      return {
        name: protocolName,
        metadata: AssignerProtocol.MemberMetadata.encode({
          version: protocolVersion,
          topics,
          userData: encodeOwned(owned()),
        }),
      }
    },
  })
