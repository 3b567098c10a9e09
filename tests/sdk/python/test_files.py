"""Files through the official Python SDK: /files and filesystem.Filesystem."""

import os

import pytest
from e2b import FileType, NotEnoughSpaceException
from e2b.exceptions import NotFoundException


def test_text_round_trip_owned_by_user(sandbox, envd):
    info = sandbox.files.write("notes/a.txt", "hello files")
    assert info.path == f"{envd.home}/notes/a.txt"
    assert sandbox.files.read("notes/a.txt") == "hello files"
    entry = sandbox.files.get_info("notes/a.txt")
    assert (entry.owner, entry.group, entry.size, entry.type) == ("user", "user", 11, FileType.FILE)
    assert sandbox.files.get_info("notes").owner == "user", "created parents belong to the user too"


def test_binary_round_trip_3mib(sandbox):
    data = os.urandom(3 * 1024 * 1024)
    sandbox.files.write("/tmp/kiln-big.bin", data)
    assert sandbox.files.read("/tmp/kiln-big.bin", format="bytes") == data
    sandbox.files.remove("/tmp/kiln-big.bin")


def test_write_many_files_in_one_request(sandbox):
    from e2b.sandbox.filesystem.filesystem import WriteEntry

    infos = sandbox.files.write_files(
        [WriteEntry(path="/tmp/kiln-many/1.txt", data="one"), WriteEntry(path="/tmp/kiln-many/2.txt", data="two")]
    )
    assert [i.path for i in infos] == ["/tmp/kiln-many/1.txt", "/tmp/kiln-many/2.txt"]
    assert sandbox.files.read("/tmp/kiln-many/2.txt") == "two"


def test_stream_upload_uses_octet_stream(sandbox):
    import io

    sandbox.files.write("/tmp/kiln-stream.txt", io.BytesIO(b"streamed bytes"))
    assert sandbox.files.read("/tmp/kiln-stream.txt") == "streamed bytes"


def test_list_exists_info_make_dir_rename_remove(sandbox):
    base = "/tmp/kiln-fs-ops"
    sandbox.files.remove(base)
    assert sandbox.files.make_dir(f"{base}/d") is True
    assert sandbox.files.make_dir(f"{base}/d") is False
    sandbox.files.write(f"{base}/d/x.txt", "x")
    sandbox.files.write(f"{base}/top.txt", "t")

    names = sorted(e.name for e in sandbox.files.list(base))
    assert names == ["d", "top.txt"]
    deep = sorted(e.path for e in sandbox.files.list(base, depth=2))
    assert deep == [f"{base}/d", f"{base}/d/x.txt", f"{base}/top.txt"]

    assert sandbox.files.exists(f"{base}/top.txt")
    info = sandbox.files.get_info(f"{base}/d")
    assert info.type == FileType.DIR and info.permissions.startswith("d")

    moved = sandbox.files.rename(f"{base}/top.txt", f"{base}/moved/top.txt")
    assert moved.path == f"{base}/moved/top.txt"
    assert not sandbox.files.exists(f"{base}/top.txt")

    sandbox.files.remove(f"{base}/d")
    assert not sandbox.files.exists(f"{base}/d")


def test_symlinks_are_reported(sandbox):
    sandbox.commands.run("ln -sfn /etc /tmp/kiln-link", user="root")
    info = sandbox.files.get_info("/tmp/kiln-link")
    assert info.type == FileType.SYMLINK and info.symlink_target == "/etc"


def test_missing_paths_are_not_found(sandbox):
    assert sandbox.files.exists("/tmp/kiln-nope") is False
    with pytest.raises(NotFoundException):
        sandbox.files.read("/tmp/kiln-nope")
    with pytest.raises(NotFoundException):
        sandbox.files.get_info("/tmp/kiln-nope")
    with pytest.raises(NotFoundException):
        sandbox.files.list("/tmp/kiln-nope")


def test_full_disk_is_507(sandbox, envd):
    with pytest.raises(NotEnoughSpaceException):
        sandbox.files.write(f"{envd.state}/small/big.bin", os.urandom(1024 * 1024))
