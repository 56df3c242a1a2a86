"""The agent wire format as pure functions: frames, messages, bad input, addresses."""

from __future__ import annotations

import math
import os
import stat
from pathlib import Path

import msgspec
import pytest

from dreamlake._agent_socket import check_socket_dir
from dreamlake._protocol import (
    MAX_FRAME,
    AgentMessage,
    Call,
    ClientMessage,
    Err,
    FrameEncoder,
    FrameReader,
    Hello,
    Ok,
    Rows,
    default_socket_path,
    parse_address,
)


def frames(*messages):
    encoder = FrameEncoder()
    return b"".join(bytes(encoder.encode(m)) for m in messages)


def test_frame_is_big_endian_length_then_msgpack_array_with_tag_first():
    frame = frames(Rows("robot/pose", False, [{"_ts": 1.5, "x": 1}]))
    assert int.from_bytes(frame[:4], "big") == len(frame) - 4
    assert msgspec.msgpack.decode(frame[4:]) == ["rows", "robot/pose", False, [{"_ts": 1.5, "x": 1}]]


def test_reader_reassembles_frames_split_anywhere():
    messages = [Hello(1, {"pid": 7}), Rows("t", False, [{"_ts": float(i), "v": i} for i in range(50)]), Call(3, "flush", [None])]
    data = frames(*messages)
    for cut in (1, 3, 4, 5, 17, len(data) - 1):
        reader = FrameReader(ClientMessage)
        got, error = reader.feed(data[:cut])
        more, error2 = reader.feed(data[cut:])
        assert error is None and error2 is None
        assert got + more == messages
        assert reader.partial == 0


def test_nonfinite_values_survive_the_wire():
    reader = FrameReader(ClientMessage)
    (rows,), _ = reader.feed(frames(Rows("t", False, [{"_ts": 1.0, "a": math.nan, "b": math.inf}])))
    assert math.isnan(rows.rows[0]["a"]) and rows.rows[0]["b"] == math.inf


@pytest.mark.parametrize(
    "payload, why",
    [
        (b"\xc1", "not msgpack"),
        (msgspec.msgpack.encode(["nope", 1]), "unknown tag"),
        (msgspec.msgpack.encode(["rows", "t", False, [{1: 2}]]), "non-string key"),
        (msgspec.msgpack.encode(["rows", "t", "no", []]), "wrong field type"),
        (msgspec.msgpack.encode({"rows": 1}), "not an array"),
        (msgspec.msgpack.encode(["rows", "t", False, [{"_ts": msgspec.msgpack.Ext(1, b"x")}]]), "extension type"),
    ],
)
def test_bad_messages_are_protocol_errors_after_the_good_ones(payload, why):
    good = frames(Call(1, "flush", []))
    bad = len(payload).to_bytes(4, "big") + payload
    messages, error = FrameReader(ClientMessage).feed(good + bad)
    assert messages == [Call(1, "flush", [])], why
    assert error is not None, why


@pytest.mark.parametrize("length", [0, MAX_FRAME + 1, 0xFFFFFFFF])
def test_frame_lengths_outside_the_limit_are_refused_before_reading_the_body(length):
    messages, error = FrameReader(ClientMessage).feed(length.to_bytes(4, "big") + b"x")
    assert messages == [] and error is not None


def test_reader_keeps_a_truncated_frame_as_partial():
    data = frames(Call(1, "flush", []))
    reader = FrameReader(ClientMessage)
    assert reader.feed(data[:-1]) == ([], None)
    assert reader.partial == len(data) - 1


def test_agent_replies_decode():
    messages, error = FrameReader(AgentMessage).feed(frames(Ok(1, {"a": [1, 2]}), Err(2, "ValueError", "bad")))
    assert error is None and messages == [Ok(1, {"a": [1, 2]}), Err(2, "ValueError", "bad")]


def test_encoder_buffer_is_reused_and_refuses_oversized_messages():
    encoder = FrameEncoder()
    first = encoder.encode(Call(1, "flush", []))
    assert encoder.encode(Call(2, "flush", [])) is first
    with pytest.raises(ValueError):
        encoder.encode(Rows("t", False, [{"_ts": 1.0, "blob": b"x" * (MAX_FRAME + 1)}]))


def test_addresses(monkeypatch):
    monkeypatch.delenv("DREAMLAKE_AGENT_SOCKET", raising=False)
    assert parse_address("unix:///run/x/agent.sock") == ("/run/x/agent.sock", False)
    assert parse_address("/run/x/agent.sock") == ("/run/x/agent.sock", False)
    assert parse_address("auto+unix:///run/x/a.sock") == ("/run/x/a.sock", True)
    assert parse_address("auto") == (default_socket_path(), True)
    monkeypatch.setenv("DREAMLAKE_AGENT_SOCKET", "/tmp/elsewhere/a.sock")
    assert parse_address("auto") == ("/tmp/elsewhere/a.sock", True)
    for bad in ("", "tcp://host:1", "unix://relative/x", "auto+", 3):
        with pytest.raises(ValueError):
            parse_address(bad)


def test_default_socket_is_per_user(monkeypatch, tmp_path):
    monkeypatch.delenv("DREAMLAKE_AGENT_SOCKET", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert default_socket_path() == str(tmp_path / "dreamlake" / "agent.sock")
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert default_socket_path() == f"/tmp/dreamlake-{os.getuid()}/agent.sock"


def test_socket_dir_is_created_0700_and_any_dir_of_ours_is_fine(tmp_path):
    private = tmp_path / "p" / "q"
    check_socket_dir(str(private))
    assert stat.S_IMODE(private.stat().st_mode) == 0o700
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o755)
    check_socket_dir(str(shared))  # ours, 0755: the socket itself is 0600
    check_socket_dir("/tmp")  # world-writable but sticky: no one can replace our socket
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    with pytest.raises(PermissionError, match="not sticky"):
        check_socket_dir(str(open_dir))
    afile = tmp_path / "file"
    afile.write_text("x")
    with pytest.raises((PermissionError, FileExistsError)):
        check_socket_dir(str(afile))


def test_the_byte_examples_in_docs_protocol_md_are_what_we_send():
    doc = (Path(__file__).resolve().parent.parent / "docs" / "protocol.md").read_text()
    dumps = {" ".join(line.split()) for line in doc.splitlines() if line.startswith("00 00 00 ")}
    assert frames(Hello(1, {"pid": 42})).hex(" ") in dumps
    assert frames(Rows("t", False, [{"_ts": 1.5, "v": 1}])).hex(" ") in dumps
