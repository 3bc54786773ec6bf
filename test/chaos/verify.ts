// The verifier: recomputes the expected windows from the input topic, compares the committed output.
import {
  decodeLateSample,
  decodeTelemetryBatch,
  decodeWindowAggregate,
  type Sample,
  type WindowAggregate,
} from '../../consumer/schemas'
import { referenceWithIdle, type IdleStep } from '../helpers/idle-reference'
import { referenceRun, windowId, type RefWindow } from '../reference'
import { PARTITIONS, WINDOW, errorText, pollUntil, seconds } from './common'
import { lastStableOffsets } from './kafka-clients'
import { readCommittedWithLibrdkafka, readersDisagree } from './librdkafka-reader'
import { TopicReader, readToEnd, type ReadRecord } from './topic-reader'

// ---------------------------------------------------------------------------------------------
// Verification
// ---------------------------------------------------------------------------------------------

export interface Counts {
  /** Expected (closed) windows, each compared with the output. */
  windows: number
  missing: number
  /** Windows published more than once. */
  duplicated: number
  /** Windows whose published value differs from the recomputation, plus unexpected windows. */
  wrong: number
}

export interface Verification {
  counts: Counts
  examples: { missing: string[]; duplicated: string[]; wrong: string[] }
  /** Output partitions whose last stable offset stays below the end: a transaction left open. */
  hanging: string[]
  /**
   * Committed output records on which kafkajs and librdkafka (read_committed both) disagree: the
   * comparison rests on kafkajs' reads, so an independent client checks them.
   */
  readersDisagree: string[]
  inputMessages: number
  inputSamples: number
  lateSamples: number
  /** Committed output records (read_committed). */
  outputRecords: number
  /** Output records a read_uncommitted reader sees (aborted and open transactions included). */
  outputRecordsUncommitted: number
  /** How long the output took to reach the expected number of distinct windows. */
  settleMs: number
  /**
   * With a late topic (the idle scenario): its committed records (librdkafka) against the late
   * samples of the recomputation, by input partition, offset, series, event time and value.
   */
  late?: LateCheck
}

export interface LateCheck {
  expected: number
  published: number
  /** Late samples of the recomputation not on the late topic (or fewer times). */
  missing: number
  /** Late records that the recomputation does not have (or more times: a duplicate). */
  extra: number
  examples: string[]
}

/** Where the input resumed after a pause, per partition, and the highest stream time by then. */
export interface IdleResume {
  offsets: Map<number, bigint>
  maxStreamTime: number
}

/**
 * Idle close (--idle-close) for the verifier: stream time also moves by the wall clock, so the
 * recomputation models the advances of each pause (`resumes`; see test/helpers/idle-reference.ts
 * for what it can know about them and how it checks that this is enough), and every window is
 * eventually published (the last ones by the final idle close). Late samples are checked on the
 * late topic.
 */
export interface IdleModel {
  resumes: readonly IdleResume[]
  lateTopic: string
}

/**
 * The input records (any order) as each partition's steps for referenceWithIdle: its messages by
 * offset, with an idle advance before the first record at or beyond each resume offset.
 */
export function inputSteps(
  records: readonly { partition: number; offset: string; value: Buffer | null }[],
  resumes: readonly IdleResume[],
): IdleStep[][] {
  const steps: IdleStep[][] = Array.from({ length: PARTITIONS }, () => [])
  const sorted = [...records].sort(
    (a, b) => a.partition - b.partition || Number(BigInt(a.offset) - BigInt(b.offset)),
  )
  const next = new Map<number, number>()
  const advanceUpTo = (partition: number, offset: bigint | undefined) => {
    const list = steps[partition] as IdleStep[]
    for (let i = next.get(partition) ?? 0; i < resumes.length; i++) {
      const resume = resumes[i] as IdleResume
      const at = resume.offsets.get(partition) ?? 0n
      if (offset !== undefined && offset < at) return
      list.push({ idleAdvance: { maxStreamTime: resume.maxStreamTime } })
      next.set(partition, i + 1)
    }
  }
  for (const record of sorted) {
    if (record.value === null)
      throw new Error(`input ${record.partition}@${record.offset} has no value`)
    advanceUpTo(record.partition, BigInt(record.offset))
    steps[record.partition]?.push({
      offset: Number(record.offset),
      samples: decodeTelemetryBatch(record.value).samples,
    })
  }
  for (let p = 0; p < PARTITIONS; p++) advanceUpTo(p, undefined)
  return steps
}

export interface VerifyOptions {
  /** Give up waiting for the expected number of distinct windows after this long. */
  settleTimeoutMs: number
  /** ... or once no new distinct window appeared for this long. */
  stallMs: number
  /** Quiet period after the last output record before comparing. */
  quietMs: number
  /** How long a transaction may stay open before it counts as hanging. */
  hangingAfterMs: number
}

export const defaultVerify: VerifyOptions = {
  settleTimeoutMs: 90_000,
  stallMs: 30_000,
  quietMs: 3_000,
  hangingAfterMs: 15_000,
}

const EXAMPLES = 5

/**
 * (1) Reads the input topic back and recomputes the expected closed windows with the reference;
 * (2) reads the output read_committed until the expected number of distinct windows is there
 * (bounded) plus a quiet period; (3) checks that no transaction is left hanging: the last stable
 * offset of every output partition must reach the high watermark a read_uncommitted reader sees;
 * (4) compares per (series key, window start).
 */
export async function verify(
  brokers: string,
  inputTopic: string,
  outputTopic: string,
  options: VerifyOptions = defaultVerify,
  idle?: IdleModel,
): Promise<Verification> {
  const input = await readToEnd(brokers, inputTopic)
  const perPartition: Sample[][] = Array.from({ length: PARTITIONS }, () => [])
  const sorted = [...input].sort(
    (a, b) => a.partition - b.partition || Number(BigInt(a.offset) - BigInt(b.offset)),
  )
  for (const record of sorted) {
    if (record.value === null)
      throw new Error(`input ${record.partition}@${record.offset} has no value`)
    perPartition[record.partition]?.push(...decodeTelemetryBatch(record.value).samples)
  }
  // Without idle close, windows close by input only; with it, the recomputation models the idle
  // advances and the final idle close (every window is published).
  const idleRun =
    idle === undefined ? undefined : referenceWithIdle(inputSteps(input, idle.resumes), WINDOW)
  const reference =
    idleRun === undefined
      ? referenceRun(perPartition, WINDOW)
      : { closed: idleRun.windows, late: idleRun.late }
  const expected = reference.closed

  const committed = await TopicReader.open(brokers, outputTopic, { readUncommitted: false })
  let outputRecords: ReadRecord[]
  let settleMs: number
  let open: OpenTransactions
  try {
    settleMs = await awaitDistinctWindows(committed, expected.size, options)
    await pollUntil(() => Date.now() - committed.lastRecordAt >= options.quietMs, 60_000, 250)
    open = await openTransactions(brokers, outputTopic, options.hangingAfterMs)
    // Everything committed is below the LSO: the read_committed reader must get there.
    const lso = open.lastStable
    if (!(await pollUntil(() => committed.reached(lso), 20_000)) && open.hanging.length === 0) {
      const behind = [...lso]
        .filter(([p, end]) => committed.position(p) < end)
        .map(([p, end]) => `p${p} at ${committed.position(p)}/${end}`)
      throw new Error(
        `read_committed reader of ${outputTopic} stuck below the LSO: ${behind.join(', ')}`,
      )
    }
    outputRecords = committed.records
  } finally {
    await committed.close()
  }

  const comparison = compareOutput(expected, outputRecords)
  const independent = await readCommittedWithLibrdkafka(brokers, outputTopic)
  return {
    ...comparison,
    hanging: open.hanging,
    readersDisagree: readersDisagree(outputRecords, independent),
    inputMessages: input.length,
    inputSamples: perPartition.reduce((n, s) => n + s.length, 0),
    lateSamples: reference.late,
    outputRecords: outputRecords.length,
    outputRecordsUncommitted: open.uncommittedRecords,
    settleMs,
    ...(idle !== undefined &&
      idleRun !== undefined && {
        late: await checkLate(brokers, idle.lateTopic, idleRun.lateSamples),
      }),
  }
}

/** The late topic (read by librdkafka, read_committed) against the recomputed late samples. */
async function checkLate(
  brokers: string,
  lateTopic: string,
  expected: readonly { partition: number; offset: number; sample: Sample }[],
): Promise<LateCheck> {
  const id = (partition: number, offset: number, s: Sample) =>
    `${partition}@${offset} ${s.seriesKey} ${new Date(s.eventTime).toISOString()} ${s.value}`
  const published = (await readCommittedWithLibrdkafka(brokers, lateTopic)).map((r) => {
    const late = decodeLateSample(Buffer.from(r.value ?? '', 'hex'))
    return id(late.sourcePartition, late.sourceOffset, late)
  })
  const count = new Map<string, number>()
  for (const l of expected) {
    const key = id(l.partition, l.offset, l.sample)
    count.set(key, (count.get(key) ?? 0) + 1)
  }
  const extra: string[] = []
  for (const key of published) {
    const n = count.get(key) ?? 0
    if (n === 0) extra.push(key)
    else count.set(key, n - 1)
  }
  const missing = [...count].flatMap(([key, n]) => Array.from({ length: n }, () => key))
  return {
    expected: expected.length,
    published: published.length,
    missing: missing.length,
    extra: extra.length,
    examples: [
      ...missing.slice(0, EXAMPLES).map((k) => `missing ${k}`),
      ...extra.slice(0, EXAMPLES).map((k) => `extra ${k}`),
    ],
  }
}

/**
 * Waits until `expected` distinct windows were read, or no new one came for `stallMs`, or
 * `settleTimeoutMs` passed; returns how long it waited.
 */
async function awaitDistinctWindows(
  reader: TopicReader,
  expected: number,
  options: VerifyOptions,
): Promise<number> {
  const started = Date.now()
  const distinct = new Set<string>()
  let counted = 0
  let lastNewAt = Date.now()
  const count = (): number => {
    for (; counted < reader.records.length; counted++) {
      const value = reader.records[counted]?.value
      if (value === null || value === undefined) continue
      try {
        const w = decodeWindowAggregate(value)
        const before = distinct.size
        distinct.add(windowId(w.seriesKey, w.windowStart))
        if (distinct.size > before) lastNewAt = Date.now()
      } catch {
        // compareOutput() counts it as wrong
      }
    }
    return distinct.size
  }
  await pollUntil(
    () =>
      count() >= expected ||
      Date.now() - lastNewAt > options.stallMs ||
      Date.now() - started > options.settleTimeoutMs,
    options.settleTimeoutMs + 1_000,
    250,
  )
  return Date.now() - started
}

export interface OpenTransactions {
  /** One line per output partition whose LSO stayed below its high watermark. */
  hanging: string[]
  /** The last stable offsets at the end of the check. */
  lastStable: Map<number, bigint>
  /** Records a read_uncommitted reader saw. */
  uncommittedRecords: number
}

/**
 * A read_uncommitted reader finds each partition's high watermark (aborted and open transactions
 * included); the LSO (READ_COMMITTED ListOffsets) must reach it within `hangingAfterMs`, or a
 * transaction is left open and pins read_committed readers below it.
 */
export async function openTransactions(
  brokers: string,
  topic: string,
  hangingAfterMs: number,
): Promise<OpenTransactions> {
  const raw = await TopicReader.open(brokers, topic, { readUncommitted: true })
  try {
    let lso = await lastStableOffsets(brokers, topic)
    await pollUntil(
      () =>
        raw.reached(lso) &&
        Date.now() - raw.lastRecordAt > 1_500 &&
        [...lso.keys()].every((p) => raw.position(p) >= raw.highWatermark(p)),
      30_000,
    )
    const ends = new Map([...lso.keys()].map((p) => [p, raw.highWatermark(p)] as const))
    const open = (): number[] =>
      [...ends].filter(([p, end]) => (lso.get(p) ?? 0n) < end).map(([p]) => p)
    await pollUntil(
      async () => {
        lso = await lastStableOffsets(brokers, topic)
        return open().length === 0
      },
      hangingAfterMs,
      1_000,
    )
    const hanging = open().map(
      (p) =>
        `output partition ${p}: last stable offset ${lso.get(p)} < high watermark ` +
        `${ends.get(p)} for ${seconds(hangingAfterMs)}: a transaction is left open`,
    )
    return { hanging, lastStable: lso, uncommittedRecords: raw.records.length }
  } finally {
    await raw.close()
  }
}

/** Every published window against the recomputation, per (series key, window start). */
export function compareOutput(
  expected: Map<string, RefWindow>,
  records: readonly {
    partition: number
    offset: string
    key: Buffer | null
    value: Buffer | null
  }[],
): Pick<Verification, 'counts' | 'examples'> {
  const copies = new Map<string, WindowAggregate[]>()
  const examples = { missing: [] as string[], duplicated: [] as string[], wrong: [] as string[] }
  let wrong = 0
  const badRecord = (text: string) => {
    wrong++
    if (examples.wrong.length < EXAMPLES) examples.wrong.push(text)
  }
  for (const r of records) {
    let w: WindowAggregate
    try {
      if (r.value === null) throw new Error('null value')
      w = decodeWindowAggregate(r.value)
    } catch (error) {
      badRecord(`output ${r.partition}@${r.offset}: not a WindowAggregate (${errorText(error)})`)
      continue
    }
    if (r.key?.toString('utf8') !== w.seriesKey) {
      badRecord(
        `output ${r.partition}@${r.offset}: key ${String(r.key)} != seriesKey ${w.seriesKey}`,
      )
    }
    const id = windowId(w.seriesKey, w.windowStart)
    const list = copies.get(id)
    if (list === undefined) copies.set(id, [w])
    else list.push(w)
  }

  let missing = 0
  let duplicated = 0
  const label = (key: string, start: number) => `${key} @ ${new Date(start).toISOString()}`
  for (const [id, want] of expected) {
    const got = copies.get(id) ?? []
    if (got.length === 0) {
      missing++
      if (examples.missing.length < EXAMPLES) examples.missing.push(label(want.key, want.start))
      continue
    }
    if (got.length > 1) {
      duplicated++
      if (examples.duplicated.length < EXAMPLES)
        examples.duplicated.push(`${label(want.key, want.start)}: ${got.length} copies`)
    }
    const bad = got.find((w) => !matches(w, want))
    if (bad !== undefined) {
      wrong++
      if (examples.wrong.length < EXAMPLES)
        examples.wrong.push(
          `${label(want.key, want.start)}: got ${summary(bad)}, want ${summary({ ...want, windowEnd: want.end })}`,
        )
    }
  }
  for (const [id, got] of copies) {
    if (expected.has(id)) continue
    const w = got[0]
    if (w === undefined) continue
    wrong++
    if (examples.wrong.length < EXAMPLES)
      examples.wrong.push(`${label(w.seriesKey, w.windowStart)}: unexpected window ${summary(w)}`)
  }
  return { counts: { windows: expected.size, missing, duplicated, wrong }, examples }
}

function matches(w: WindowAggregate, want: RefWindow): boolean {
  const mean = want.sum / want.count
  return (
    w.windowEnd === want.end &&
    w.count === want.count &&
    w.sum === want.sum &&
    w.min === want.min &&
    w.max === want.max &&
    Math.abs(w.mean - mean) <= 1e-9 * Math.max(1, Math.abs(mean))
  )
}

const summary = (w: {
  windowEnd: number
  count: number
  sum: number
  mean: number
  min: number
  max: number
}): string =>
  `{n=${w.count} sum=${w.sum} mean=${w.mean} min=${w.min} max=${w.max} end=${w.windowEnd}}`
