#!/usr/bin/env python3
"""Read statestream block files with the `protobuf` package, no code generation.

    python3 read_blocks.py DIR [--prefix P]
    python3 read_blocks.py --check-proto streaming-core/proto/statestream/v1

The first form prints every record of every block of DIR (the files
`[P-]block-N-data`, heights in increasing order) as one JSON object per line:

    {"height": 1, "store": "bank", "delete": false, "key": "616c696365", "value": "3130"}

(`key` and `value` in lowercase hex; `value` is null for a delete). When a
block has a `[P-]block-N-meta` file, its BlockMetadata is decoded, its own
checksum (meta_crc32c) is checked when it has one, and the data payload's
length and CRC-32C are checked against it. Any error is printed on
stderr with the file and byte offset, and the exit status is 1.

The message classes are built at run time from a FileDescriptorProto written
out by hand below (same names, field numbers and types as
streaming-core/proto/statestream/v1/*.proto); `--check-proto DIR` compares them with
the .proto files and exits 1 on any difference. Requires `pip install protobuf`.
"""

import argparse
import json
import os
import re
import struct
import sys

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

FDP = descriptor_pb2.FieldDescriptorProto

# (message, [(field name, number, type, repeated, message type or None)]),
# exactly as in the .proto files.
SCHEMA = [
    ("StoreKVPair", [
        ("store_key", 1, FDP.TYPE_STRING, "", None),
        ("delete", 2, FDP.TYPE_BOOL, "", None),
        ("key", 3, FDP.TYPE_BYTES, "", None),
        ("value", 4, FDP.TYPE_BYTES, "", None),
    ]),
    ("TxRecord", [
        ("request", 1, FDP.TYPE_BYTES, "", None),
        ("response", 2, FDP.TYPE_BYTES, "", None),
    ]),
    ("CommitInfo", [
        ("version", 1, FDP.TYPE_UINT64, "", None),
        ("app_hash", 2, FDP.TYPE_BYTES, "", None),
    ]),
    ("StoreHash", [
        ("store_key", 1, FDP.TYPE_STRING, "", None),
        ("hash", 2, FDP.TYPE_BYTES, "", None),
    ]),
    ("BlockMetadata", [
        ("height", 1, FDP.TYPE_UINT64, "", None),
        ("time_seconds", 2, FDP.TYPE_INT64, "", None),
        ("time_nanos", 3, FDP.TYPE_UINT32, "", None),
        ("begin_block", 4, FDP.TYPE_BYTES, "", None),
        ("end_block", 5, FDP.TYPE_BYTES, "", None),
        ("txs", 6, FDP.TYPE_MESSAGE, "repeated", "TxRecord"),
        ("commit", 7, FDP.TYPE_MESSAGE, "", "CommitInfo"),
        ("store_hashes", 8, FDP.TYPE_MESSAGE, "repeated", "StoreHash"),
        ("streamed_stores", 9, FDP.TYPE_STRING, "repeated", None),
        ("data_length", 10, FDP.TYPE_UINT64, "", None),
        ("data_crc32c", 11, FDP.TYPE_UINT32, "", None),
        ("meta_crc32c", 12, FDP.TYPE_FIXED32, "optional", None),
        ("source_app_hash", 13, FDP.TYPE_BYTES, "", None),
    ]),
]

PACKAGE = "statestream.v1"
HEADER_LEN = 8


def build_classes():
    """Message classes for SCHEMA, from a hand-built FileDescriptorProto."""
    fd = descriptor_pb2.FileDescriptorProto(
        name="statestream/v1/read_blocks_schema.proto", package=PACKAGE, syntax="proto3"
    )
    for message, fields in SCHEMA:
        m = fd.message_type.add(name=message)
        for name, number, ftype, label, type_name in fields:
            f = m.field.add(name=name, number=number, type=ftype, json_name=_json_name(name))
            f.label = FDP.LABEL_REPEATED if label == "repeated" else FDP.LABEL_OPTIONAL
            if label == "optional":
                # As protoc describes a proto3 `optional` field: in a
                # synthetic oneof of its own, so that HasField works.
                f.proto3_optional = True
                f.oneof_index = len(m.oneof_decl)
                m.oneof_decl.add(name="_" + name)
            if type_name:
                f.type_name = "." + PACKAGE + "." + type_name
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fd)
    classes = {}
    for message, _ in SCHEMA:
        desc = pool.FindMessageTypeByName(PACKAGE + "." + message)
        if hasattr(message_factory, "GetMessageClass"):
            classes[message] = message_factory.GetMessageClass(desc)
        else:  # protobuf < 4.21
            classes[message] = message_factory.MessageFactory(pool).GetPrototype(desc)
    return classes


def _json_name(name):
    head, *rest = name.split("_")
    return head + "".join(p.capitalize() for p in rest)


# --- CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), table driven.

def _crc_table():
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC_TABLE = _crc_table()


def crc32c(data):
    crc = 0xFFFFFFFF
    for b in data:
        crc = _CRC_TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


# --- Reading.

class FormatError(Exception):
    pass


def read_uvarint(buf, pos):
    """Returns (value, new position); raises IndexError/ValueError when bad."""
    value = 0
    for shift in range(0, 64, 7):
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
    raise ValueError("uvarint longer than 10 bytes")


def read_framed(path):
    """The bytes after the 8-byte big-endian length header, checked."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < HEADER_LEN:
        raise FormatError(f"{path}: truncated header at offset 0 ({len(data)} bytes)")
    (length,) = struct.unpack(">Q", data[:HEADER_LEN])
    if length != len(data) - HEADER_LEN:
        raise FormatError(
            f"{path}: length mismatch: header says {length}, file holds {len(data) - HEADER_LEN}"
        )
    return data[HEADER_LEN:]


def block_heights(directory, prefix):
    stem = f"{prefix}-block-" if prefix else "block-"
    pattern = re.compile(re.escape(stem) + r"(0|[1-9][0-9]*)-data")
    heights = []
    for name in os.listdir(directory):
        m = pattern.fullmatch(name)
        if m:
            heights.append(int(m.group(1)))
    return sorted(heights)


def read_block(directory, prefix, height, classes):
    """Yields one dict per record of block `height`."""
    stem = f"{prefix}-block-{height}" if prefix else f"block-{height}"
    data_path = os.path.join(directory, stem + "-data")
    meta_path = os.path.join(directory, stem + "-meta")
    payload = read_framed(data_path)
    if os.path.exists(meta_path):
        meta = classes["BlockMetadata"]()
        raw = read_framed(meta_path)
        try:
            meta.ParseFromString(raw)
        except Exception as e:  # DecodeError
            raise FormatError(f"{meta_path}: block metadata does not decode: {e}")
        # The meta file's own checksum, when it has one (older files and
        # other writers do not): the last 5 bytes of the message are its
        # key 0x65 and the CRC-32C, fixed32 little-endian, of the bytes before.
        if meta.HasField("meta_crc32c"):
            if raw[-5:] != b"\x65" + struct.pack("<I", meta.meta_crc32c):
                raise FormatError(f"{meta_path}: the checksum field is not the message's last 5 bytes")
            crc = crc32c(raw[:-5])
            if crc != meta.meta_crc32c:
                raise FormatError(
                    f"{meta_path}: meta checksum mismatch: stored {meta.meta_crc32c:08x}, computed {crc:08x}"
                )
        if meta.height != height:
            raise FormatError(f"{meta_path}: height mismatch: {meta.height}")
        if meta.data_length != len(payload):
            raise FormatError(f"{data_path}: length mismatch: meta says {meta.data_length}")
        crc = crc32c(payload)
        if meta.data_crc32c != crc:
            raise FormatError(
                f"{data_path}: crc mismatch: meta says {meta.data_crc32c:08x}, payload is {crc:08x}"
            )
    pos = 0
    while pos < len(payload):
        start = pos
        try:
            length, pos = read_uvarint(payload, pos)
            if pos + length > len(payload):
                raise ValueError("record length runs past the end of the data")
            kv = classes["StoreKVPair"]()
            kv.ParseFromString(payload[pos:pos + length])
        except Exception as e:
            raise FormatError(f"{data_path}: bad record at offset {HEADER_LEN + start}: {e}")
        pos += length
        yield {
            "height": height,
            "store": kv.store_key,
            "delete": kv.delete,
            "key": kv.key.hex(),
            "value": None if kv.delete else kv.value.hex(),
        }


# --- Checking the hand-written schema against the .proto files.

_SCALARS = {
    "string": FDP.TYPE_STRING, "bool": FDP.TYPE_BOOL, "bytes": FDP.TYPE_BYTES,
    "uint64": FDP.TYPE_UINT64, "int64": FDP.TYPE_INT64, "uint32": FDP.TYPE_UINT32,
    "int32": FDP.TYPE_INT32, "sint64": FDP.TYPE_SINT64, "sint32": FDP.TYPE_SINT32,
    "fixed64": FDP.TYPE_FIXED64, "fixed32": FDP.TYPE_FIXED32, "double": FDP.TYPE_DOUBLE,
    "float": FDP.TYPE_FLOAT,
}
_MESSAGE_RE = re.compile(r"^message\s+(\w+)\s*\{(.*?)^\}", re.S | re.M)
_FIELD_RE = re.compile(r"^\s*(?:(repeated|optional)\s+)?([\w.]+)\s+(\w+)\s*=\s*(\d+)\s*;", re.M)


def proto_messages(proto_dir):
    """{message: {(name, number, type, label, message type)}} from .proto text."""
    messages = {}
    for file in sorted(os.listdir(proto_dir)):
        if not file.endswith(".proto"):
            continue
        with open(os.path.join(proto_dir, file)) as f:
            text = re.sub(r"//[^\n]*", "", f.read())
        for m in _MESSAGE_RE.finditer(text):
            fields = set()
            for label, ftype, name, number in _FIELD_RE.findall(m.group(2)):
                if ftype in _SCALARS:
                    fields.add((name, int(number), _SCALARS[ftype], label, None))
                else:
                    fields.add((name, int(number), FDP.TYPE_MESSAGE, label, ftype))
            messages[m.group(1)] = fields
    return messages


def check_proto(proto_dir):
    """Problems found comparing SCHEMA with the .proto files (empty: none)."""
    parsed = proto_messages(proto_dir)
    problems = []
    for message, fields in SCHEMA:
        if message not in parsed:
            problems.append(f"message {message} is not in {proto_dir}")
            continue
        ours, theirs = set(fields), parsed[message]
        for f in sorted(ours - theirs, key=str):
            problems.append(f"{message}: field {f} is not in the .proto")
        for f in sorted(theirs - ours, key=str):
            problems.append(f"{message}: .proto field {f} is missing here")
    return problems


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", nargs="?", help="directory of block files")
    parser.add_argument("--prefix", default="", help="file-name prefix (default: none)")
    parser.add_argument("--check-proto", metavar="PROTO_DIR",
                        help="compare the built-in schema with the .proto files in PROTO_DIR")
    args = parser.parse_args(argv)
    if args.check_proto:
        problems = check_proto(args.check_proto)
        for p in problems:
            print(p, file=sys.stderr)
        if not problems:
            print(f"schema matches {args.check_proto}: {len(SCHEMA)} messages")
        return 1 if problems else 0
    if not args.dir:
        parser.error("DIR is required")
    classes = build_classes()
    try:
        for height in block_heights(args.dir, args.prefix):
            for record in read_block(args.dir, args.prefix, height, classes):
                print(json.dumps(record))
    except (FormatError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
