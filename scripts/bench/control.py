#!/usr/bin/env python3
"""Control-plane latency and throughput: outpost `status` vs supervisord 4
`getAllProcessInfo`, side by side in one run.

Both manage the same number of programs (`sleep 3600`: exec agents in outpost,
[program:x] in supervisord) and are asked over their Unix sockets: outpost's
msgpack protocol through runtime.control.ControlClient, supervisord's XML-RPC
through supervisor.xmlrpc.SupervisorTransport (what supervisorctl uses). Each
client keeps one connection and calls in a closed loop; 1 client, then 8
concurrent client processes. Latencies are every call's wall time, merged over
clients; requests/s is calls completed / measured seconds. For context the same
1-client loop also times outpost's `ping` (the protocol with no work) and a bare
trio echo server with a raw socket client (the machine's round-trip floor), once
back to back and once with the server left idle for 50 us between requests (what
a client decoding its answer does to it; on a VM, waking a halted vCPU costs),
and our client against a trio server that replays the runtime's own status answer
to every request, built once (the floor for status with no work on the server).

    .venv/bin/python scripts/bench/control.py [--programs 10] [--seconds 5] [--json]

--json prints ONE JSON object with every figure and ratio. supervisor is
pip-installed into this venv if missing.
"""

from __future__ import annotations

import argparse
import array
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
# scripts/bench/http.py would shadow the stdlib's http (xmlrpc.client needs it).
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(ROOT))

from tests.runtime_proc import RuntimeProc, wait_for  # noqa: E402

TARGET_P50_MS = 0.1
TARGET_RATE_RATIO = 4.0
ECHO_IDLE_US = 50


# -- workers (run as separate processes) ---------------------------------------------


def _outpost_call(path: str, method: str = "status"):
    from runtime.control import ControlClient

    client = ControlClient(path)
    return lambda: client.call(method)


def _echo_call(path: str):
    import socket

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    payload = b"\0\0\0\x10" + b"x" * 16  # a ping-sized frame

    def call() -> bytes:
        sock.sendall(payload)
        return sock.recv(65536)
    return call


def _serve_unix(path: str, handle) -> None:
    """Run a trio server on the Unix socket `path`: `await handle(sock)` per connection."""
    import socket

    import trio

    async def serve() -> None:
        listener = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        await listener.bind(path)
        listener.listen()
        async with trio.open_nursery() as nursery:
            while True:
                conn, _ = await listener.accept()
                nursery.start_soon(handle, conn)

    trio.run(serve)


def echo_server(path: str) -> None:
    """The transport floor: a bare trio server that echoes whatever it reads."""

    async def echo(conn) -> None:
        with conn:
            while data := await conn.recv(65536):
                await conn.send(data)

    _serve_unix(path, echo)


def canned_server(path: str, frame_file: str) -> None:
    """Speak the control protocol, answering every request with the result held in
    `frame_file` (a status answer captured from the runtime, its table kept as the
    same encoded bytes): everything a status call costs except the runtime's work."""
    import msgpack

    from runtime.control.protocol import CLOSED, NEED_DATA, SERVER, Connection, Hello, Response

    body = Path(frame_file).read_bytes()[4:]
    result = msgpack.unpackb(body, raw=False, ext_hook=msgpack.ExtType)["result"]

    async def answer(sock) -> None:
        conn = Connection(SERVER)
        with sock:
            while (event := conn.next_event()) is not CLOSED:
                if event is NEED_DATA:
                    conn.receive_data(await sock.recv(65536))
                elif isinstance(event, Hello):
                    await sock.send(conn.send(Hello(server="canned")))
                else:
                    await sock.send(conn.send(Response(event.id, result)))

    _serve_unix(path, answer)


def status_frame(path: str) -> bytes:
    """One status answer as it travels on the wire (length prefix included)."""
    import socket

    from runtime.control.protocol import CLIENT, Connection, Hello, Request

    conn = Connection(CLIENT)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(path)
        sock.sendall(conn.send(Hello()))
        conn.receive_data(sock.recv(65536))
        assert isinstance(conn.next_event(), Hello)
        sock.sendall(conn.send(Request(1, "status", {})))
        data = b""
        while len(data) < 4 or len(data) < 4 + int.from_bytes(data[:4], "big"):
            data += sock.recv(65536)
        return data


def _supervisord_call(path: str):
    import xmlrpc.client

    from supervisor.xmlrpc import SupervisorTransport

    proxy = xmlrpc.client.ServerProxy(
        "http://127.0.0.1", transport=SupervisorTransport(None, None, f"unix://{path}"))
    return proxy.supervisor.getAllProcessInfo


def worker(system: str, path: str, start_at: float, seconds: float, out: str) -> None:
    """Call in a closed loop from `start_at` (CLOCK_MONOTONIC, shared by processes)
    for `seconds`; write each call's latency in ns to `out`."""
    if system in ("outpost", "canned"):  # canned: a server that replays a status answer
        call = _outpost_call(path)
    elif system == "outpost-ping":  # the transport alone: the cheapest method there is
        call = _outpost_call(path, "ping")
    elif system in ("echo", "echo-idle"):  # no protocol: trio echo server, raw client
        call = _echo_call(path)
    else:
        call = _supervisord_call(path)
    call()  # connect and warm up before the clock starts
    while time.monotonic() < start_at:
        call()
    lat = array.array("q")
    perf = time.perf_counter_ns
    end = start_at + seconds
    # echo-idle: the server idles ECHO_IDLE_US between requests, as it does while a
    # real client decodes an answer (busy-waiting, so the client itself stays awake).
    idle_ns = ECHO_IDLE_US * 1000 if system == "echo-idle" else 0
    while True:
        t0 = perf()
        call()
        t1 = perf()
        lat.append(t1 - t0)
        if idle_ns:
            while perf() - t1 < idle_ns:
                pass
        if time.monotonic() >= end:
            break
    with open(out, "wb") as f:
        lat.tofile(f)


# -- orchestration ------------------------------------------------------------------


def ensure_supervisor() -> str:
    try:
        import supervisor  # noqa: F401
    except ImportError:
        print("installing supervisor into this venv ...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "supervisor>=4,<5"],
                       check=True)
    from importlib.metadata import version

    return version("supervisor")


def start_outpost(directory: Path, programs: int) -> tuple[subprocess.Popen, str]:
    agents = "".join(f'[[agents]]\nname = "p{i}"\nkind = "exec"\ncommand = "sleep 3600"\n\n'
                     for i in range(programs))
    config = directory / "outpost.toml"
    config.write_text('[runtime]\ndata_dir = "data"\nrun_dir = "run"\nlog_level = "warning"\n\n'
                      + agents)
    rt = RuntimeProc(config).start()

    def all_running() -> bool:
        st = rt.try_status()
        return bool(st) and sum(a["state"] == "running" for a in st["agents"]) == programs
    wait_for(all_running, 60, "outpost agents running")
    return rt.proc, str(rt.socket)


def start_supervisord(directory: Path, programs: int) -> tuple[subprocess.Popen, str]:
    sock = directory / "supervisor.sock"
    conf = directory / "supervisord.conf"
    conf.write_text(
        f"[unix_http_server]\nfile={sock}\nchmod=0700\n\n"
        f"[supervisord]\nnodaemon=true\nlogfile={directory}/supervisord.log\n"
        f"pidfile={directory}/supervisord.pid\nchildlogdir={directory}\nloglevel=warn\n\n"
        "[rpcinterface:supervisor]\n"
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n\n"
        + "".join(f"[program:p{i}]\ncommand=sleep 3600\nautorestart=true\n"
                  f"stdout_logfile=NONE\nstderr_logfile=NONE\n\n" for i in range(programs)))
    exe = shutil.which("supervisord", path=str(Path(sys.executable).parent)) or "supervisord"
    proc = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)

    def all_running() -> bool:
        if proc.poll() is not None:
            raise SystemExit(f"supervisord exited {proc.returncode}")
        if not sock.exists():
            return False
        try:
            infos = _supervisord_call(str(sock))()
        except OSError:
            return False
        return sum(i["statename"] == "RUNNING" for i in infos) == programs
    wait_for(all_running, 60, "supervisord programs running")
    return proc, str(sock)


def measure(system: str, path: str, clients: int, seconds: float, tmp: Path) -> dict:
    start_at = time.monotonic() + 1.0 + 0.2 * clients  # after every worker has connected
    outs = [tmp / f"{system}-{clients}-{i}.lat" for i in range(clients)]
    procs = [subprocess.Popen([sys.executable, __file__, "--worker", system, path,
                               repr(start_at), repr(seconds), str(out)]) for out in outs]
    for p in procs:
        if p.wait(timeout=seconds + 120) != 0:
            raise SystemExit(f"{system} worker failed ({p.returncode})")
    lat = array.array("q")
    per_client = []
    for out in outs:
        one = array.array("q")
        one.frombytes(out.read_bytes())
        per_client.append(len(one))
        lat.extend(one)
    ordered = sorted(lat)

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))] / 1e6

    return {"clients": clients, "requests": len(ordered), "seconds": seconds,
            "requests_per_s": len(ordered) / seconds,
            "latency_p50_ms": pct(0.50), "latency_p99_ms": pct(0.99),
            "latency_mean_ms": statistics.fmean(ordered) / 1e6,
            "latency_max_ms": ordered[-1] / 1e6,
            "requests_per_client_min": min(per_client),
            "requests_per_client_max": max(per_client)}


def machine() -> dict:
    model = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"cpu": model, "cpus": os.cpu_count(), "kernel": platform.release(),
            "python": platform.python_version(), **idle_policy()}


def idle_policy() -> dict:
    """How this machine's CPUs idle, which sets the price of every wakeup in a round
    trip: the cpuidle driver and, for KVM guests with cpuidle-haltpoll, how long an
    idle vCPU polls before it halts (Linux's default is 200000 ns; 0 halts at once,
    and each halt is a VM exit that the next request must wait out). Read only."""
    def read(path: str) -> str | None:
        try:
            return Path(path).read_text().strip()
        except OSError:
            return None
    poll_ns = read("/sys/module/haltpoll/parameters/guest_halt_poll_ns")
    return {"cpuidle_driver": read("/sys/devices/system/cpu/cpuidle/current_driver"),
            "guest_halt_poll_ns": None if poll_ns is None else int(poll_ns)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--programs", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=5.0, help="per measurement")
    parser.add_argument("--json", action="store_true", help="ONE JSON object on stdout")
    args = parser.parse_args()

    supervisor_version = ensure_supervisor()
    results: dict[str, Any] = {
        "benchmark": "control status RPC: outpost status vs supervisord getAllProcessInfo",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(), "programs": args.programs,
        "supervisor_version": supervisor_version, "seconds_per_measurement": args.seconds,
        # Other work on the machine skews every figure: say how busy it was.
        "load_average_1m_before": os.getloadavg()[0],
    }
    with tempfile.TemporaryDirectory(prefix="outpost-bench-") as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "o").mkdir()
        (tmp / "s").mkdir()
        outpost, outpost_sock = start_outpost(tmp / "o", args.programs)
        supervisord, supervisord_sock = start_supervisord(tmp / "s", args.programs)

        frame = status_frame(outpost_sock)
        results["outpost_status_frame_bytes"] = len(frame)
        (tmp / "status.frame").write_bytes(frame)
        echo_sock, canned_sock = str(tmp / "echo.sock"), str(tmp / "canned.sock")
        echo = subprocess.Popen([sys.executable, __file__, "--echo-server", echo_sock])
        canned = subprocess.Popen([sys.executable, __file__, "--canned-server", canned_sock,
                                   str(tmp / "status.frame")])
        wait_for(lambda: Path(echo_sock).exists(), 30, "the echo server")
        wait_for(lambda: Path(canned_sock).exists(), 30, "the canned status server")
        try:
            for clients in (1, 8):
                results[f"outpost_{clients}_client"] = measure(
                    "outpost", outpost_sock, clients, args.seconds, tmp)
                results[f"supervisord_{clients}_client"] = measure(
                    "supervisord", supervisord_sock, clients, args.seconds, tmp)
            # Context for what bounds status: the same round trip with no work in it.
            results["outpost_ping_1_client"] = measure(
                "outpost-ping", outpost_sock, 1, args.seconds, tmp)
            # The machine's floor: a round trip through trio with no protocol and no work.
            results["echo_floor_1_client"] = measure("echo", echo_sock, 1, args.seconds, tmp)
            # The same after the server idled ECHO_IDLE_US: what waking a halted vCPU adds.
            results["echo_floor_after_idle_1_client"] = measure(
                "echo-idle", echo_sock, 1, args.seconds, tmp)
            results["echo_idle_us_between_calls"] = ECHO_IDLE_US
            # Our client's status call when the server has nothing to compute.
            results["status_floor_canned_answer_1_client"] = measure(
                "canned", canned_sock, 1, args.seconds, tmp)
        finally:
            for proc in (outpost, supervisord, echo, canned):
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
    results["load_average_1m_after"] = os.getloadavg()[0]
    for clients in (1, 8):
        o, s = results[f"outpost_{clients}_client"], results[f"supervisord_{clients}_client"]
        results[f"rate_ratio_outpost_over_supervisord_{clients}_client"] = \
            o["requests_per_s"] / s["requests_per_s"]
        results[f"p50_ratio_supervisord_over_outpost_{clients}_client"] = \
            s["latency_p50_ms"] / o["latency_p50_ms"]
    results["target_outpost_p50_ms"] = TARGET_P50_MS
    results["target_rate_ratio"] = TARGET_RATE_RATIO
    results["target_p50_met_1_client"] = \
        results["outpost_1_client"]["latency_p50_ms"] <= TARGET_P50_MS
    results["target_rate_ratio_met_1_client"] = \
        results["rate_ratio_outpost_over_supervisord_1_client"] >= TARGET_RATE_RATIO
    results["target_rate_ratio_met_8_client"] = \
        results["rate_ratio_outpost_over_supervisord_8_client"] >= TARGET_RATE_RATIO

    if args.json:
        print(json.dumps(results, sort_keys=True))
        return 0
    m = results["machine"]
    print(f"{results['benchmark']}\n{results['date']}  {m['cpu']} x{m['cpus']}, "
          f"Linux {m['kernel']}, Python {m['python']}, cpuidle {m['cpuidle_driver']} "
          f"(guest_halt_poll_ns {m['guest_halt_poll_ns']}), supervisor "
          f"{supervisor_version}, {args.programs} programs, {args.seconds}s per run, "
          f"load average {results['load_average_1m_before']:.2f} before, "
          f"{results['load_average_1m_after']:.2f} after\n")
    print(f"{'system':<12} {'clients':>7} {'req/s':>10} {'p50 ms':>9} {'p99 ms':>9} "
          f"{'mean ms':>9}")
    for clients in (1, 8):
        for system in ("outpost", "supervisord"):
            r = results[f"{system}_{clients}_client"]
            print(f"{system:<12} {clients:>7} {r['requests_per_s']:>10.0f} "
                  f"{r['latency_p50_ms']:>9.4f} {r['latency_p99_ms']:>9.4f} "
                  f"{r['latency_mean_ms']:>9.4f}")
    r = results["outpost_ping_1_client"]
    print(f"{'(ping)':<12} {1:>7} {r['requests_per_s']:>10.0f} {r['latency_p50_ms']:>9.4f} "
          f"{r['latency_p99_ms']:>9.4f} {r['latency_mean_ms']:>9.4f}   outpost transport only")
    r = results["echo_floor_1_client"]
    print(f"{'(echo)':<12} {1:>7} {r['requests_per_s']:>10.0f} {r['latency_p50_ms']:>9.4f} "
          f"{r['latency_p99_ms']:>9.4f} {r['latency_mean_ms']:>9.4f}   bare trio echo: "
          "the machine's floor")
    r = results["echo_floor_after_idle_1_client"]
    print(f"{'(echo idle)':<12} {1:>7} {r['requests_per_s']:>10.0f} {r['latency_p50_ms']:>9.4f} "
          f"{r['latency_p99_ms']:>9.4f} {r['latency_mean_ms']:>9.4f}   the same, server idle "
          f"{ECHO_IDLE_US} us between calls")
    r = results["status_floor_canned_answer_1_client"]
    print(f"{'(canned)':<12} {1:>7} {r['requests_per_s']:>10.0f} {r['latency_p50_ms']:>9.4f} "
          f"{r['latency_p99_ms']:>9.4f} {r['latency_mean_ms']:>9.4f}   our status client, a "
          "server that only replays the answer")
    print(f"status answer: {results['outpost_status_frame_bytes']} bytes on the wire")
    print()
    for clients in (1, 8):
        print(f"{clients} client(s): outpost/supervisord rate "
              f"{results[f'rate_ratio_outpost_over_supervisord_{clients}_client']:.1f}x, "
              f"supervisord/outpost p50 "
              f"{results[f'p50_ratio_supervisord_over_outpost_{clients}_client']:.1f}x")
    print(f"\ntargets: outpost p50 <= {TARGET_P50_MS} ms (1 client): "
          f"{'met' if results['target_p50_met_1_client'] else 'MISSED'}; rate >= "
          f"{TARGET_RATE_RATIO}x supervisord: 1 client "
          f"{'met' if results['target_rate_ratio_met_1_client'] else 'MISSED'}, 8 clients "
          f"{'met' if results['target_rate_ratio_met_8_client'] else 'MISSED'}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--echo-server":
        echo_server(sys.argv[2])
        sys.exit(0)
    if len(sys.argv) > 1 and sys.argv[1] == "--canned-server":
        canned_server(sys.argv[2], sys.argv[3])
        sys.exit(0)
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        _, _, system, path, start_at, seconds, out = sys.argv
        worker(system, path, float(start_at), float(seconds), out)
        sys.exit(0)
    sys.exit(main())
