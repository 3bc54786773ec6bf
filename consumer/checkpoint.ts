import { CheckpointError } from './errors'

/**
 * What a committed offset means, stored as the commit's metadata (Kafka allows 4 KiB).
 *
 * The committed offset is the lowest input offset still held in an open window, so a new owner
 * replays from there. The checkpoint tells it how: restore `streamTime`, and treat records below
 * `processedUpTo` as a replay (rebuild open windows only; their closed windows were published).
 */
export interface Checkpoint {
  /** Stream time (max event time seen) when the commit was made; null before any sample. */
  streamTime: number | null
  /** The next offset after the last record processed when the commit was made. */
  processedUpTo: number
}

const version = 1

export const encodeCheckpoint = (c: Checkpoint): string =>
  JSON.stringify({ v: version, streamTime: c.streamTime, processedUpTo: c.processedUpTo })

/** Null when there is no metadata (nothing committed, or committed by another tool). */
export function decodeCheckpoint(metadata: string | null | undefined): Checkpoint | null {
  if (metadata === null || metadata === undefined || metadata === '') return null
  let parsed: unknown
  try {
    parsed = JSON.parse(metadata)
  } catch (cause) {
    throw new CheckpointError(`commit metadata is not a kwa checkpoint: ${metadata}`, { cause })
  }
  // JSON `null` parses fine but has no fields: treat it like any other foreign value.
  const c = (parsed ?? {}) as { v?: unknown; streamTime?: unknown; processedUpTo?: unknown }
  // Stream times (epoch ms) and offsets are never negative.
  const whole = (x: unknown) => Number.isSafeInteger(x) && (x as number) >= 0
  const streamTimeOk = c.streamTime === null || whole(c.streamTime)
  if (c.v !== version || !streamTimeOk || !whole(c.processedUpTo)) {
    throw new CheckpointError(`unsupported kwa checkpoint: ${metadata}`)
  }
  return { streamTime: c.streamTime as number | null, processedUpTo: c.processedUpTo as number }
}
