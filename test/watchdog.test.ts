import { describe, expect, it } from 'vitest'
import { failureBounds, MIN_STALL_BOUND_MS } from '../consumer/service'
import { RESTORE_READ_TIMEOUT_MS } from '../consumer/changelog'
import { StallWatchdog } from '../consumer/watchdog'

function watched(boundMs: number) {
  let now = 1_000
  const stalls: number[] = []
  const watchdog = new StallWatchdog({
    boundMs,
    onStall: (quietMs) => stalls.push(quietMs),
    // Checks are driven by the test; the timer never fires within it.
    checkEveryMs: 3_600_000,
    now: () => now,
  })
  return { watchdog, stalls, advance: (ms: number) => (now += ms) }
}

describe('StallWatchdog', () => {
  it('trips once after the bound without activity', () => {
    const { watchdog, stalls, advance } = watched(10_000)
    watchdog.start()
    advance(9_999)
    watchdog.check()
    expect(stalls).toEqual([])
    advance(1)
    watchdog.check()
    expect(stalls).toEqual([10_000])
    advance(60_000)
    watchdog.check()
    expect(stalls).toHaveLength(1)
    expect(watchdog.running).toBe(false)
  })

  it('activity resets the count', () => {
    const { watchdog, stalls, advance } = watched(10_000)
    watchdog.start()
    for (let i = 0; i < 10; i++) {
      advance(9_000)
      watchdog.touch()
      watchdog.check()
    }
    expect(stalls).toEqual([])
    advance(10_000)
    watchdog.check()
    expect(stalls).toEqual([10_000])
  })

  it('never trips once stopped', () => {
    const { watchdog, stalls, advance } = watched(10_000)
    watchdog.start()
    watchdog.stop()
    advance(100_000)
    watchdog.check()
    expect(stalls).toEqual([])
  })

  it('runs on its own timer', async () => {
    let stalled = 0
    const watchdog = new StallWatchdog({ boundMs: 50, onStall: () => stalled++ })
    watchdog.start()
    await new Promise((resolve) => setTimeout(resolve, 200))
    expect(stalled).toBe(1)
  })
})

describe('failureBounds', () => {
  it('the stall bound exceeds a restore read plus a session timeout, and at least a minute', () => {
    const bounds = failureBounds(30_000)
    expect(bounds.stallMs).toBe(RESTORE_READ_TIMEOUT_MS + 30_000)
    expect(bounds.restoreRetryMs).toBe(30_000)
    expect(failureBounds(1_000, { restoreReadMs: 5_000 }).stallMs).toBe(MIN_STALL_BOUND_MS)
    expect(failureBounds(30_000, { stallMs: 500 }).stallMs).toBe(500)
  })
})
