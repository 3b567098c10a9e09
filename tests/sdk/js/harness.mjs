// Starts a real envd (through ../start-envd.sh) for the JS SDK in debug mode: the SDK then talks
// to http://localhost:49983 directly, as it would to envd inside a sandbox.
import { spawn } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'

process.env.E2B_DEBUG = 'true'
process.env.E2B_API_KEY = 'e2b_' + '0'.repeat(40)

const here = fileURLToPath(new URL('.', import.meta.url))
const root = resolve(here, '..', '..', '..')
const envdBinary = process.env.KILN_ENVD ?? join(root, 'target', 'release', 'envd')
export const PORT = 49983

export async function startEnvd() {
  const state = mkdtempSync(join(tmpdir(), 'kiln-envd-js.'))
  const child = spawn(join(root, 'tests', 'sdk', 'start-envd.sh'), [state, envdBinary, '--port', String(PORT)], {
    stdio: ['ignore', 'inherit', 'inherit'],
  })
  const deadline = Date.now() + 20_000
  for (;;) {
    try {
      const res = await fetch(`http://127.0.0.1:${PORT}/health`)
      if (res.status === 204) break
    } catch {}
    if (child.exitCode !== null) throw new Error(`envd exited with ${child.exitCode}`)
    if (Date.now() > deadline) throw new Error('envd did not become healthy')
    await new Promise((r) => setTimeout(r, 50))
  }
  const init = await fetch(`http://127.0.0.1:${PORT}/init`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ defaultUser: 'user', envVars: { KILN_SANDBOX_VAR: 'from-init' } }),
  })
  if (init.status !== 204) throw new Error(`init answered ${init.status}`)
  return {
    home: join(state, 'home', 'user'),
    async stop() {
      child.kill('SIGTERM')
      await new Promise((r) => (child.exitCode !== null ? r() : child.once('exit', r)))
      rmSync(state, { recursive: true, force: true })
    },
  }
}
