"""The wire, byte by byte: Connect framing and codecs, and bad input that must never crash envd."""

import json

from kiln_envd import envelope, parse_envelopes

STREAM = {"Content-Type": "application/connect+json", "Connect-Protocol-Version": "1"}
UNARY = {"Content-Type": "application/json", "Connect-Protocol-Version": "1"}


def start_body(command):
    return envelope(json.dumps({"process": {"cmd": "/bin/sh", "args": ["-c", command]}, "stdin": False}).encode())


def test_start_stream_shape(envd):
    status, headers, body = envd.request("POST", "/process.Process/Start", start_body("echo hi"), STREAM)
    assert status == 200
    assert headers["content-type"] == "application/connect+json"
    frames = parse_envelopes(body)
    assert [f[0] for f in frames] == [0, 0, 0, 2]
    assert set(frames[0][1]["event"]) == {"start"}
    assert frames[1][1] == {"event": {"data": {"stdout": "aGkK"}}}
    assert frames[2][1] == {"event": {"end": {"exited": True, "status": "exit status 0"}}}
    assert frames[3][1] == {}


def test_unary_proto_codec(envd):
    # ListRequest is empty: an empty protobuf body. The answer is a protobuf ListResponse.
    status, headers, body = envd.request(
        "POST", "/process.Process/List", b"", {"Content-Type": "application/proto", "Connect-Protocol-Version": "1"}
    )
    assert status == 200 and headers["content-type"] == "application/proto"


def test_streaming_proto_codec(envd):
    # StartRequest{process: ProcessConfig{cmd: "/bin/true"}, stdin: false}, hand-encoded.
    config = b"\x0a\x09/bin/true"
    request = b"\x0a" + bytes([len(config)]) + config + b"\x20\x00"
    status, headers, body = envd.request(
        "POST", "/process.Process/Start", envelope(request), {"Content-Type": "application/connect+proto"}
    )
    assert status == 200 and headers["content-type"] == "application/connect+proto"
    assert body[-7:-2] != b"" and body[-7] == 2, "ends with an end-of-stream frame"


def test_invalid_json_is_invalid_argument(envd):
    status, headers, body = envd.request("POST", "/filesystem.Filesystem/Stat", b"{not json", UNARY)
    assert status == 400
    assert json.loads(body)["code"] == "invalid_argument"


def test_unknown_fields_are_ignored_and_unknown_enums_refused(envd):
    status, _, body = envd.request("POST", "/process.Process/List", b'{"bogus": 1}', UNARY)
    assert status == 200 and json.loads(body) in ({}, {"processes": []}) or "processes" in json.loads(body)
    status, _, body = envd.request(
        "POST", "/process.Process/SendSignal", b'{"process":{"pid":1},"signal":"SIGNAL_BOGUS"}', UNARY
    )
    assert status == 400 and json.loads(body)["code"] == "invalid_argument"


def test_unknown_pid_is_not_found(envd):
    status, _, body = envd.request(
        "POST", "/process.Process/SendSignal", b'{"process":{"pid":999999},"signal":"SIGNAL_SIGKILL"}', UNARY
    )
    assert status == 404 and json.loads(body)["code"] == "not_found"


def test_truncated_envelope(envd):
    status, _, body = envd.request("POST", "/process.Process/Start", start_body("true")[:-3], STREAM)
    frames = parse_envelopes(body)
    assert status == 200 and frames[-1][0] == 2
    assert frames[-1][1]["error"]["code"] == "invalid_argument"


def test_oversized_envelope_is_refused_without_buffering(envd):
    header = bytes([0]) + (64 * 1024 * 1024).to_bytes(4, "big")
    status, _, body = envd.request("POST", "/process.Process/Start", header + b"{}", STREAM)
    frames = parse_envelopes(body)
    assert frames[-1][1]["error"]["code"] == "resource_exhausted"


def test_compressed_frame_is_refused(envd):
    status, _, body = envd.request("POST", "/process.Process/Start", envelope(b"{}", flags=1), STREAM)
    assert parse_envelopes(body)[-1][1]["error"]["code"] == "internal"


def test_wrong_content_type_is_415(envd):
    status, _, _ = envd.request("POST", "/process.Process/Start", b"{}", {"Content-Type": "text/plain"})
    assert status == 415
    status, _, _ = envd.request("POST", "/process.Process/List", b"{}", STREAM)
    assert status == 415


def test_request_compression_is_unimplemented(envd):
    status, _, body = envd.request("POST", "/process.Process/List", b"{}", {**UNARY, "Content-Encoding": "gzip"})
    assert status == 501 and json.loads(body)["code"] == "unimplemented"


def test_connect_timeout_header_kills_start(envd):
    headers = {**STREAM, "Connect-Timeout-Ms": "300"}
    status, _, body = envd.request("POST", "/process.Process/Start", start_body("sleep 20"), headers)
    frames = parse_envelopes(body)
    assert frames[-1][1]["error"]["code"] == "deadline_exceeded"


def test_keepalives_during_silence(envd):
    headers = {**STREAM, "Keepalive-Ping-Interval": "1"}
    status, _, body = envd.request("POST", "/process.Process/Start", start_body("sleep 2.5"), headers)
    events = [f[1].get("event", {}) for f in parse_envelopes(body)]
    assert sum("keepalive" in e for e in events) >= 2
    assert "end" in events[-2]


def test_download_of_a_directory_is_400(envd):
    status, _, body = envd.request("GET", "/files?path=/tmp")
    assert status == 400 and json.loads(body)["code"] == 400


def test_download_of_a_missing_file_is_404_with_code_and_message(envd):
    status, headers, body = envd.request("GET", "/files?path=/tmp/kiln-missing-file")
    assert status == 404
    assert json.loads(body) == {"code": 404, "message": "path '/tmp/kiln-missing-file' does not exist"}


def test_ranged_download(envd, sandbox):
    sandbox.files.write("/tmp/kiln-range.txt", "0123456789")
    status, headers, body = envd.request("GET", "/files?path=/tmp/kiln-range.txt", headers={"Range": "bytes=2-5"})
    assert status == 206 and body == b"2345"


def test_gzip_download_and_upload(envd):
    import gzip

    status, _, _ = envd.request(
        "POST",
        "/files?path=/tmp/kiln-gz.txt",
        gzip.compress(b"zipped"),
        {"Content-Type": "application/octet-stream", "Content-Encoding": "gzip"},
    )
    assert status == 200
    status, headers, body = envd.request("GET", "/files?path=/tmp/kiln-gz.txt", headers={"Accept-Encoding": "gzip"})
    assert headers.get("content-encoding") == "gzip" and gzip.decompress(body) == b"zipped"


def test_metadata_headers_round_trip(envd, sandbox):
    status, _, body = envd.request(
        "POST",
        "/files?path=/tmp/kiln-meta.txt",
        b"m",
        {"Content-Type": "application/octet-stream", "X-Metadata-Origin": "test"},
    )
    assert status == 200 and json.loads(body)[0]["metadata"] == {"origin": "test"}
    assert sandbox.files.get_info("/tmp/kiln-meta.txt").metadata == {"origin": "test"}


def test_bad_multipart_is_400(envd):
    status, _, body = envd.request(
        "POST", "/files?path=/tmp/x", b"garbage", {"Content-Type": "multipart/form-data; boundary=zzz"}
    )
    assert status == 400 and "message" in json.loads(body)


def test_envd_survives_all_of_the_above(envd):
    assert envd.request("GET", "/health")[0] == 204
