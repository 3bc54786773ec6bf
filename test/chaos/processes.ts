// Child processes: how one exited, and none left behind when the harness exits (pdeathsig, hook).
import { spawnSync, type ChildProcess } from 'node:child_process'

export interface ProcessExit {
  code: number | null
  signal: NodeJS.Signals | null
}

export const describeExit = (exit: ProcessExit): string =>
  exit.signal !== null ? `signal ${exit.signal}` : `code ${exit.code}`

/** Linux: the kernel kills a replica whose harness dies (even by SIGKILL). */
export const pdeathsig: boolean =
  process.platform === 'linux' &&
  spawnSync('setpriv', ['--pdeathsig', 'KILL', 'true'], { stdio: 'ignore' }).status === 0

/** Every replica process alive, so that an exiting harness never leaves one behind. */
const liveChildren = new Set<ChildProcess>()
let exitHookInstalled = false
export function trackChild(child: ChildProcess): void {
  if (!exitHookInstalled) {
    exitHookInstalled = true
    process.on('exit', () => {
      for (const c of liveChildren) {
        c.kill('SIGCONT')
        c.kill('SIGKILL')
      }
    })
  }
  liveChildren.add(child)
  child.once('exit', () => liveChildren.delete(child))
}
