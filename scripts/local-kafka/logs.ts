// Log lines: broker.log (tailed by polling), the JVM's stdout/stderr, recent lines for errors.
import { promises as fs } from 'node:fs'

export class LineSplitter {
  private partial = ''
  constructor(private readonly onLine: (line: string) => void) {}
  push(chunk: string): void {
    const parts = (this.partial + chunk).split('\n')
    this.partial = parts.pop() ?? ''
    for (const line of parts) this.onLine(line.replace(/\r$/, ''))
  }
}

/** Reads lines appended to a file since a given offset; polling keeps it portable and simple. */
export class FileTail {
  private readonly splitter: LineSplitter
  private timer: NodeJS.Timeout | undefined
  private reading = false

  constructor(
    private readonly file: string,
    private offset: number,
    onLine: (line: string) => void,
  ) {
    this.splitter = new LineSplitter(onLine)
  }

  start(intervalMs = 200): void {
    this.timer = setInterval(() => void this.poll(), intervalMs)
    this.timer.unref()
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer)
    this.timer = undefined
  }

  async poll(): Promise<void> {
    if (this.reading) return
    this.reading = true
    try {
      const handle = await fs.open(this.file, 'r').catch(() => null)
      if (!handle) return
      try {
        const { size } = await handle.stat()
        if (size <= this.offset) return
        const buffer = Buffer.alloc(size - this.offset)
        const { bytesRead } = await handle.read(buffer, 0, buffer.length, this.offset)
        this.offset += bytesRead
        this.splitter.push(buffer.subarray(0, bytesRead).toString('utf8'))
      } finally {
        await handle.close()
      }
    } finally {
      this.reading = false
    }
  }
}

export class RecentLines {
  private readonly lines: string[] = []
  constructor(private readonly capacity: number) {}
  add(line: string): void {
    this.lines.push(line)
    if (this.lines.length > this.capacity) this.lines.shift()
  }
  text(): string {
    return this.lines.join('\n')
  }
}
