// The scenario definitions, (a) to (m), and the rotation list of the soak.
import { SESSION_TIMEOUT_MS, seconds } from './common'
import { type Replica } from './replicas'
import { type ChaosHarness } from './runner'
import { type ScenarioResult } from './scenario'

// ---------------------------------------------------------------------------------------------
// The scenarios
// ---------------------------------------------------------------------------------------------

/**
 * (a) kill -9 between send and commit, repeatedly: one replica runs with the service's fault hook
 * (KWA_FAULT_CRASH_AFTER_SEND: SIGKILL itself after sending a batch's records inside its
 * transaction, before committing) and is restarted each time it dies; a few external kill -9s
 * hit random replicas at random moments. The faulty replica is retired before the drain.
 */
export function killBetweenSendAndCommit(
  h: ChaosHarness,
  { disruptMs = 30_000, crashProbability = 0.1, externalKills = 2 } = {},
): Promise<ScenarioResult> {
  return h.run('kill-between-send-and-commit', async (s) => {
    s.startReplica()
    const faulty = s.startReplica({
      env: { KWA_FAULT_CRASH_AFTER_SEND: String(crashProbability) },
    })
    await s.waitForGroup()
    await s.timeline(
      disruptMs,
      s.randomMoments(externalKills, disruptMs).map((at) => [at, () => s.killRandomReplica()]),
    )
    await faulty.kill({ retire: true })
    s.startReplica()
  })
}

/** (b) SIGTERM a replica mid-stream, later start a new one; twice. */
export function sigtermMidStream(
  h: ChaosHarness,
  { disruptMs = 25_000 } = {},
): Promise<ScenarioResult> {
  return h.run('sigterm-mid-stream', async (s) => {
    const first = s.startReplica()
    const second = s.startReplica()
    await s.waitForGroup()
    await s.timeline(disruptMs, [
      [disruptMs * 0.15, () => first.stop()],
      [disruptMs * 0.4, () => s.startReplica()],
      [disruptMs * 0.6, () => second.stop()],
      [disruptMs * 0.8, () => s.startReplica()],
    ])
  })
}

/** (c) Scale 1 -> 3 -> 1 replicas while producing. */
export function scaleOutAndIn(
  h: ChaosHarness,
  { disruptMs = 25_000 } = {},
): Promise<ScenarioResult> {
  return h.run('scale-1-3-1', async (s) => {
    await s.scaleTo(1)
    await s.waitForGroup()
    await s.timeline(disruptMs, [
      [disruptMs * 0.2, () => s.scaleTo(3)],
      [disruptMs * 0.6, () => s.scaleTo(1)],
    ])
  })
}

/**
 * (d) SIGSTOP a replica for longer than the session timeout, then SIGCONT: the group moves on
 * without it, and when it wakes up its late writes must be fenced.
 */
export function zombieReplica(
  h: ChaosHarness,
  { disruptMs = 25_000, pauseMs = 10_000 } = {},
): Promise<ScenarioResult> {
  return h.run('zombie-sigstop', async (s) => {
    const zombie = s.startReplica()
    s.startReplica()
    await s.waitForGroup()
    const at = Math.min(3_000, Math.max(0, disruptMs - pauseMs - 6_000))
    await s.timeline(disruptMs, [
      [at, () => zombie.pause()],
      [at + pauseMs, () => zombie.resume()],
    ])
  })
}

/**
 * (e) kill -9 the broker and restart it on the same data dir while replicas run. Input stalls
 * while the broker is down (event time is synthetic), so this one needs a longer disruption.
 */
export function brokerCrash(
  h: ChaosHarness,
  { disruptMs = 30_000, downMs = 3_000 } = {},
): Promise<ScenarioResult> {
  return h.run('broker-kill-9', async (s) => {
    s.startReplica()
    s.startReplica()
    await s.waitForGroup()
    await s.timeline(disruptMs, [[disruptMs * 0.25, () => s.killBroker(downMs)]])
  })
}

/**
 * (f) Duplicate and out-of-order input: messages sent twice, older messages resent, 40% of the
 * samples up to 1.5 s early (some beyond the grace), and one replica kill -9 midway so the
 * duplicates also go through a restore.
 */
export function duplicateAndOutOfOrderInput(
  h: ChaosHarness,
  { disruptMs = 20_000 } = {},
): Promise<ScenarioResult> {
  return h.run(
    'duplicate-out-of-order-input',
    async (s) => {
      s.startReplica()
      s.startReplica()
      await s.waitForGroup()
      await s.timeline(disruptMs, [[disruptMs * 0.5, () => s.killRandomReplica()]])
    },
    {
      input: {
        duplicateFraction: 0.1,
        replayFraction: 0.05,
        outOfOrderFraction: 0.4,
        maxDelayMs: 1_500,
      },
    },
  )
}

/**
 * (g) SIGSTOP the broker mid-stream (a long GC pause, a frozen VM), then SIGCONT: every client
 * times out at once; replicas must ride it out or exit and be restarted, never hang.
 */
export function brokerPause(
  h: ChaosHarness,
  { disruptMs = 60_000, pauseMs = 40_000 } = {},
): Promise<ScenarioResult> {
  return h.run('broker-sigstop', async (s) => {
    s.startReplica()
    s.startReplica()
    await s.waitForGroup()
    const at = Math.max(2_000, Math.min(5_000, disruptMs - pauseMs - 5_000))
    await s.timeline(disruptMs, [[at, () => s.pauseBroker(pauseMs)]])
  })
}

/**
 * (h) Three replicas started at the same moment against a broker that has just (re)started, its
 * group and transaction coordinators still loading; the side topics do not exist yet, so all
 * three race to create them. No replica may die of it.
 */
export function coldStart(h: ChaosHarness, { disruptMs = 20_000 } = {}): Promise<ScenarioResult> {
  return h.run('cold-start-3-replicas', async (s) => {
    await s.restartBroker()
    s.startReplica()
    s.startReplica()
    s.startReplica()
    await s.timeline(disruptMs, [])
    await s.waitForGroup()
  })
}

/**
 * (i) The broker starved of CPU (busy loops pinned on its CPU) for a minute, with replicas
 * killed and restarted during it.
 */
export function brokerStarved(
  h: ChaosHarness,
  { disruptMs = 60_000, loops = 3, kills = 2 } = {},
): Promise<ScenarioResult> {
  return h.run('broker-cpu-starved', async (s) => {
    s.startReplica()
    s.startReplica()
    await s.waitForGroup()
    s.starveCpu(loops, { broker: true })
    await s.timeline(
      disruptMs,
      s.randomMoments(kills, disruptMs).map((at) => [at, () => s.killRandomReplica()]),
    )
  })
}

/**
 * (j) A replica cut off for longer than the session timeout (SIGSTOP: no heartbeat, no I/O, its
 * sockets open) while another takes over; then the other one; CPU starved throughout.
 */
export function replicaCutOff(
  h: ChaosHarness,
  { disruptMs = 40_000, pauseMs = 2.5 * SESSION_TIMEOUT_MS } = {},
): Promise<ScenarioResult> {
  return h.run('replica-cut-off', async (s) => {
    const first = s.startReplica()
    const second = s.startReplica()
    await s.waitForGroup()
    s.starveCpu(2)
    const gap = Math.max(1_000, (disruptMs - 2 * pauseMs) / 3)
    await s.timeline(disruptMs, [
      [gap, () => first.pause()],
      [gap + pauseMs, () => first.resume()],
      [2 * gap + pauseMs, () => second.pause()],
      [2 * gap + 2 * pauseMs, () => second.resume()],
    ])
  })
}

/**
 * (k) Issue 10's scenario: two replicas started at the same moment on a freshly started broker,
 * CPU starved by two busy loops, a third replica added, one killed -9 and replaced, one SIGSTOPped
 * past the session timeout (a zombie), one stopped with SIGTERM. Under starvation a new owner
 * used to read the changelog of the previous owner's last transaction and, from the group, the
 * offset from before it, and counted that input twice.
 */
export function starvedRebalances(
  h: ChaosHarness,
  { disruptMs = 60_000 } = {},
): Promise<ScenarioResult> {
  return h.run('starved-rebalances', async (s) => {
    await s.restartBroker()
    s.starveCpu(2)
    const first = s.startReplica()
    const second = s.startReplica()
    let third: Replica | undefined
    const at = (fraction: number) => Math.round(disruptMs * fraction)
    await s.timeline(disruptMs, [
      [at(8 / 60), () => (third = s.startReplica())],
      [at(16 / 60), () => first.kill({ retire: true })],
      [at(22 / 60), () => s.startReplica()],
      [at(28 / 60), () => second.pause()],
      [at(28 / 60) + Math.max(2 * SESSION_TIMEOUT_MS, at(16 / 60)), () => second.resume()],
      [at(50 / 60), () => third?.stop()],
    ])
  })
}

/**
 * (l) Rolling restart under load, as an orchestrator does it: `replicas` replicas, then each in
 * turn is stopped with SIGTERM (waited for until it exited: the service finishes its batch in
 * flight, commits and leaves the group), a replacement is started, and the next one is stopped
 * only once the group has rebalanced and every replica, the replacement included, answers
 * /readyz (joined, every owned partition restored, the partitions covered exactly once). A
 * group that does not get ready within `readyTimeoutMs` fails the scenario (the rollout would
 * stall). `dwellMs` of input is processed between steps (pacing, not a correctness condition).
 */
export function rollingRestart(
  h: ChaosHarness,
  { replicas = 3, dwellMs = 4_000, readyTimeoutMs = 60_000 } = {},
): Promise<ScenarioResult> {
  return h.run('rolling-restart', async (s) => {
    // Beyond the replicas' own --shutdown-timeout (default 30 s), after which they exit anyway.
    const stopTimeoutMs = 35_000
    const requireReady = async (what: string) => {
      if (!(await s.waitForReady(readyTimeoutMs))) {
        throw new Error(`the group did not get ready within ${seconds(readyTimeoutMs)} ${what}`)
      }
    }
    const original = Array.from({ length: replicas }, () => s.startReplica())
    await requireReady('at start')
    for (const [i, old] of original.entries()) {
      await s.sleep(dwellMs)
      s.note(`rolling restart ${i + 1}/${replicas}: ${old.name}`)
      await old.stop(stopTimeoutMs)
      const replacement = s.startReplica()
      await requireReady(`after ${replacement.name} replaced ${old.name}`)
    }
    await s.sleep(dwellMs)
  })
}

/**
 * (m) Idle then resume, replicas with --idle-close: input flows, then stops for longer than
 * idle-close; one replica is killed -9 before the idle close is due and another right after it
 * logged its first idle advance (advances of its other partitions in flight), both restarted by
 * the supervisor; every window of the input must then come out with no more input (the idle
 * close, by whichever replica owns the partition by then). Then the input resumes with samples
 * for windows the idle close closed (late) and event time beyond any stream time an advance can
 * have reached (resumeInput()), and the usual drain and verification, the recomputation modelling
 * the idle close and the late topic checked sample by sample. The input starts only once the
 * group is ready and resumes only once it is ready again: a rebalance while input flows stalls a
 * partition, and a stall longer than idle-close closes windows by the wall clock (as documented),
 * which no recomputation from the input can know.
 */
export function idleThenResume(
  h: ChaosHarness,
  { steadyMs = 12_000, idleCloseMs = 3_000 } = {},
): Promise<ScenarioResult> {
  return h.run(
    'idle-then-resume',
    async (s) => {
      s.startReplica()
      s.startReplica()
      if (!(await s.waitForReady(60_000))) {
        throw new Error('the group did not get ready within 60 s, before any input')
      }
      s.startInput()
      await s.sleep(steadyMs)
      const advances = () => s.replicas.reduce((n, r) => n + r.idleAdvances, 0)
      const flowing = advances()
      if (flowing > 0) {
        s.note(`${flowing} idle advance(s) while the input flowed: a partition stalled that long`)
      }
      await s.pauseInput()
      const paused = new Map(s.replicas.map((r) => [r, r.idleAdvances]))
      await s.sleep(idleCloseMs / 2)
      await s.killRandomReplica()
      await s.until('an idle advance after the pause', () => advances() > flowing, 60_000)
      await s.replicas.find((r) => r.idleAdvances > (paused.get(r) ?? 0))?.kill()
      await s.awaitIdleClose(90_000)
      if (!(await s.waitForReady(60_000))) {
        throw new Error('the group did not get ready within 60 s after the idle close')
      }
      await s.resumeInput()
      await s.sleep(steadyMs)
    },
    { idleClose: { idleCloseMs } },
  )
}

/** Every scenario, in rotation order, with its default durations scaled by `factor`. */
export const scenarios: readonly {
  name: string
  run: (h: ChaosHarness, factor: number) => Promise<ScenarioResult>
}[] = [
  { name: 'a', run: (h, f) => killBetweenSendAndCommit(h, { disruptMs: 30_000 * f }) },
  { name: 'b', run: (h, f) => sigtermMidStream(h, { disruptMs: 25_000 * f }) },
  { name: 'c', run: (h, f) => scaleOutAndIn(h, { disruptMs: 25_000 * f }) },
  { name: 'd', run: (h, f) => zombieReplica(h, { disruptMs: Math.max(20_000, 25_000 * f) }) },
  { name: 'e', run: (h, f) => brokerCrash(h, { disruptMs: 30_000 * f }) },
  { name: 'f', run: (h, f) => duplicateAndOutOfOrderInput(h, { disruptMs: 20_000 * f }) },
  { name: 'g', run: (h, f) => brokerPause(h, { disruptMs: Math.max(50_000, 60_000 * f) }) },
  { name: 'h', run: (h, f) => coldStart(h, { disruptMs: 20_000 * f }) },
  { name: 'i', run: (h, f) => brokerStarved(h, { disruptMs: 60_000 * f }) },
  { name: 'j', run: (h, f) => replicaCutOff(h, { disruptMs: Math.max(40_000, 40_000 * f) }) },
  { name: 'k', run: (h, f) => starvedRebalances(h, { disruptMs: 60_000 * f }) },
  { name: 'l', run: (h, f) => rollingRestart(h, { dwellMs: 4_000 * f }) },
  { name: 'm', run: (h, f) => idleThenResume(h, { steadyMs: 12_000 * f }) },
]
