// Child JVMs (and mvn) must not outlive this Node process: exit hooks, setpriv pdeathsig, spawn.
import { type ChildProcess, spawn } from 'node:child_process'
import path from 'node:path'
import { execFileText } from './util'

export function javaBinary(): string {
  const javaHome = process.env['JAVA_HOME']
  return javaHome ? path.join(javaHome, 'bin', 'java') : 'java'
}

const liveJvms = new Set<ChildProcess>()
let exitHooksInstalled = false
const FORWARDED_SIGNALS: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP']

function killLiveJvmsNow(): void {
  for (const child of liveJvms) child.kill('SIGKILL')
  liveJvms.clear()
}

function onTerminatingSignal(signal: NodeJS.Signals): void {
  // If someone else handles the signal (a CLI doing a graceful stop, a test runner), let them;
  // the 'exit' hook still kills whatever is left. Otherwise behave like the default handler would.
  if (process.listenerCount(signal) > 1) return
  killLiveJvmsNow()
  for (const s of FORWARDED_SIGNALS) process.removeListener(s, onTerminatingSignal)
  process.kill(process.pid, signal)
}

function installExitHooks(): void {
  if (exitHooksInstalled) return
  exitHooksInstalled = true
  process.on('exit', killLiveJvmsNow)
  for (const signal of FORWARDED_SIGNALS) process.on(signal, onTerminatingSignal)
}

let pdeathsigSupport: Promise<boolean> | undefined

/**
 * Linux only: `setpriv --pdeathsig KILL` makes the kernel kill the JVM even if Node itself is
 * SIGKILLed (no exit hook runs then). The signal fires when the spawning *thread* ends, so a broker
 * started inside a worker thread dies with that thread.
 */
function canUsePdeathsig(): Promise<boolean> {
  pdeathsigSupport ??=
    process.platform !== 'linux'
      ? Promise.resolve(false)
      : execFileText('setpriv', ['--pdeathsig', 'KILL', 'true'], { timeoutMs: 5_000 }).then(
          () => true,
          () => false,
        )
  return pdeathsigSupport
}

/**
 * Wraps a command so the kernel kills it when we die, where setpriv can (a shell script that
 * `exec`s, like mvn, keeps the setting). Elsewhere the command runs as is.
 */
export async function diesWithParent(command: string, args: string[]): Promise<[string, string[]]> {
  return (await canUsePdeathsig())
    ? ['setpriv', ['--pdeathsig', 'KILL', command, ...args]]
    : [command, args]
}

export async function spawnJvm(args: string[], cwd: string): Promise<ChildProcess> {
  const [command, commandArgs] = await diesWithParent(javaBinary(), args)
  installExitHooks()
  const child = spawn(command, commandArgs, {
    cwd,
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: false,
  })
  liveJvms.add(child)
  child.once('exit', () => liveJvms.delete(child))
  // A spawn failure (e.g. ENOENT) is reported as 'error'; without a listener it would crash Node.
  child.once('error', () => liveJvms.delete(child))
  return child
}
