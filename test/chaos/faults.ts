// Fault injection that is not a signal to one process: CPU starvation by busy loops (CpuHog).
import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import os from 'node:os'
import { pdeathsig, trackChild } from './processes'

/**
 * CPU starvation: busy-loop processes, optionally all on one CPU together with a target process
 * (the broker's JVM, every thread), so that the target gets a fraction of one core. stop() ends
 * the loops and gives the target back every CPU.
 */
export class CpuHog {
  private readonly loops: ChildProcess[] = []
  private pinned: number | undefined

  constructor(count: number, options: { pin?: number } = {}) {
    const cpu = '0'
    if (options.pin !== undefined && taskset(['-a', '-p', '-c', cpu, String(options.pin)])) {
      this.pinned = options.pin
    }
    for (let i = 0; i < count; i++) {
      const args = ['-e', 'for (;;) {}']
      const [command, commandArgs] =
        this.pinned !== undefined
          ? ['taskset', ['-c', cpu, process.execPath, ...args]]
          : [process.execPath, args]
      const [wrapped, wrappedArgs] = pdeathsig
        ? ['setpriv', ['--pdeathsig', 'KILL', command, ...commandArgs]]
        : [command, commandArgs]
      const child = spawn(wrapped, wrappedArgs, { stdio: 'ignore' })
      trackChild(child)
      this.loops.push(child)
    }
  }

  /** Whether the loops share one CPU with the target. */
  get pinnedTo(): number | undefined {
    return this.pinned
  }

  stop(): void {
    for (const loop of this.loops.splice(0)) loop.kill('SIGKILL')
    if (this.pinned !== undefined) {
      taskset(['-a', '-p', '-c', `0-${os.cpus().length - 1}`, String(this.pinned)])
      this.pinned = undefined
    }
  }
}

function taskset(args: string[]): boolean {
  return spawnSync('taskset', args, { stdio: 'ignore' }).status === 0
}
