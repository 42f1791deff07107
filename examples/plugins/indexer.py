#!/usr/bin/env python3
"""A statestream plugin in Python: indexes every changed key.

Run by the node as an out-of-process streamer (see docs/plugin-protocol.md):

    [streamers.indexer]
    type = "process"
    command = ["python3", "examples/plugins/indexer.py", "index.jsonl"]
    keys = ["bank"]

For each block it appends one JSON line per record to the file named by its
first argument:

    {"height":3,"store":"bank","key":"6b31","delete":false,"value":"7631"}

(keys and values in hex), syncs the file, then acknowledges the block. A
block may come again after a restart (delivery is at least once): the index
then holds its lines twice, which a reader deduplicates by (height, store,
key).

Only the `protobuf` package is needed (pip install protobuf): the message
classes are built at runtime from a hand-written descriptor that mirrors
streaming-core/proto/statestream/v1/*.proto, field numbers included. No protoc.

Stdout carries the protocol; logs go to stderr, which the node logs under
the streamer's name.

It reads frames of up to 64 MiB, the node's default `max_frame_bytes`. A
node whose `max_frame_bytes` is raised sets the same value for it:

    env = { INDEXER_MAX_FRAME_BYTES = "268435456" }
"""

import json
import os
import sys

from google.protobuf import descriptor_pb2, descriptor_pool

PROTOCOL_VERSION = 1
MAX_FRAME_LEN = int(os.environ.get("INDEXER_MAX_FRAME_BYTES", 64 << 20))
PLUGIN_NAME = "indexer.py"
PLUGIN_VERSION = "0.1.0"

F = descriptor_pb2.FieldDescriptorProto

# (message, [(field, number, type, label, type_name)]), as in the .proto files.
SCHEMA = [
    ("StoreKVPair", [
        ("store_key", 1, F.TYPE_STRING, F.LABEL_OPTIONAL, None),
        ("delete", 2, F.TYPE_BOOL, F.LABEL_OPTIONAL, None),
        ("key", 3, F.TYPE_BYTES, F.LABEL_OPTIONAL, None),
        ("value", 4, F.TYPE_BYTES, F.LABEL_OPTIONAL, None),
    ]),
    ("TxRecord", [
        ("request", 1, F.TYPE_BYTES, F.LABEL_OPTIONAL, None),
        ("response", 2, F.TYPE_BYTES, F.LABEL_OPTIONAL, None),
    ]),
    ("CommitInfo", [
        ("version", 1, F.TYPE_UINT64, F.LABEL_OPTIONAL, None),
        ("app_hash", 2, F.TYPE_BYTES, F.LABEL_OPTIONAL, None),
    ]),
    ("StoreHash", [
        ("store_key", 1, F.TYPE_STRING, F.LABEL_OPTIONAL, None),
        ("hash", 2, F.TYPE_BYTES, F.LABEL_OPTIONAL, None),
    ]),
    ("BlockMetadata", [
        ("height", 1, F.TYPE_UINT64, F.LABEL_OPTIONAL, None),
        ("time_seconds", 2, F.TYPE_INT64, F.LABEL_OPTIONAL, None),
        ("time_nanos", 3, F.TYPE_UINT32, F.LABEL_OPTIONAL, None),
        ("begin_block", 4, F.TYPE_BYTES, F.LABEL_OPTIONAL, None),
        ("end_block", 5, F.TYPE_BYTES, F.LABEL_OPTIONAL, None),
        ("txs", 6, F.TYPE_MESSAGE, F.LABEL_REPEATED, ".statestream.v1.TxRecord"),
        ("commit", 7, F.TYPE_MESSAGE, F.LABEL_OPTIONAL, ".statestream.v1.CommitInfo"),
        ("store_hashes", 8, F.TYPE_MESSAGE, F.LABEL_REPEATED, ".statestream.v1.StoreHash"),
        ("streamed_stores", 9, F.TYPE_STRING, F.LABEL_REPEATED, None),
        ("data_length", 10, F.TYPE_UINT64, F.LABEL_OPTIONAL, None),
        ("data_crc32c", 11, F.TYPE_UINT32, F.LABEL_OPTIONAL, None),
        # meta_crc32c (12) is left out: only meta files carry it, frames never.
    ]),
    ("Hello", [
        ("protocol_version", 1, F.TYPE_UINT32, F.LABEL_OPTIONAL, None),
        ("streamer_name", 2, F.TYPE_STRING, F.LABEL_OPTIONAL, None),
        ("stores", 3, F.TYPE_STRING, F.LABEL_REPEATED, None),
        ("resume_height", 4, F.TYPE_UINT64, F.LABEL_OPTIONAL, None),
    ]),
    ("HelloAck", [
        ("protocol_version", 1, F.TYPE_UINT32, F.LABEL_OPTIONAL, None),
        ("plugin_name", 2, F.TYPE_STRING, F.LABEL_OPTIONAL, None),
        ("plugin_version", 3, F.TYPE_STRING, F.LABEL_OPTIONAL, None),
    ]),
    ("BlockFrame", [
        ("height", 1, F.TYPE_UINT64, F.LABEL_OPTIONAL, None),
        ("meta", 2, F.TYPE_MESSAGE, F.LABEL_OPTIONAL, ".statestream.v1.BlockMetadata"),
        ("records", 3, F.TYPE_BYTES, F.LABEL_OPTIONAL, None),
    ]),
    ("Ack", [
        ("height", 1, F.TYPE_UINT64, F.LABEL_OPTIONAL, None),
        ("error", 2, F.TYPE_STRING, F.LABEL_OPTIONAL, None),
    ]),
]


def build_messages():
    """Returns {name: message class} for SCHEMA."""
    fd = descriptor_pb2.FileDescriptorProto(
        name="statestream/v1/plugin_runtime.proto",
        package="statestream.v1",
        syntax="proto3",
    )
    for name, fields in SCHEMA:
        msg = fd.message_type.add(name=name)
        for fname, number, ftype, label, type_name in fields:
            field = msg.field.add(name=fname, number=number, type=ftype, label=label)
            if type_name:
                field.type_name = type_name
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(fd.SerializeToString())
    try:  # protobuf >= 4.21
        from google.protobuf.message_factory import GetMessageClass

        def make(d):
            return GetMessageClass(d)
    except ImportError:  # older protobuf
        from google.protobuf.message_factory import MessageFactory

        factory = MessageFactory(pool)

        def make(d):
            return factory.GetPrototype(d)

    return {
        name: make(pool.FindMessageTypeByName("statestream.v1." + name))
        for name, _ in SCHEMA
    }


M = build_messages()


class ProtocolError(Exception):
    pass


def read_uvarint(stream):
    """Reads a uvarint; None at a clean end of stream."""
    value, shift = 0, 0
    while True:
        b = stream.read(1)
        if not b:
            if shift == 0:
                return None
            raise ProtocolError("stream ended inside a frame length")
        value |= (b[0] & 0x7F) << shift
        if not b[0] & 0x80:
            return value
        shift += 7
        if shift > 63:
            raise ProtocolError("frame length is not a uvarint")


def decode_uvarint(buf, pos):
    value, shift = 0, 0
    while True:
        if pos >= len(buf):
            raise ProtocolError("truncated uvarint in records")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7


def encode_uvarint(n):
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def read_frame(stream, cls):
    """Reads one frame as a `cls` message; None at a clean end of stream."""
    length = read_uvarint(stream)
    if length is None:
        return None
    if length > MAX_FRAME_LEN:
        raise ProtocolError(
            f"frame of {length} bytes exceeds the limit of {MAX_FRAME_LEN} bytes "
            "(INDEXER_MAX_FRAME_BYTES)"
        )
    payload = stream.read(length)
    if len(payload) != length:
        raise ProtocolError("stream ended inside a frame")
    msg = cls()
    msg.ParseFromString(payload)
    return msg


def write_frame(stream, msg):
    payload = msg.SerializeToString()
    stream.write(encode_uvarint(len(payload)) + payload)
    stream.flush()


def records(buf):
    """The StoreKVPair records of a BlockFrame's `records` bytes."""
    pos = 0
    while pos < len(buf):
        length, pos = decode_uvarint(buf, pos)
        end = pos + length
        if end > len(buf):
            raise ProtocolError("record runs past the end of the block")
        rec = M["StoreKVPair"]()
        rec.ParseFromString(buf[pos:end])
        pos = end
        yield rec


def index_block(out, frame):
    if frame.meta.data_length != len(frame.records):
        raise ProtocolError(
            f"records are {len(frame.records)} bytes, metadata says {frame.meta.data_length}"
        )
    lines = []
    for rec in records(frame.records):
        entry = {
            "height": frame.height,
            "store": rec.store_key,
            "key": rec.key.hex(),
            "delete": rec.delete,
        }
        if not rec.delete:
            entry["value"] = rec.value.hex()
        lines.append(json.dumps(entry, separators=(",", ":")) + "\n")
    out.write("".join(lines))
    out.flush()
    # Durable before the acknowledgement: the node advances its cursor on it.
    os.fsync(out.fileno())


def log(message):
    print(f"{PLUGIN_NAME}: {message}", file=sys.stderr, flush=True)


def main():
    if len(sys.argv) != 2:
        log("usage: indexer.py INDEX_FILE")
        return 2
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer

    hello = read_frame(stdin, M["Hello"])
    if hello is None:
        log("no Hello: the stream is empty")
        return 1
    # Answer first, so that the node can report a version mismatch itself.
    write_frame(stdout, M["HelloAck"](
        protocol_version=PROTOCOL_VERSION,
        plugin_name=PLUGIN_NAME,
        plugin_version=PLUGIN_VERSION,
    ))
    if hello.protocol_version != PROTOCOL_VERSION:
        log(f"the node speaks protocol {hello.protocol_version}, this plugin {PROTOCOL_VERSION}")
        return 1
    log(f"indexing {list(hello.stores)} for {hello.streamer_name} from height {hello.resume_height}")

    with open(sys.argv[1], "a", encoding="utf-8") as out:
        while True:
            frame = read_frame(stdin, M["BlockFrame"])
            if frame is None:
                log("stdin closed, exiting")
                return 0
            ack = M["Ack"](height=frame.height)
            try:
                index_block(out, frame)
            except (OSError, ProtocolError) as e:
                ack.error = str(e)
            write_frame(stdout, ack)


if __name__ == "__main__":
    sys.exit(main())
