// The official JS SDK against a real `kiln up`: create, commands, files, a port, kill.
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { existsSync, readFileSync } from 'node:fs'
import { join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { after, before, test } from 'node:test'
import { CommandExitError, NotFoundError, Sandbox } from 'e2b'

const root = resolve(fileURLToPath(new URL('.', import.meta.url)), '..', '..', '..')
const home = process.env.KILN_TEST_HOME ?? '/var/lib/kiln-test'
let kiln

before(async () => {
  kiln = spawn(join(root, 'target', 'release', 'kiln'), ['up'], {
    env: { ...process.env, KILN_HOME: home, KILN_API_ADDR: '127.0.0.1:13000', KILN_PROXY_ADDR: '127.0.0.1:13002' },
    stdio: ['ignore', 'ignore', 'inherit'],
  })
  const envFile = join(home, 'env')
  const deadline = Date.now() + 900_000
  while (!existsSync(envFile)) {
    if (kiln.exitCode !== null) throw new Error(`kiln up exited with ${kiln.exitCode}`)
    if (Date.now() > deadline) throw new Error('kiln up did not become ready')
    await new Promise((r) => setTimeout(r, 200))
  }
  for (const line of readFileSync(envFile, 'utf8').split('\n')) {
    const match = line.match(/^export (\w+)=(.*)$/)
    if (match) process.env[match[1]] = match[2]
  }
  delete process.env.E2B_DEBUG
})

after(async () => {
  if (!kiln) return
  kiln.kill('SIGTERM')
  const code = await new Promise((r) => (kiln.exitCode !== null ? r(kiln.exitCode) : kiln.once('exit', r)))
  assert.equal(code, 0, 'kiln up exits cleanly on SIGTERM')
})

test('create, run, files and kill through Kiln', async () => {
  const sandbox = await Sandbox.create({ timeoutMs: 120_000 })
  assert.match(sandbox.sandboxId, /^[a-z0-9]+$/)
  const result = await sandbox.commands.run('id -un; pwd')
  assert.equal(result.stdout, 'user\n/home/user\n')
  await assert.rejects(sandbox.commands.run('exit 2'), CommandExitError)
  await sandbox.files.write('/home/user/js.txt', 'from js')
  assert.equal(await sandbox.files.read('/home/user/js.txt'), 'from js')
  assert.ok((await Sandbox.list().nextItems()).some((s) => s.sandboxId === sandbox.sandboxId))
  assert.equal(await sandbox.kill(), true)
  assert.equal(await Sandbox.kill(sandbox.sandboxId), false)
  await assert.rejects(sandbox.getInfo(), NotFoundError)
})

test('a server in the sandbox is reachable through the proxy', async () => {
  const sandbox = await Sandbox.create()
  try {
    await sandbox.commands.run('cd /tmp && echo js-served > index.html && python3 -m http.server 8000', { background: true })
    let body
    for (let i = 0; i < 50 && body !== 'js-served\n'; i++) {
      const res = await fetch(`${process.env.E2B_SANDBOX_URL}/index.html`, {
        headers: { 'E2b-Sandbox-Id': sandbox.sandboxId, 'E2b-Sandbox-Port': '8000' },
      })
      body = res.status === 200 ? await res.text() : undefined
      if (body !== 'js-served\n') await new Promise((r) => setTimeout(r, 200))
    }
    assert.equal(body, 'js-served\n')
  } finally {
    await sandbox.kill()
  }
})
