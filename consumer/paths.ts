import { existsSync } from 'node:fs'
import path from 'node:path'

/** The package root, found from this file whether it runs from source or from dist/. */
export const packageRoot: string = (() => {
  let dir = __dirname
  while (!existsSync(path.join(dir, 'package.json'))) {
    const parent = path.dirname(dir)
    if (parent === dir) throw new Error(`package.json not found above ${__dirname}`)
    dir = parent
  }
  return dir
})()

export const schemaPath = (name: string): string => path.join(packageRoot, 'schemas', name)
