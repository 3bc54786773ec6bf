/**
 * The chaos scenarios, short: each disrupts replicas (or the broker) for 20-30 s while input
 * flows, then checks the output against a recomputation from the input topic. Runs on its own
 * broker (test/chaos/harness.ts starts one: it kills -9 and restarts it), not the shared one.
 *
 *   npx vitest run --project integration test/integration/chaos.test.ts
 *
 * KWA_KAFKA_VERSION picks the broker version, KWA_CHAOS_DELIVERY the replicas' --delivery
 * (default exactly-once), KWA_CHAOS_KEEP_LOGS=1 keeps the logs of passing scenarios,
 * KWA_CHAOS_VERBOSE=1 prints every event as it happens. Logs of a failing scenario are always
 * kept; the failure message names them. The soak is `npm run chaos`.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  brokerCrash,
  brokerPause,
  brokerStarved,
  ChaosHarness,
  coldStart,
  duplicateAndOutOfOrderInput,
  formatResult,
  idleThenResume,
  killBetweenSendAndCommit,
  replicaCutOff,
  rollingRestart,
  scaleOutAndIn,
  starvedRebalances,
  sigtermMidStream,
  zombieReplica,
  type ScenarioResult,
} from '../chaos/harness'

/** Each scenario checks at least this many windows (about 450 per 10 s of input). */
const MIN_WINDOWS = 500
/**
 * Bound per scenario: disruption + drain + verification (about 30-55 s when all is well), with
 * room for a failing one to wait out its bounded verification timeouts and report.
 */
const SCENARIO_TIMEOUT_MS = 200_000

let harness: ChaosHarness

beforeAll(async () => {
  harness = await ChaosHarness.start({
    onEvent: (line) => {
      if (process.env['KWA_CHAOS_VERBOSE'] === '1') console.log(line)
    },
  })
  console.log(`chaos broker ${harness.broker.brokers}, logs in ${harness.logRoot}`)
}, 180_000)

afterAll(async () => {
  await harness?.close()
}, 120_000)

/**
 * Exactly once: nothing missing, nothing twice, nothing wrong, no transaction left open, the
 * committed output read alike by kafkajs and librdkafka, no replica alive whose consumer
 * stopped for good (it must exit, to be restarted), and where a late topic is checked (the idle
 * scenario) every late sample on it once.
 */
function expectExactlyOnce(result: ScenarioResult): void {
  const report = formatResult(result)
  console.log(report)
  const { counts, hanging, late } = result.verification
  expect(counts.windows, report).toBeGreaterThan(MIN_WINDOWS)
  expect(
    {
      missing: counts.missing,
      duplicated: counts.duplicated,
      wrong: counts.wrong,
      hanging,
      readersDisagree: result.verification.readersDisagree,
      idle: result.warnings,
      late: { missing: late?.missing ?? 0, extra: late?.extra ?? 0 },
    },
    report,
  ).toEqual({
    missing: 0,
    duplicated: 0,
    wrong: 0,
    hanging: [],
    readersDisagree: [],
    idle: [],
    late: { missing: 0, extra: 0 },
  })
}

describe('chaos: exactly-once under failures', () => {
  it(
    'kill -9 between send and commit, repeatedly',
    async () => {
      const result = await killBetweenSendAndCommit(harness, { disruptMs: 30_000 })
      expectExactlyOnce(result)
      // Otherwise the scenario did not test the gap between send and commit at all.
      expect(result.selfKills, 'the KWA_FAULT_CRASH_AFTER_SEND hook never fired').toBeGreaterThan(0)
    },
    SCENARIO_TIMEOUT_MS,
  )

  it(
    'SIGTERM a replica mid-stream, start a new one later',
    async () => {
      expectExactlyOnce(await sigtermMidStream(harness, { disruptMs: 20_000 }))
    },
    SCENARIO_TIMEOUT_MS,
  )

  it(
    'scale 1 -> 3 -> 1 replicas while producing',
    async () => {
      expectExactlyOnce(await scaleOutAndIn(harness, { disruptMs: 20_000 }))
    },
    SCENARIO_TIMEOUT_MS,
  )

  it(
    'SIGSTOP a replica past the session timeout, then SIGCONT: the zombie is fenced',
    async () => {
      expectExactlyOnce(await zombieReplica(harness, { disruptMs: 20_000, pauseMs: 10_000 }))
    },
    SCENARIO_TIMEOUT_MS,
  )

  it(
    'kill -9 the broker and restart it on the same data dir',
    async () => {
      expectExactlyOnce(await brokerCrash(harness, { disruptMs: 30_000, downMs: 3_000 }))
    },
    SCENARIO_TIMEOUT_MS,
  )

  it(
    'SIGSTOP the broker for 40 s mid-stream, then SIGCONT',
    async () => {
      expectExactlyOnce(await brokerPause(harness, { disruptMs: 60_000, pauseMs: 40_000 }))
    },
    SCENARIO_TIMEOUT_MS,
  )

  it(
    'three replicas started at once on a broker that has just started: none dies',
    async () => {
      const result = await coldStart(harness, { disruptMs: 20_000 })
      expectExactlyOnce(result)
      expect(result.selfExits, formatResult(result)).toEqual([])
    },
    SCENARIO_TIMEOUT_MS,
  )

  it(
    'the broker starved of CPU for a minute, replicas killed meanwhile',
    async () => {
      expectExactlyOnce(await brokerStarved(harness, { disruptMs: 60_000 }))
    },
    SCENARIO_TIMEOUT_MS,
  )

  it(
    'a replica cut off past the session timeout while another takes over, CPU starved',
    async () => {
      expectExactlyOnce(await replicaCutOff(harness, { disruptMs: 40_000 }))
    },
    SCENARIO_TIMEOUT_MS,
  )

  it(
    'issue 10: fresh broker, CPU starved, scale-up, kill -9, zombie and scale-down',
    async () => {
      expectExactlyOnce(await starvedRebalances(harness, { disruptMs: 60_000 }))
    },
    SCENARIO_TIMEOUT_MS,
  )

  it(
    'duplicate and out-of-order input',
    async () => {
      expectExactlyOnce(await duplicateAndOutOfOrderInput(harness, { disruptMs: 20_000 }))
    },
    SCENARIO_TIMEOUT_MS,
  )

  it(
    'rolling restart: each replica SIGTERMed and replaced in turn, the group ready before the next',
    async () => {
      const result = await rollingRestart(harness, { replicas: 3, dwellMs: 4_000 })
      expectExactlyOnce(result)
      const report = formatResult(result)
      // Three originals stopped and three replacements, each stopped by SIGTERM only at the end.
      expect(result.replicas.length, report).toBe(6)
      // A rollout is graceful: every exit is a SIGTERM answered with code 0 (no crash, no exit
      // by itself, no kill -9 because --shutdown-timeout ran out).
      const unclean = result.replicas.flatMap((r) =>
        r.exits.filter((e) => !e.startsWith('sigterm (code 0)')).map((e) => `${r.name}: ${e}`),
      )
      expect(unclean, report).toEqual([])
    },
    SCENARIO_TIMEOUT_MS,
  )

  it(
    'idle then resume: input stops past --idle-close, replicas killed while idle windows close, input resumes with late samples',
    async () => {
      const result = await idleThenResume(harness, { steadyMs: 12_000 })
      expectExactlyOnce(result)
      const report = formatResult(result)
      // The idle close happened (the windows of the paused input came out without more input:
      // awaitIdleClose), and the stale samples after it are on the late topic.
      expect(
        result.replicas.reduce((n, r) => n + r.idleAdvances, 0),
        report,
      ).toBeGreaterThan(0)
      expect(result.verification.late?.expected, report).toBeGreaterThanOrEqual(5 * 4)
    },
    SCENARIO_TIMEOUT_MS,
  )
})
