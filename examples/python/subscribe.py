#!/usr/bin/env python3
"""Follow a statestream `serve` streamer over gRPC with `grpcio`.

    python3 subscribe.py ADDR [--snapshot | --from H] [--until H] [--token T]
                         [--cursor-file F] [--proto DIR]
    python3 subscribe.py ADDR --datastream [--keys K ...] [--until-updates N]

The first form calls `statestream.v1.StateStream/Subscribe` and prints one
JSON object per line: `{"type": "snapshot", "height": H, "store": ..., "key":
..., "value": ...}` per snapshot entry, `{"type": "create"|"update"|"delete",
"height": H, ...}` per change, `{"type": "end", "height": H}` per block end
(keys and values in lowercase hex). With `--cursor-file` it stores the last
complete height after every block and resumes after it on the next run; it
reconnects with backoff when the server goes away. `--until H` stops once the
state at height H or later is complete (a snapshot's end, or a block's end).

The second form is a datastream client (`datastream.DataService`): it lists
the capabilities, then subscribes to `--keys` (default: everything) and prints
each `DataResponse` as `{"key": ..., "value": hex, "value_type": ...,
"seconds": ...}` lines, stopping after `--until-updates` responses after the
initial state.

The Python stubs are generated at start into a temporary directory from the
.proto files (`--proto`, default `streaming-serve/proto` of this repository)
with grpcio-tools. Requires `pip install grpcio grpcio-tools`.
"""

import argparse
import importlib
import json
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_PROTO = os.path.join(HERE, "..", "..", "streaming-serve", "proto")


def generate(proto_dir):
    """Generates the stubs of both services; returns the output directory."""
    from grpc_tools import protoc
    import grpc_tools

    out = tempfile.mkdtemp(prefix="statestream-stubs-")
    well_known = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    for name in ("statestream/v1/serve.proto", "datastream/datastream.proto"):
        code = protoc.main([
            "protoc",
            f"-I{proto_dir}",
            f"-I{well_known}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            name,
        ])
        if code != 0:
            sys.exit(f"subscribe.py: protoc failed on {name}")
    sys.path.insert(0, out)
    return out


def load_cursor(path):
    try:
        with open(path) as f:
            return int(f.read().strip())
    except FileNotFoundError:
        return None


def save_cursor(path, height):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(f"{height}\n")
    os.replace(tmp, path)


def emit(obj):
    print(json.dumps(obj), flush=True)


def statestream(args):
    import grpc
    pb = importlib.import_module("statestream.v1.serve_pb2")
    rpc = importlib.import_module("statestream.v1.serve_pb2_grpc")
    ops = {pb.OP_CREATE: "create", pb.OP_UPDATE: "update", pb.OP_DELETE: "delete"}
    metadata = [("authorization", f"Bearer {args.token}")] if args.token else []
    retryable = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED,
                 grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.CANCELLED}
    backoff = 0.1
    while True:
        cursor = load_cursor(args.cursor_file) if args.cursor_file else None
        request = pb.SubscribeRequest()
        if cursor is not None:
            request.from_height = cursor + 1
        elif args.snapshot:
            request.snapshot.SetInParent()
        elif args.from_height is not None:
            request.from_height = args.from_height
        else:
            request.live.SetInParent()
        try:
            with grpc.insecure_channel(args.address) as channel:
                stub = rpc.StateStreamStub(channel)
                for message in stub.Subscribe(request, metadata=metadata):
                    backoff = 0.1
                    kind = message.WhichOneof("message")
                    if kind == "snapshot":
                        chunk = message.snapshot
                        for e in chunk.entries:
                            emit({"type": "snapshot", "height": chunk.height, "store": e.store,
                                  "key": e.key.hex(), "value": e.value.hex()})
                        if chunk.end:
                            emit({"type": "snapshot_end", "height": chunk.height})
                            if args.cursor_file:
                                save_cursor(args.cursor_file, chunk.height)
                            if args.until is not None and chunk.height >= args.until:
                                return 0
                    elif kind == "block":
                        block = message.block
                        for c in block.changes:
                            obj = {"type": ops.get(c.op, "set"), "height": block.height,
                                   "store": c.store, "key": c.key.hex()}
                            if c.op != pb.OP_DELETE:
                                obj["value"] = c.value.hex()
                            emit(obj)
                        if block.end:
                            emit({"type": "end", "height": block.height})
                            if args.cursor_file:
                                save_cursor(args.cursor_file, block.height)
                            if args.until is not None and block.height >= args.until:
                                return 0
                    # heartbeats: nothing to print
        except grpc.RpcError as e:
            if e.code() not in retryable:
                print(f"subscribe.py: {e.code().name}: {e.details()}", file=sys.stderr)
                return 1
            print(f"subscribe.py: {e.code().name}, reconnecting in {backoff:.1f} s", file=sys.stderr)
            time.sleep(backoff)
            backoff = min(backoff * 2, 5.0)


def datastream(args):
    import grpc
    pb = importlib.import_module("datastream.datastream_pb2")
    rpc = importlib.import_module("datastream.datastream_pb2_grpc")
    metadata = [("authorization", f"Bearer {args.token}")] if args.token else []
    with grpc.insecure_channel(args.address) as channel:
        stub = rpc.DataServiceStub(channel)
        caps = stub.ListCapabilities(pb.ListCapabilitiesRequest(), metadata=metadata)
        for c in caps.capabilities:
            emit({"capability": c.key, "value_type": c.value_type})
        responses = 0
        for response in stub.Subscribe(pb.DataRequest(keys=args.keys), metadata=metadata):
            for key in sorted(response.data):
                d = response.data[key]
                emit({"key": d.key, "value": d.value.hex(), "value_type": d.value_type,
                      "seconds": d.updated_at.seconds, "response": responses})
            responses += 1
            if args.until_updates is not None and responses > args.until_updates:
                return 0
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("address", help="HOST:PORT of the serve streamer")
    p.add_argument("--proto", default=DEFAULT_PROTO)
    p.add_argument("--token")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--snapshot", action="store_true")
    g.add_argument("--from", dest="from_height", type=int)
    p.add_argument("--until", type=int)
    p.add_argument("--cursor-file")
    p.add_argument("--datastream", action="store_true")
    p.add_argument("--keys", nargs="*", default=[])
    p.add_argument("--until-updates", type=int)
    args = p.parse_args()
    generate(args.proto)
    return datastream(args) if args.datastream else statestream(args)


if __name__ == "__main__":
    sys.exit(main())
