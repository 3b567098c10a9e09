// The official JS SDK (npm e2b) against Kiln's envd: commands, PTY, files, watches.
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { after, before, test } from 'node:test'
import { CommandExitError, FileType, NotFoundError, Sandbox, TimeoutError } from 'e2b'
import { startEnvd } from './harness.mjs'

let envd
let sandbox
before(async () => {
  envd = await startEnvd()
  sandbox = await Sandbox.create()
})
after(async () => envd?.stop())

test('echo runs as the default user in its home', async () => {
  const result = await sandbox.commands.run('echo hello; id -un; pwd; echo $KILN_SANDBOX_VAR')
  assert.equal(result.exitCode, 0)
  assert.equal(result.stdout, `hello\nuser\n${envd.home}\nfrom-init\n`)
})

test('exit codes with stderr', async () => {
  await assert.rejects(sandbox.commands.run('echo oops >&2; exit 7'), (err) => {
    assert.ok(err instanceof CommandExitError)
    assert.equal(err.exitCode, 7)
    assert.equal(err.stderr, 'oops\n')
    return true
  })
})

test('envs, cwd and root on request', async () => {
  const result = await sandbox.commands.run('echo $FOO; pwd; id -u', { envs: { FOO: 'bar' }, cwd: '/tmp', user: 'root' })
  assert.equal(result.stdout, 'bar\n/tmp\n0\n')
})

test('streaming callbacks arrive in order', async () => {
  const chunks = []
  await sandbox.commands.run('for i in 1 2 3; do echo line$i; sleep 0.05; done', { onStdout: (d) => chunks.push(d) })
  assert.equal(chunks.join(''), 'line1\nline2\nline3\n')
  assert.ok(chunks.length >= 2)
})

test('timeouts', async () => {
  await assert.rejects(sandbox.commands.run('sleep 30', { timeoutMs: 1000 }), TimeoutError)
})

test('background, list and kill', async () => {
  const handle = await sandbox.commands.run('sleep 60', { background: true })
  assert.ok((await sandbox.commands.list()).some((p) => p.pid === handle.pid))
  assert.equal(await sandbox.commands.kill(handle.pid), true)
  await assert.rejects(handle.wait(), CommandExitError)
  assert.equal(await sandbox.commands.kill(handle.pid), false)
})

test('stdin and closeStdin', async () => {
  const handle = await sandbox.commands.run('cat; echo done', { background: true, stdin: true })
  await sandbox.commands.sendStdin(handle.pid, 'abc\n')
  await sandbox.commands.closeStdin(handle.pid)
  assert.equal((await handle.wait()).stdout, 'abc\ndone\n')
})

test('pty create, send and resize', async () => {
  const output = []
  const terminal = await sandbox.pty.create({ cols: 80, rows: 24, onData: (d) => output.push(Buffer.from(d)) })
  await sandbox.pty.resize(terminal.pid, { cols: 100, rows: 30 })
  await sandbox.pty.sendInput(terminal.pid, new TextEncoder().encode('stty size; exit\n'))
  await terminal.wait()
  assert.match(Buffer.concat(output).toString(), /30 100/)
})

test('text and 3 MiB binary files', async () => {
  const info = await sandbox.files.write('js-notes/a.txt', 'hello js')
  assert.equal(info.path, `${envd.home}/js-notes/a.txt`)
  assert.equal(await sandbox.files.read('js-notes/a.txt'), 'hello js')
  const data = randomBytes(3 * 1024 * 1024)
  await sandbox.files.write('/tmp/kiln-js-big.bin', new Blob([data]))
  const back = await sandbox.files.read('/tmp/kiln-js-big.bin', { format: 'bytes' })
  assert.ok(Buffer.from(back).equals(data))
})

test('list, exists, getInfo, makeDir, rename, remove', async () => {
  const base = '/tmp/kiln-js-ops'
  await sandbox.files.remove(base)
  assert.equal(await sandbox.files.makeDir(`${base}/d`), true)
  assert.equal(await sandbox.files.makeDir(`${base}/d`), false)
  await sandbox.files.write(`${base}/f.txt`, 'f')
  assert.deepEqual((await sandbox.files.list(base)).map((e) => e.name).sort(), ['d', 'f.txt'])
  assert.equal((await sandbox.files.getInfo(`${base}/d`)).type, FileType.DIR)
  await sandbox.files.rename(`${base}/f.txt`, `${base}/g.txt`)
  assert.equal(await sandbox.files.exists(`${base}/f.txt`), false)
  assert.equal(await sandbox.files.exists(`${base}/g.txt`), true)
  await sandbox.files.remove(base)
  assert.equal(await sandbox.files.exists(base), false)
})

test('missing paths are not found', async () => {
  await assert.rejects(sandbox.files.read('/tmp/kiln-js-missing'), NotFoundError)
  await assert.rejects(sandbox.files.getInfo('/tmp/kiln-js-missing'), NotFoundError)
})

test('watchDir streams events', async () => {
  const dir = '/tmp/kiln-js-watch'
  await sandbox.files.remove(dir)
  await sandbox.files.makeDir(dir)
  const events = []
  let resolveCreate
  const created = new Promise((r) => (resolveCreate = r))
  const handle = await sandbox.files.watchDir(dir, (event) => {
    events.push(event)
    if (event.name === 'w.txt' && event.type === 'create') resolveCreate()
  })
  await sandbox.files.write(`${dir}/w.txt`, 'w')
  await Promise.race([created, new Promise((_, reject) => setTimeout(() => reject(new Error('no event')), 5000))])
  await handle.stop()
  assert.ok(events.some((e) => e.name === 'w.txt'))
})
