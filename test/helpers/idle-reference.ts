/**
 * The reference recomputation (test/reference.ts, untouched) with idle close (--idle-close)
 * modelled, for tests whose input pauses long enough for a replica to close windows by the wall
 * clock.
 *
 * What the reference can know. An idle advance moves a partition's stream time to a wall-clock
 * dependent value; the input alone does not say which. A test knows two things: (1) it waited,
 * before producing more, until every window open at the pause was published, so the stream time
 * reached at least `low` = the last open window's end + grace (the lowest stream time that closes
 * them all); and (2) an upper bound `maxStreamTime`: the stream time moves at most as fast as the
 * wall clock from the pause on (consumer/service.ts idleStreamTime: S + (now - since), since no
 * earlier than the send of the last input), and after the last window closed nothing advances it
 * (no window is open), so it is at most S + (resume - last send). The advance is modelled as a
 * sample that only moves the clock (a key of its own, left out of every result: the reference
 * has no other way to move stream time), and the run is computed twice, with the advance to
 * `low` and to `maxStreamTime`. Lateness is monotone in stream time, so when both runs agree,
 * every value in between gives the same result and the recomputation is exact whatever the
 * advance really was. When they disagree the test's input is ambiguous and this throws: produce
 * the resumed input so that each sample is either in a window closed at the pause (late for sure)
 * or stamped at or beyond `maxStreamTime` (its lateness then depends on the input only).
 *
 * With idle close every window is eventually closed by the wall clock, so the windows still open
 * at the end of the input are published too (`atEnd`).
 */
import type { Sample } from '../../consumer/schemas'
import {
  ReferenceAggregator,
  windowId,
  type RefConfig,
  type RefSample,
  type RefWindow,
} from '../reference'

/** One partition's input in order: messages (input offset, samples) and idle advances between. */
export type IdleStep =
  | { offset: number; samples: readonly Sample[] }
  | {
      /** Every window open here was closed by the wall clock before the next message. */
      idleAdvance: { maxStreamTime: number }
    }

export interface LateSampleRef {
  partition: number
  offset: number
  sample: Sample
}

export interface IdleReferenceRun {
  /** Every window published: closed by input, by an idle advance, or by the final idle close. */
  windows: Map<string, RefWindow>
  /** The windows only the final idle close publishes (open when the input ends). */
  atEnd: Map<string, RefWindow>
  /**
   * Per partition, the stream time when the input ends (null: no sample), idle advances counted
   * at their lowest (the final idle close not at all).
   */
  streamTimes: (number | null)[]
  aggregated: number
  late: number
  rejected: number
  /** Every late sample, with the input offset it was read from. */
  lateSamples: LateSampleRef[]
}

/** The clock-only sample's key: no test input uses it (it starts with U+0000). */
const ADVANCE_KEY = '\u0000idle-advance'

interface PartitionRun {
  closed: RefWindow[]
  atEnd: RefWindow[]
  streamTime: number | null
  aggregated: number
  late: number
  rejected: number
  lateSamples: LateSampleRef[]
}

function runPartition(
  partition: number,
  steps: readonly IdleStep[],
  config: RefConfig,
  advanceTo: 'low' | 'max',
): PartitionRun {
  const aggregator = new ReferenceAggregator(config)
  const grace = config.graceMs ?? 0
  const run: PartitionRun = {
    closed: [],
    atEnd: [],
    streamTime: null,
    aggregated: 0,
    late: 0,
    rejected: 0,
    lateSamples: [],
  }
  const keep = (windows: readonly RefWindow[]) => windows.filter((w) => w.key !== ADVANCE_KEY)
  let pending: RefSample[] = []
  let sources: Sample[] = []
  const flush = () => {
    if (pending.length === 0) return
    const result = aggregator.ingest(pending)
    run.aggregated += result.aggregated
    run.late += result.late
    run.rejected += result.rejected
    for (const i of result.lateIdx) {
      const offset = (pending[i] as RefSample).offset
      run.lateSamples.push({ partition, offset, sample: sources[i] as Sample })
    }
    run.closed.push(...keep(result.closed))
    pending = []
    sources = []
  }
  for (const step of steps) {
    if ('samples' in step) {
      for (const s of step.samples) {
        pending.push({ key: s.seriesKey, ts: s.eventTime, value: s.value, offset: step.offset })
        sources.push(s)
      }
      continue
    }
    flush()
    const open = keep(aggregator.openWindows())
    // Nothing open: the service does not advance (nextCloseTime is null), nor does the model.
    if (open.length === 0) continue
    const low = Math.max(...open.map((w) => w.end)) + grace
    const { maxStreamTime } = step.idleAdvance
    if (maxStreamTime < low) {
      throw new Error(
        `partition ${partition}: an idle advance to at most ${maxStreamTime} cannot have closed ` +
          `the windows open at the pause (that needs stream time ${low})`,
      )
    }
    const to = advanceTo === 'low' ? low : maxStreamTime
    // A sample at `to` moves stream time there and closes what is due, as advanceStreamTime does;
    // it is never late (it is beyond every open window) and its own window is left out.
    const moved = aggregator.ingest([{ key: ADVANCE_KEY, ts: to, value: 0, offset: -1 }])
    run.closed.push(...keep(moved.closed))
  }
  flush()
  run.streamTime = aggregator.streamTime
  run.atEnd = keep(aggregator.openWindows())
  return run
}

const fingerprint = (run: PartitionRun): string =>
  JSON.stringify({
    windows: [...run.closed, ...run.atEnd]
      .map((w) => [w.key, w.start, w.count, w.sum, w.min, w.max])
      .sort((a, b) => (String(a) < String(b) ? -1 : 1)),
    late: run.lateSamples.map((l) => [l.offset, l.sample.seriesKey, l.sample.eventTime]),
  })

/**
 * The windows published, and the late samples, for input with idle advances (see the module
 * docs). `partitions[p]` is partition p's input; every series key must live in one partition.
 */
export function referenceWithIdle(
  partitions: readonly (readonly IdleStep[])[],
  config: RefConfig,
): IdleReferenceRun {
  const result: IdleReferenceRun = {
    windows: new Map(),
    atEnd: new Map(),
    streamTimes: [],
    aggregated: 0,
    late: 0,
    rejected: 0,
    lateSamples: [],
  }
  partitions.forEach((steps, partition) => {
    const low = runPartition(partition, steps, config, 'low')
    if (steps.some((s) => 'idleAdvance' in s)) {
      const high = runPartition(partition, steps, config, 'max')
      if (fingerprint(low) !== fingerprint(high)) {
        throw new Error(
          `partition ${partition}: the result depends on how far the idle advance went (between ` +
            'the last open window end + grace and maxStreamTime): the test input is ambiguous',
        )
      }
    }
    for (const [into, windows] of [
      [result.windows, [...low.closed, ...low.atEnd]],
      [result.atEnd, low.atEnd],
    ] as const) {
      for (const w of windows) {
        const id = windowId(w.key, w.start)
        if (into.has(id)) throw new Error(`window ${JSON.stringify(w.key)} at ${w.start} twice`)
        into.set(id, w)
      }
    }
    result.streamTimes.push(low.streamTime)
    result.aggregated += low.aggregated
    result.late += low.late
    result.rejected += low.rejected
    result.lateSamples.push(...low.lateSamples)
  })
  return result
}

/** `samples[p][m]`, message m of partition p at input offset m, as idle steps (no advance). */
export const messagesAsSteps = (
  messages: readonly (readonly (readonly Sample[])[])[],
  firstOffset = 0,
): IdleStep[][] =>
  messages.map((batches) => batches.map((samples, m) => ({ offset: firstOffset + m, samples })))
