/**
 * Notices a loop that went quiet: `touch()` on every sign of activity; once `boundMs` pass
 * without one, `onStall` is called (once) with how long it has been quiet.
 *
 * kafkajs can stall without crashing (a call that never returns inside its fetch loop, a restart
 * that keeps failing): the process would look alive and do nothing. The watchdog turns that into
 * a failure the orchestrator sees.
 */
export class StallWatchdog {
  private lastActivity = 0
  private timer: NodeJS.Timeout | undefined
  private readonly now: () => number

  constructor(
    private readonly options: {
      boundMs: number
      onStall: (quietMs: number) => void
      /** How often to look; default a tenth of the bound, at most 5 s. */
      checkEveryMs?: number
      /** Tests: the clock. */
      now?: () => number
    },
  ) {
    this.now = options.now ?? Date.now
  }

  get running(): boolean {
    return this.timer !== undefined
  }

  /** Starts watching, counting from now. */
  start(): void {
    this.stop()
    this.lastActivity = this.now()
    const every = this.options.checkEveryMs ?? Math.min(5_000, this.options.boundMs / 10)
    this.timer = setInterval(() => this.check(), Math.max(1, every))
    this.timer.unref()
  }

  touch(): void {
    this.lastActivity = this.now()
  }

  stop(): void {
    clearInterval(this.timer)
    this.timer = undefined
  }

  /** Calls onStall (and stops) if the bound passed without activity. Runs on a timer. */
  check(): void {
    if (this.timer === undefined) return
    const quietMs = this.now() - this.lastActivity
    if (quietMs < this.options.boundMs) return
    this.stop()
    this.options.onStall(quietMs)
  }
}
