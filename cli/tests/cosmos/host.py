#!/usr/bin/env python3
"""A go-plugin host doing what the Cosmos SDK's does with an ABCI listener.

It sets the magic cookie, launches `sh -c "$COSMOS_SDK_ABCI"`, reads the
handshake line, health-checks `plugin`, calls ListenFinalizeBlock then
ListenCommit per block, and GRPCController/Shutdown at the end. Blocks are
deterministic per height (module stores acc, bank, staking, and gov from
its first height on; unsorted change sets with repeated keys), so a block
sent again is the same block.

    host.py --proto DIR --out DIR --heights 1200001-1200020 [--kills 6]
            [--expect-error H] [--seed S]

--heights is a comma list of heights and ranges, sent in that order (a
height listed twice is a replay, a jump a gap). With --kills N the plugin is
SIGKILLed N times, between and during calls; the host relaunches it and
resends the block it got no answer for. --expect-error H: ListenCommit of
height H must fail (on_gap = "halt"); the host then stops.
--before-shutdown CMD: a shell command run before Shutdown (a scrape of the
plugin's /metrics), its stdout kept in the report.

Writes OUT/expected.jsonl (the net change of every acknowledged block, in
canonical order, one record per line as `statestream dump --json` prints
them) and OUT/report.json (acknowledged heights, kills, what the plugin
wrote on stdout besides the handshake line, its exit codes).
"""

import argparse
import importlib
import json
import os
import random
import select
import signal
import subprocess
import sys
import tempfile
import time

COOKIE_KEY = "ABCI_LISTENER_PLUGIN"
COOKIE_VALUE = "ef78114d-7bdf-411c-868f-347c99a78345"
DEADLINE = 60.0


def generate(proto_dir):
    from grpc_tools import protoc
    import grpc_tools

    out = tempfile.mkdtemp(prefix="cosmos-host-stubs-")
    well_known = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    for name in (
        "cosmos/store/v1beta1/listening.proto",
        "tendermint/abci/types.proto",
        "cosmos/store/streaming/abci/grpc.proto",
        "plugin/grpc_controller.proto",
        "healthcheck/health.proto",
    ):
        code = protoc.main([
            "protoc", f"-I{proto_dir}", f"-I{well_known}",
            f"--python_out={out}", f"--grpc_python_out={out}", name,
        ])
        if code != 0:
            sys.exit(f"host.py: protoc failed on {name}")
    sys.path.insert(0, out)


def parse_heights(spec):
    out = []
    for part in spec.split(","):
        if "-" in part:
            a, b = part.split("-")
            out.extend(range(int(a), int(b) + 1))
        else:
            out.append(int(part))
    return out


def block(height, seed):
    """The deterministic block at `height`: (writes in chain order, time, app hash)."""
    rnd = random.Random(seed * 1_000_003 + height)
    stores = ["acc", "bank", "staking"]
    if height % 10 >= 5:
        stores.append("gov")
    writes = []
    for _ in range(rnd.randint(5, 40)):
        store = rnd.choice(stores)
        # A small pool of keys: repeats within a block are common.
        key = f"{store}/{rnd.randint(0, 12):03d}".encode()
        if rnd.random() < 0.15:
            writes.append((store, key, None))
        else:
            writes.append((store, key, f"v{height}.{rnd.randint(0, 9999)}".encode()))
    app_hash = bytes(rnd.getrandbits(8) for _ in range(32))
    return writes, 1_700_000_000 + height * 5, app_hash


def net(height, writes):
    last = {}
    for store, key, value in writes:
        last[(store, key)] = value
    lines = []
    for (store, key) in sorted(last):
        value = last[(store, key)]
        lines.append({
            "height": height, "store": store, "key": key.hex(),
            "value": None if value is None else value.hex(),
        })
    return lines


class Plugin:
    launched = []

    def __init__(self, mods, report):
        self.mods = mods
        self.report = report
        env = dict(os.environ)
        env[COOKIE_KEY] = COOKIE_VALUE
        self.proc = subprocess.Popen(
            ["sh", "-c", os.environ["COSMOS_SDK_ABCI"]],
            stdout=subprocess.PIPE, env=env, start_new_session=True)
        Plugin.launched.append(self.proc)
        line = self._read_line()
        report["handshakes"].append(line)
        parts = line.split("|")
        if len(parts) != 5 or parts[:2] != ["1", "1"] or parts[4] != "grpc":
            sys.exit(f"host.py: bad handshake line {line!r}")
        if parts[2] == "unix":
            target = "unix:" + parts[3]
        elif parts[2] == "tcp":
            target = parts[3]
        else:
            sys.exit(f"host.py: unknown network {parts[2]!r}")
        import grpc
        self.grpc = grpc
        # go-plugin's Go client sends `localhost` as the authority on a unix
        # socket; gRPC C-core would send the socket's path, which is not a
        # valid HTTP/2 authority.
        self.channel = grpc.insecure_channel(
            target, options=[("grpc.default_authority", "localhost")])
        pb, rpc = mods["health"]
        status = rpc.HealthStub(self.channel).Check(
            pb.HealthCheckRequest(service="plugin"), timeout=DEADLINE).status
        if status != pb.HealthCheckResponse.SERVING:
            sys.exit(f"host.py: health of `plugin` is {status}")
        self.abci = mods["abci"][1].ABCIListenerServiceStub(self.channel)
        self.controller = mods["controller"][1].GRPCControllerStub(self.channel)

    def _read_line(self):
        fd = self.proc.stdout.fileno()
        buf = b""
        end = time.monotonic() + DEADLINE
        while not buf.endswith(b"\n"):
            left = end - time.monotonic()
            if left <= 0:
                sys.exit("host.py: no handshake line from the plugin within the deadline")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 1)
                if not chunk:
                    sys.exit(f"host.py: the plugin exited before its handshake ({buf!r})")
                buf += chunk
        return buf.decode().rstrip("\n")

    def send(self, height, seed, during=None):
        """Sends one block; returns None when answered, else the error.
        `during`: SIGKILL the plugin while "finalize" or "commit" runs."""
        abci_pb = self.mods["abci"][0]
        types_pb = self.mods["types"][0]
        kv_pb = self.mods["kv"][0]
        writes, t, app_hash = block(height, seed)
        req = types_pb.RequestFinalizeBlock(
            txs=[b"tx-%d-%d" % (height, i) for i in range(3)], hash=b"h" * 32,
            height=height, proposer_address=b"p" * 20)
        req.time.seconds = t
        req.time.nanos = 1000
        res = types_pb.ResponseFinalizeBlock(
            tx_results=[types_pb.ExecTxResult(code=0, log="ok", gas_used=7)],
            app_hash=app_hash)
        try:
            call = self.abci.ListenFinalizeBlock.future(
                abci_pb.ListenFinalizeBlockRequest(req=req, res=res), timeout=DEADLINE)
            if during == "finalize":
                time.sleep(random.random() * 0.005)
                self.kill()
                # Whatever the answer, ListenCommit was never made.
                return "killed during ListenFinalizeBlock"
            call.result()
            commit = abci_pb.ListenCommitRequest(
                block_height=height, res=types_pb.ResponseCommit(retain_height=0),
                change_set=[kv_pb.StoreKVPair(store_key=s, key=k, value=v or b"",
                                              delete=v is None)
                            for s, k, v in writes])
            call = self.abci.ListenCommit.future(commit, timeout=DEADLINE)
            if during == "commit":
                time.sleep(random.random() * 0.005)
                self.kill()
            call.result()
            return None
        except self.grpc.RpcError as e:
            return e

    def kill(self):
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.finish()

    def finish(self):
        self.proc.wait(timeout=DEADLINE)
        rest = self.proc.stdout.read()
        self.report["extra_stdout"] += rest.decode(errors="replace")
        self.report["exit_codes"].append(self.proc.returncode)
        self.channel.close()

    def shutdown(self):
        self.controller.Shutdown(self.mods["controller"][0].Empty(), timeout=DEADLINE)
        self.finish()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--proto", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--heights", required=True)
    ap.add_argument("--kills", type=int, default=0)
    ap.add_argument("--expect-error", type=int)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--before-shutdown",
                    help="a shell command run before Shutdown; its stdout goes into the report")
    args = ap.parse_args()
    generate(args.proto)
    mods = {
        "health": ("healthcheck.health_pb2", "healthcheck.health_pb2_grpc"),
        "abci": ("cosmos.store.streaming.abci.grpc_pb2",
                 "cosmos.store.streaming.abci.grpc_pb2_grpc"),
        "types": ("tendermint.abci.types_pb2", None),
        "kv": ("cosmos.store.v1beta1.listening_pb2", None),
        "controller": ("plugin.grpc_controller_pb2", "plugin.grpc_controller_pb2_grpc"),
    }
    mods = {k: (importlib.import_module(a), b and importlib.import_module(b))
            for k, (a, b) in mods.items()}
    heights = parse_heights(args.heights)
    report = {"acked": [], "kills": 0, "handshakes": [], "extra_stdout": "",
              "exit_codes": [], "error": None, "blocks": {}, "before_shutdown": None}
    rnd = random.Random(args.seed)
    # Which sends get a kill, and where: between calls (after the answer),
    # during ListenFinalizeBlock, during ListenCommit.
    kill_at = {}
    if args.kills:
        slots = rnd.sample(range(len(heights)), min(args.kills, len(heights)))
        for n, i in enumerate(slots):
            kill_at[i] = ("between", "finalize", "commit")[n % 3]
    expected = {}
    plugin = Plugin(mods, report)
    try:
        drive(args, mods, report, heights, kill_at, expected, plugin)
    finally:
        # Never leave a plugin behind, also when the host fails.
        for p in Plugin.launched:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    with open(os.path.join(args.out, "expected.jsonl"), "w") as f:
        for h in sorted(expected):
            for line in expected[h]:
                f.write(json.dumps(line) + "\n")
    with open(os.path.join(args.out, "report.json"), "w") as f:
        json.dump(report, f)


def drive(args, mods, report, heights, kill_at, expected, plugin):
    for i, height in enumerate(heights):
        mode = kill_at.get(i)
        during = mode if mode in ("finalize", "commit") else None
        err = plugin.send(height, args.seed, during)
        if during:
            report["kills"] += 1
            plugin = Plugin(mods, report)
            if err is not None:
                # No answer: the block is sent again.
                err = plugin.send(height, args.seed)
        if isinstance(err, str):
            sys.exit(f"host.py: block {height}: {err}")
        if err is not None:
            if args.expect_error == height:
                report["error"] = {"height": height, "code": str(err.code()),
                                   "details": err.details()}
                break
            sys.exit(f"host.py: block {height} failed: {err.code()} {err.details()}")
        if args.expect_error == height:
            sys.exit(f"host.py: block {height} was accepted, an error was expected")
        report["acked"].append(height)
        if height not in expected:
            writes, t, app_hash = block(height, args.seed)
            expected[height] = net(height, writes)
            report["blocks"][str(height)] = {"time": t, "app_hash": app_hash.hex()}
        if mode == "between":
            plugin.kill()
            report["kills"] += 1
            plugin = Plugin(mods, report)
    if args.before_shutdown:
        report["before_shutdown"] = subprocess.run(
            ["sh", "-c", args.before_shutdown], stdout=subprocess.PIPE,
            timeout=DEADLINE, check=False).stdout.decode(errors="replace")
    plugin.shutdown()


if __name__ == "__main__":
    main()
