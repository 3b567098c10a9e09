"""Directory watches: polled by the sync SDK, streamed to the async SDK."""

import asyncio
import time

from e2b import FilesystemEventType


def test_sync_watch_polls_events(sandbox):
    sandbox.files.remove("/tmp/kiln-watch-sync")
    sandbox.files.make_dir("/tmp/kiln-watch-sync")
    watcher = sandbox.files.watch_dir("/tmp/kiln-watch-sync")
    sandbox.files.write("/tmp/kiln-watch-sync/a.txt", "a")
    sandbox.files.remove("/tmp/kiln-watch-sync/a.txt")
    events = []
    deadline = time.time() + 5
    while time.time() < deadline and FilesystemEventType.REMOVE not in [e.type for e in events]:
        events += watcher.get_new_events()
        time.sleep(0.1)
    watcher.stop()
    kinds = [(e.name, e.type) for e in events]
    assert ("a.txt", FilesystemEventType.CREATE) in kinds
    assert ("a.txt", FilesystemEventType.REMOVE) in kinds


def test_recursive_watch_names_are_relative(sandbox):
    sandbox.files.remove("/tmp/kiln-watch-rec")
    sandbox.files.make_dir("/tmp/kiln-watch-rec/sub")
    watcher = sandbox.files.watch_dir("/tmp/kiln-watch-rec", recursive=True)
    sandbox.files.write("/tmp/kiln-watch-rec/sub/b.txt", "b")
    events = []
    deadline = time.time() + 5
    while time.time() < deadline and not any(e.name == "sub/b.txt" for e in events):
        events += watcher.get_new_events()
        time.sleep(0.1)
    watcher.stop()
    assert any(e.name == "sub/b.txt" for e in events)


async def test_async_watch_streams_events(envd):
    from e2b import AsyncSandbox

    sandbox = await AsyncSandbox.create()
    await sandbox.files.remove("/tmp/kiln-watch-async")
    await sandbox.files.make_dir("/tmp/kiln-watch-async")
    seen = []
    got_it = asyncio.Event()

    def on_event(event):
        seen.append((event.name, event.type))
        if event.name == "c.txt" and event.type == FilesystemEventType.CREATE:
            got_it.set()

    handle = await sandbox.files.watch_dir("/tmp/kiln-watch-async", on_event)
    await sandbox.files.write("/tmp/kiln-watch-async/c.txt", "c")
    await asyncio.wait_for(got_it.wait(), 5)
    await handle.stop()
    assert ("c.txt", FilesystemEventType.CREATE) in seen
