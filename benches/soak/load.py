#!/usr/bin/env python3
"""Load generator and report for benches/soak/run.sh (stdlib only; uvloop if importable).

  load.py probe  --base URL --spec SPEC --flavor F               each variant once, vs. expected
  load.py warm   --base URL --spec SPEC                          warm-up: what "warm" will ask for
  load.py run    --base URL --spec SPEC --flavor F --out JSON    CLIENTS clients for DURATION s
  load.py report --meta META.json --out FILE.md RESULT.json...   the table

A hand-rolled HTTP/1.1 client over asyncio streams: one keep-alive connection per client for
well-formed requests; a fresh connection for each wire-level malformed one (oversize headers,
a garbage request line, a request sent slowly, headers never finished). Every 200 body of a
manifest or blob is sha256-checked against the digest asked for. An answer is unexpected when
its status (or, for wire-level kinds, its connection outcome) is not in the flavor's expected
set for the kind; a connection error on a well-formed request is always unexpected, except a
reused keep-alive connection that fails before any byte of the answer, which is retried once on
a new connection (as HTTP clients do) and counted.
"""

import argparse
import asyncio
import hashlib
import json
import os
import random
import sys
import time

ACCEPT = ", ".join([
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
])
REQ_TIMEOUT = 60.0      # a well-formed request that takes longer is an unexpected "timeout"
STALL_GIVE_UP = 20.0    # a stalled request held open this long is "held" (client gives up)
SLOW_SEND_S = 3.0       # a slowly-sent request is spread over this long
OVERSIZE = 80 * 1024    # one 80 KiB header: past portcullis' default 64 KiB max_header_size

# kind -> expected outcomes, per flavor. Wire-level outcomes: "closed" (EOF before any answer),
# "reset" (ECONNRESET), "held" (still open after STALL_GIVE_UP).
EXPECT = {
    "portcullis": {
        "warm manifest (tag)": {"200"},
        "warm manifest (digest)": {"200"},
        "warm blob": {"200"},
        "cold manifest": {"200"},
        "cold blob": {"200"},
        "denied: unsigned, no rule": {"403"},
        "denied: unsigned, keyed rule": {"403"},
        "denied: wrong key": {"403"},
        "denied: blob of a denied image": {"403"},
        "malformed: bad digest": {"400"},
        "malformed: bad tag": {"400"},
        "malformed: invalid name": {"400"},
        "malformed: unknown name, keyed rule": {"404"},
        "malformed: unknown name, no rule": {"403"},
        # A blob no verified manifest of the repository references: DENIED, whether it exists.
        "malformed: unknown blob": {"403"},
        "malformed: oversize header": {"431", "closed", "reset"},
        "malformed: garbage request line": {"400", "closed", "reset"},
        "malformed: slowly sent (3 s)": {"200"},
        "malformed: headers never finished": {"closed", "408"},
    },
    # distribution in proxy mode verifies nothing: "denied" images are served (200), a blob is
    # served by digest alone, its router answers malformed paths with 404, and Go's server
    # accepts 1 MiB of headers and has no header-read deadline.
    "distribution": {
        "warm manifest (tag)": {"200"},
        "warm manifest (digest)": {"200"},
        "warm blob": {"200"},
        "cold manifest": {"200"},
        "cold blob": {"200"},
        "denied: unsigned, no rule": {"200"},
        "denied: unsigned, keyed rule": {"200"},
        "denied: wrong key": {"200"},
        "denied: blob of a denied image": {"200"},
        "malformed: bad digest": {"400", "404"},
        "malformed: bad tag": {"404"},
        "malformed: invalid name": {"404"},
        "malformed: unknown name, keyed rule": {"404"},
        "malformed: unknown name, no rule": {"404"},
        "malformed: unknown blob": {"404"},
        "malformed: oversize header": {"200"},
        "malformed: garbage request line": {"400", "closed", "reset"},
        "malformed: slowly sent (3 s)": {"200"},
        "malformed: headers never finished": {"held"},
    },
}
KINDS = list(EXPECT["portcullis"])
WIRE = {"malformed: oversize header", "malformed: garbage request line",
        "malformed: slowly sent (3 s)", "malformed: headers never finished"}
# The steady mix (weights); cold items, slow and stalled requests are paced instead (Pacer).
WEIGHTS = {
    "warm manifest (tag)": 15, "warm manifest (digest)": 10, "warm blob": 45,
    "denied: unsigned, no rule": 4, "denied: unsigned, keyed rule": 2, "denied: wrong key": 3,
    "denied: blob of a denied image": 2,
    "malformed: bad digest": 3, "malformed: bad tag": 2, "malformed: invalid name": 2,
    "malformed: unknown name, keyed rule": 2, "malformed: unknown name, no rule": 2,
    "malformed: unknown blob": 2, "malformed: oversize header": 1,
    "malformed: garbage request line": 1,
}


def load_spec(path):
    """SPEC lines: `image CLASS REPO TAG DIGEST` and `blob CLASS REPO DIGEST SIZE`."""
    spec = {"images": {}, "blobs": {}}
    with open(path) as f:
        for line in f:
            p = line.split()
            if not p:
                continue
            if p[0] == "image":
                spec["images"].setdefault(p[1], []).append({"repo": p[2], "tag": p[3], "digest": p[4]})
            elif p[0] == "blob":
                spec["blobs"].setdefault(p[1], []).append({"repo": p[2], "digest": p[3], "size": int(p[4])})
    return spec


class Job:
    __slots__ = ("kind", "path", "digest", "wire")

    def __init__(self, kind, path, digest=None, wire=None):
        self.kind, self.path, self.digest, self.wire = kind, path, digest, wire


def steady_job(kind, spec, rng):
    im, bl = spec["images"], spec["blobs"]
    zero = "sha256:" + "0" * 64
    if kind == "warm manifest (tag)":
        i = rng.choice(im["warm"])
        return Job(kind, f"/v2/{i['repo']}/manifests/{i['tag']}", i["digest"])
    if kind == "warm manifest (digest)":
        i = rng.choice(im["warm"])
        return Job(kind, f"/v2/{i['repo']}/manifests/{i['digest']}", i["digest"])
    if kind == "warm blob":
        b = rng.choice(bl["warm"])
        return Job(kind, f"/v2/{b['repo']}/blobs/{b['digest']}", b["digest"])
    if kind == "denied: unsigned, no rule":
        i = rng.choice(im["unsigned"])
        ref = i["tag"] if rng.random() < 0.5 else i["digest"]
        return Job(kind, f"/v2/{i['repo']}/manifests/{ref}", i["digest"])
    if kind == "denied: unsigned, keyed rule":
        i = rng.choice(im["nosig"])
        return Job(kind, f"/v2/{i['repo']}/manifests/{i['tag']}", i["digest"])
    if kind == "denied: wrong key":
        i = rng.choice(im["forged"])
        return Job(kind, f"/v2/{i['repo']}/manifests/{i['tag']}", i["digest"])
    if kind == "denied: blob of a denied image":
        b = rng.choice(bl["denied"])
        return Job(kind, f"/v2/{b['repo']}/blobs/{b['digest']}", b["digest"])
    w = rng.choice(im["warm"])
    if kind == "malformed: bad digest":
        bad = rng.choice(["sha256:xyz", "sha256:" + "g" * 64, "sha256:" + "a" * 63, "sha256:"])
        return Job(kind, f"/v2/{w['repo']}/blobs/{bad}")
    if kind == "malformed: bad tag":
        return Job(kind, f"/v2/{w['repo']}/manifests/-bad.{rng.randrange(1000)}")
    if kind == "malformed: invalid name":
        return Job(kind, f"/v2/Soak/UPPER{rng.randrange(1000)}/manifests/v1")
    if kind == "malformed: unknown name, keyed rule":
        return Job(kind, f"/v2/soak/signed/nope{rng.randrange(100000)}/manifests/v1")
    if kind == "malformed: unknown name, no rule":
        return Job(kind, f"/v2/soak/nothing{rng.randrange(100000)}/manifests/v1")
    if kind == "malformed: unknown blob":
        d = "sha256:" + hashlib.sha256(os.urandom(8)).hexdigest()
        return Job(kind, f"/v2/{w['repo']}/blobs/{d}")
    if kind == "malformed: oversize header":
        return Job(kind, f"/v2/{w['repo']}/manifests/{w['tag']}", None, "oversize")
    if kind == "malformed: garbage request line":
        return Job(kind, "/", None, "garbage")
    raise ValueError(kind)


def slow_job(spec, rng):
    w = rng.choice(spec["images"]["warm"])
    return Job("malformed: slowly sent (3 s)", f"/v2/{w['repo']}/manifests/{w['tag']}", w["digest"], "slow")


def stalled_job(spec, rng):
    return Job("malformed: headers never finished", "/v2/", None, "stalled")


class Pacer:
    """Items handed out at a steady rate over [start, end] s of the run, each `fanout` times
    (the first request of a cold item is the cold one; the others join it in flight)."""

    def __init__(self, items, start, end, fanout=1):
        self.items, self.fanout = list(items), fanout
        n = max(len(self.items), 1)
        self.due = [start + (end - start) * k / n for k in range(len(self.items))]
        self.i, self.left = 0, fanout

    def take(self, t):
        if self.i >= len(self.items) or self.due[self.i] > t:
            return None
        item = self.items[self.i]
        self.left -= 1
        if self.left == 0:
            self.i, self.left = self.i + 1, self.fanout
        return item


class Stats:
    def __init__(self):
        self.counts = {}           # kind -> {outcome: n}
        self.lat = {}              # kind -> [seconds] (expected outcomes only)
        self.unexpected = []       # first 50, with wall-clock time
        self.n_unexpected = 0
        self.stale_retries = 0
        self.stale_idle = []       # how long each such connection had been idle, s
        self.connections = 0

    def add(self, kind, outcome, secs, expected, detail=""):
        self.counts.setdefault(kind, {}).setdefault(outcome, 0)
        self.counts[kind][outcome] += 1
        if outcome in expected:
            self.lat.setdefault(kind, []).append(secs)
        else:
            self.n_unexpected += 1
            if len(self.unexpected) < 50:
                self.unexpected.append({"time": time.strftime("%H:%M:%S", time.gmtime()) + f".{int(time.time() * 1000) % 1000:03d}Z",
                                        "kind": kind, "outcome": outcome, "detail": detail[:400]})


class HttpError(Exception):
    pass


async def read_response(r, head=False, want=None, progress=None):
    """Reads one response; returns (status, close, first 400 bytes of a non-200 body,
    digest_ok). `progress["answered"]` turns true once the status line and headers are in."""
    raw = await r.readuntil(b"\r\n\r\n")
    if progress is not None:
        progress["answered"] = True
    lines = raw.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
        raise HttpError(f"bad status line {lines[0]!r}")
    status = int(parts[1])
    hdrs = {}
    for ln in lines[1:]:
        if ":" in ln:
            k, v = ln.split(":", 1)
            hdrs[k.strip().lower()] = v.strip()
    close = hdrs.get("connection", "").lower() == "close" or parts[0] == "HTTP/1.0"
    h = hashlib.sha256()
    keep = []
    if head or status in (204, 304) or 100 <= status < 200:
        pass
    elif "content-length" in hdrs:
        n = int(hdrs["content-length"])
        while n > 0:
            chunk = await r.read(min(n, 1 << 18))
            if not chunk:
                raise asyncio.IncompleteReadError(b"", n)
            h.update(chunk)
            if status != 200:
                keep.append(chunk)
            n -= len(chunk)
    elif "chunked" in hdrs.get("transfer-encoding", "").lower():
        while True:
            size = int((await r.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                while (await r.readuntil(b"\r\n")) != b"\r\n":
                    pass
                break
            chunk = await r.readexactly(size + 2)
            h.update(chunk[:-2])
            if status != 200:
                keep.append(chunk[:-2])
    else:
        close = True
        while True:
            chunk = await r.read(1 << 18)
            if not chunk:
                break
            h.update(chunk)
            if status != 200:
                keep.append(chunk)
    ok = want is None or status != 200 or "sha256:" + h.hexdigest() == want
    return status, close, b"".join(keep)[:400], ok


class Client:
    def __init__(self, host, port, st, expect):
        self.host, self.port, self.st, self.expect = host, port, st, expect
        self.r = self.w = None
        self.last = time.monotonic()   # when the connection last finished an exchange

    def close(self):
        if self.w is not None:
            self.w.close()
        self.r = self.w = None

    async def connect(self):
        self.r, self.w = await asyncio.open_connection(self.host, self.port, limit=1 << 20)
        self.st.connections += 1

    def request_bytes(self, path, extra=""):
        return (f"GET {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nUser-Agent: portcullis-soak\r\n"
                f"Accept: {ACCEPT}\r\n{extra}\r\n").encode()

    async def keepalive(self, job):
        """One request on the client's connection; returns (outcome, detail)."""
        for _ in range(2):
            fresh = self.w is None
            if fresh:
                await self.connect()
            progress = {"answered": False}
            self.w.write(self.request_bytes(job.path))
            try:
                await self.w.drain()
                status, close, body, ok = await read_response(self.r, want=job.digest, progress=progress)
            except (ConnectionError, asyncio.IncompleteReadError) as e:
                self.close()
                # A reused connection the server closed before any byte of an answer: retry once.
                if not fresh and not progress["answered"] and not getattr(e, "partial", b""):
                    self.st.stale_retries += 1
                    self.st.stale_idle.append(time.monotonic() - self.last)
                    continue
                raise
            self.last = time.monotonic()
            if close:
                self.close()
            if not ok:
                return "200 wrong digest", job.path
            return str(status), f"{job.path} -> {body!r}"
        return "closed", job.path

    async def wire(self, job):
        """A wire-level malformed request on a fresh connection; returns (outcome, detail)."""
        r, w = await asyncio.open_connection(self.host, self.port, limit=1 << 20)
        self.st.connections += 1
        try:
            if job.wire == "oversize":
                w.write(self.request_bytes(job.path, "X-Pad: " + "a" * OVERSIZE + "\r\n"))
            elif job.wire == "garbage":
                w.write(b"GARBAGE\x01\x02 NOT-HTTP\r\n\r\n")
            elif job.wire == "slow":
                data = self.request_bytes(job.path, "Connection: close\r\n")
                pieces = 12
                step = -(-len(data) // pieces)
                for k in range(0, len(data), step):
                    w.write(data[k:k + step])
                    await w.drain()
                    if k + step < len(data):
                        await asyncio.sleep(SLOW_SEND_S / (pieces - 1))
            elif job.wire == "stalled":
                w.write(f"GET /v2/ HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nX-Never-Ends: ".encode())
            await w.drain()
            try:
                if job.wire == "stalled":
                    async with asyncio.timeout(STALL_GIVE_UP):
                        status, _, body, ok = await read_response(r)
                else:
                    status, _, body, ok = await read_response(r, want=job.digest)
            except TimeoutError:
                return "held", f"open after {STALL_GIVE_UP:.0f} s"
            except asyncio.IncompleteReadError as e:
                if e.partial:
                    raise
                return "closed", ""
            except ConnectionResetError:
                return "reset", ""
            if not ok:
                return "200 wrong digest", job.path
            return str(status), f"{job.path} -> {body!r}"
        except ConnectionResetError:
            return "reset", ""
        finally:
            w.close()


async def one(client, job):
    t0 = time.perf_counter()
    expected = client.expect[job.kind]
    try:
        async with asyncio.timeout(REQ_TIMEOUT):
            if job.wire:
                outcome, detail = await client.wire(job)
            else:
                outcome, detail = await client.keepalive(job)
    except TimeoutError:
        client.close()
        outcome, detail = "timeout", f"{job.path}: no complete answer in {REQ_TIMEOUT:.0f} s"
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, HttpError, ValueError) as e:
        client.close()
        outcome, detail = f"error: {type(e).__name__}", f"{job.path}: {e}"
    client.st.add(job.kind, outcome, time.perf_counter() - t0, expected, detail)
    return outcome


def parse_base(base):
    hostport = base.split("://", 1)[1].rstrip("/")
    host, port = hostport.rsplit(":", 1)
    return host, int(port)


async def run(args):
    spec = load_spec(args.spec)
    host, port = parse_base(args.base)
    st = Stats()
    expect = EXPECT[args.flavor]
    rng = random.Random(args.seed)
    dur = args.duration
    t_start = time.monotonic()
    deadline = t_start + dur
    # Cold items, each requested by 3 clients about together; slow and stalled requests at a
    # steady rate.
    cold_blobs = [Job("cold blob", f"/v2/{b['repo']}/blobs/{b['digest']}", b["digest"])
                  for b in spec["blobs"]["cold"]]
    cold_mans = [Job("cold manifest", f"/v2/{i['repo']}/manifests/{i['tag']}", i["digest"])
                 for i in spec["images"]["fresh"]]
    rng.shuffle(cold_blobs)
    pacers = [
        Pacer(cold_mans, 0.05 * dur, 0.85 * dur, 3),
        Pacer(cold_blobs, 0.05 * dur, 0.85 * dur, 3),
        Pacer([None] * int(dur * args.slow_rate), 0, dur),
        Pacer([None] * int(dur * args.stall_rate), 0, dur),
    ]
    kinds, weights = list(WEIGHTS), list(WEIGHTS.values())

    def next_job():
        t = time.monotonic() - t_start
        for k, p in enumerate(pacers):
            if p.i < len(p.items) and p.due[p.i] <= t:
                item = p.take(t)
                if k == 2:
                    return slow_job(spec, rng)
                if k == 3:
                    return stalled_job(spec, rng)
                return item
        return steady_job(rng.choices(kinds, weights)[0], spec, rng)

    async def client_loop(i):
        c = Client(host, port, st, expect)
        await asyncio.sleep(rng.random() * args.ramp)
        while time.monotonic() < deadline:
            await one(c, next_job())
        c.close()

    lag = []

    async def lag_probe():
        # How late the clients' own event loop wakes up: latency includes this much client delay.
        while time.monotonic() < deadline:
            t = time.monotonic()
            await asyncio.sleep(0.05)
            lag.append(time.monotonic() - t - 0.05)

    wall0 = time.time()
    await asyncio.gather(lag_probe(), *(client_loop(i) for i in range(args.clients)))
    wall1 = time.time()
    out = {
        "flavor": args.flavor, "label": args.label, "base": args.base, "clients": args.clients,
        "duration": dur, "start": wall0, "end": wall1, "counts": st.counts,
        "latency": {k: pct(v) for k, v in st.lat.items()},
        "unexpected": st.unexpected, "n_unexpected": st.n_unexpected,
        "stale_retries": st.stale_retries, "connections": st.connections,
        "stale_idle": [min(st.stale_idle, default=0), max(st.stale_idle, default=0)],
        "loop": LOOP, "expect": {k: sorted(v) for k, v in expect.items()},
        "cold_items": {"blobs": len(cold_blobs), "manifests": len(cold_mans)},
        "client_cpu": sum(os.times()[:2]),
        "loop_lag": pct(lag),
    }
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
    total = sum(sum(v.values()) for v in st.counts.values())
    print(f"{args.label}: {total} requests in {wall1 - wall0:.1f} s, {st.n_unexpected} unexpected, "
          f"{st.stale_retries} stale keep-alive retries", file=sys.stderr)
    for u in st.unexpected[:10]:
        print(f"  unexpected: {u}", file=sys.stderr)


def pct(v):
    v = sorted(v)
    if not v:
        return {}
    q = lambda p: v[min(len(v) - 1, int(p * len(v)))]  # noqa: E731
    return {"n": len(v), "p50": q(0.50), "p99": q(0.99), "max": v[-1]}


async def probe(args):
    """Every kind once (cold kinds on a spare item, stalled once), sequentially but for stalled;
    exits 1 if any answer is not expected."""
    spec = load_spec(args.spec)
    host, port = parse_base(args.base)
    st = Stats()
    expect = EXPECT[args.flavor]
    rng = random.Random(1)
    c = Client(host, port, st, expect)
    stalled = asyncio.ensure_future(one(Client(host, port, st, expect), stalled_job(spec, rng)))
    jobs = [steady_job(k, spec, rng) for k in WEIGHTS] + [slow_job(spec, rng)]
    for b in spec["blobs"].get("probe", []):
        jobs.append(Job("cold blob", f"/v2/{b['repo']}/blobs/{b['digest']}", b["digest"]))
    for i in spec["images"].get("probe", []):
        jobs.append(Job("cold manifest", f"/v2/{i['repo']}/manifests/{i['tag']}", i["digest"]))
    for j in jobs:
        await one(c, j)
    await stalled
    c.close()
    for kind, outs in st.counts.items():
        mark = "ok" if set(outs) <= expect[kind] else "UNEXPECTED"
        print(f"  {args.flavor} probe: {kind}: {dict(outs)} {mark}", file=sys.stderr)
    for u in st.unexpected:
        print(f"  unexpected: {u}", file=sys.stderr)
    sys.exit(1 if st.n_unexpected else 0)


async def warm(args):
    """Fetches what the run calls warm (manifests by tag and digest, blobs) and the manifests of
    the images whose blobs are cold (a blob is served only for a manifest that passed)."""
    spec = load_spec(args.spec)
    host, port = parse_base(args.base)
    st = Stats()
    expect = {k: {"200"} for k in ("warm", "cold image manifest")}
    c = Client(host, port, st, expect)
    for i in spec["images"]["warm"]:
        for ref in (i["tag"], i["digest"]):
            await one(c, Job("warm", f"/v2/{i['repo']}/manifests/{ref}", i["digest"]))
    for b in spec["blobs"]["warm"]:
        await one(c, Job("warm", f"/v2/{b['repo']}/blobs/{b['digest']}", b["digest"]))
    for i in spec["images"]["coldimage"]:
        await one(c, Job("cold image manifest", f"/v2/{i['repo']}/manifests/{i['tag']}", i["digest"]))
    c.close()
    for u in st.unexpected:
        print(f"  warm-up failed: {u}", file=sys.stderr)
    sys.exit(1 if st.n_unexpected else 0)


def stale(r):
    n = r["stale_retries"]
    if not n:
        return "0"
    lo, hi = r.get("stale_idle", [0, 0])
    return f"{n} ({lo:.1f}-{hi:.1f})"


def fmt_ms(s):
    return "-" if s is None else (f"{s * 1000:.1f}" if s < 10 else f"{s * 1000:.0f}")


def load_meta(path):
    """META lines, tab-separated: `KEY VALUE`, `load PHASE VALUE`, `res LABEL KEY VALUE`,
    `note TEXT`."""
    meta = {"loadavg": {}, "resources": {}, "notes": []}
    with open(path) as f:
        for line in f:
            p = line.rstrip("\n").split("\t")
            if p[0] == "load":
                meta["loadavg"][p[1]] = p[2]
            elif p[0] == "res":
                meta["resources"].setdefault(p[1], {})[p[2]] = p[3]
            elif p[0] == "note":
                meta["notes"].append(p[1] if len(p) > 1 else "")
            else:
                meta[p[0]] = p[1]
    return meta


def report(args):
    meta = load_meta(args.meta)
    res = [json.load(open(p)) for p in args.results]
    L = []
    p = L.append
    p("# portcullis soak")
    p("")
    p(meta["when"] + ". " + meta["machine"])
    p("")
    p(f"{res[0]['clients']} concurrent clients (one asyncio process, {res[0]['loop']}), "
      f"{res[0]['duration']} s each, on 127.0.0.1; first portcullis, then distribution in proxy "
      "mode, each alone with a fresh cache, in front of the same upstream distribution. "
      + meta["setup"])
    p("")
    p("Load average (1/5/15 min): " + "; ".join(f"{k}: {v}" for k, v in meta["loadavg"].items()) + ".")
    p("")
    p("## Requests by kind and status")
    p("")
    p("Outcomes are HTTP statuses, or for wire-level requests `closed` (closed before any answer), "
      "`reset`, `held` (still open when the client gave up after "
      f"{STALL_GIVE_UP:.0f} s). Expected sets are per server (distribution cannot deny, and its "
      "router answers malformed paths with 404); latency (ms) is over the expected answers.")
    p("")
    head = "| kind |"
    rule = "|---|"
    for r in res:
        head += f" {r['label']}: expected | got | unexpected | p50 | p99 |"
        rule += "---|---|---|---|---|"
    p(head)
    p(rule)
    for kind in KINDS:
        row = f"| {kind} |"
        for r in res:
            exp = set(r["expect"].get(kind, []))
            got = r["counts"].get(kind, {})
            gots = ", ".join(f"{k} × {v}" for k, v in sorted(got.items(), key=lambda kv: -kv[1])) or "-"
            bad = sum(v for k, v in got.items() if k not in exp)
            lat = r["latency"].get(kind, {})
            note = " (not verified)" if r["flavor"] == "distribution" and kind.startswith("denied") else ""
            row += (f" {' / '.join(sorted(exp))}{note} | {gots} | {bad if got else '-'} | "
                    f"{fmt_ms(lat.get('p50'))} | {fmt_ms(lat.get('p99'))} |")
        p(row)
    tot = "| **all** |"
    for r in res:
        n = sum(sum(v.values()) for v in r["counts"].values())
        secs = r["end"] - r["start"]
        tot += (f" | **{n}** ({n / r['duration']:.0f}/s; the last answers came {secs - r['duration']:.0f} s "
                f"after the {r['duration']:.0f} s) | **{r['n_unexpected']}** | | |")
    p(tot)
    p("")
    p("## Resources")
    p("")
    p("Sampled once a second from /proc: RSS (VmRSS; VmHWM is the peak between samples, reset "
      "when the load starts) and open descriptors (/proc/PID/fd). Idle = just before the load, "
      f"after the warm-up; final = after {meta['cooldown']} s of quiet once every client had closed. "
      "If the descriptors were then still more than 8 over idle, they are watched for up to "
      f"{meta['settle']} s more. A keep-alive connection found closed is one the server closed while "
      "its client was busy on another connection (a slowly-sent or never-finished request); the "
      "client retried on a new connection, as HTTP clients do, and it is not an error.")
    p("")
    p("| | " + " | ".join(r["label"] for r in res) + " |")
    p("|---|" + "---|" * len(res))
    rows = [
        ("requests (all kinds)", lambda r, m: str(sum(sum(v.values()) for v in r["counts"].values()))),
        ("unexpected errors", lambda r, m: str(r["n_unexpected"])),
        ("connections opened by clients", lambda r, m: str(r["connections"])),
        ("keep-alive connections found closed, request retried (idle for, s)", lambda r, m: stale(r)),
        ("RSS idle / peak / final (MiB)", lambda r, m: f"{m['rss_idle']} / {m['rss_peak']} (VmHWM {m['hwm']}) / {m['rss_final']}"),
        ("RSS every 10 s of the load (MiB)", lambda r, m: m["rss_series"]),
        ("open FDs idle / peak / final", lambda r, m: f"{m['fd_idle']} / {m['fd_peak']} / {m['fd_final']}"),
        ("final FDs, what they are", lambda r, m: m["fd_what"]),
        ("threads idle / peak / final", lambda r, m: f"{m['thr_idle']} / {m['thr_peak']} / {m['thr_final']}"),
        ("back down after the run", lambda r, m: m["verdict"]),
        ("server CPU during the load (s)", lambda r, m: m["cpu"]),
        ("load generator CPU (s)", lambda r, m: f"{r.get('client_cpu', 0):.1f}"),
        ("load generator's event-loop lag p50 / p99 / max (ms)", lambda r, m: " / ".join(
            fmt_ms(r.get("loop_lag", {}).get(k)) for k in ("p50", "p99", "max"))),
        ("upstream requests during the load and cool-down", lambda r, m: m["upstream_requests"]),
        ("server log lines at WARN / ERROR (expected denials left out)", lambda r, m: f"{m['log_warn']} / {m['log_error']}"),
    ]
    for name, f in rows:
        p(f"| {name} | " + " | ".join(f(r, meta["resources"][r["label"]]) for r in res) + " |")
    p("")
    for r in res:
        if r["unexpected"]:
            p(f"Unexpected answers from {r['label']} (first {len(r['unexpected'])} of {r['n_unexpected']}):")
            p("")
            for u in r["unexpected"][:20]:
                p(f"- {u['time']} {u['kind']}: {u['outcome']} {u['detail']}")
            p("")
    for line in meta.get("notes", []):
        p(line)
    with open(args.out, "w") as f:
        f.write("\n".join(L).rstrip() + "\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("cmd", choices=["probe", "warm", "run", "report"])
    ap.add_argument("--base")
    ap.add_argument("--spec")
    ap.add_argument("--flavor", choices=list(EXPECT), default="portcullis")
    ap.add_argument("--label", default="")
    ap.add_argument("--out")
    ap.add_argument("--meta")
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--duration", type=float, default=60)
    ap.add_argument("--ramp", type=float, default=1.0)
    ap.add_argument("--slow-rate", type=float, default=2.0)
    ap.add_argument("--stall-rate", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=12)
    ap.add_argument("results", nargs="*")
    args = ap.parse_intermixed_args()
    if args.cmd == "report":
        report(args)
        return
    fn = {"probe": probe, "warm": warm, "run": run}[args.cmd]
    if LOOP == "uvloop":
        uvloop.run(fn(args))
    else:
        asyncio.run(fn(args))


try:
    import uvloop  # noqa: E402
    LOOP = "uvloop"
except ImportError:
    LOOP = "asyncio"

if __name__ == "__main__":
    main()
