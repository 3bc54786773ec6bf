// Prints the closing line of a CI run: "N passed, N failed".
// Usage: node .ci/summary.js <test log> <vitest json report> <exit status>
'use strict'
const fs = require('node:fs')

const [logFile, vitestFile, statusText] = process.argv.slice(2)
let passed = 0
let failed = 0

// cargo test: "test result: ok. 19 passed; 0 failed; ..."
const log = fs.existsSync(logFile) ? fs.readFileSync(logFile, 'utf8') : ''
for (const m of log.matchAll(/test result: \w+\. (\d+) passed; (\d+) failed/g)) {
  passed += Number(m[1])
  failed += Number(m[2])
}

if (fs.existsSync(vitestFile)) {
  const report = JSON.parse(fs.readFileSync(vitestFile, 'utf8'))
  passed += report.numPassedTests
  failed += report.numFailedTests
  // A suite that failed to load (e.g. globalSetup could not get a broker) has no tests to count.
  failed += (report.testResults ?? []).filter(
    (r) => r.status === 'failed' && r.assertionResults.length === 0,
  ).length
}

// A gate that failed (lint, build, setup) without a failing test still fails the run.
if (Number(statusText) !== 0 && failed === 0) failed = 1
console.log(`${passed} passed, ${failed} failed`)
