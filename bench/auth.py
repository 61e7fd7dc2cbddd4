"""Access control benchmark (issue 13): what auth on costs ingest and a small request.

    python -m bench.auth                        # 6 rounds of each mode, interleaved
    python -m bench.auth --rounds 5 --write     # and update bench/RESULTS.md

Two `kiseki server` processes on one Postgres, idle but for the one being measured: auth off, and auth on
(`KISEKI_AUTH=true`) called with a write-scoped token of a non-admin user who created the experiment, so
every request pays the token lookup and the experiment-permission check (each cached
`auth_cache_seconds`, 0.5 s, so a revocation still takes effect within a second). Rounds run in ABBA
order (off, on, on, off, …) so that drift of the machine falls on both modes alike. Each round:

- SDK ingest: P processes, each a `kiseki.Client(token=…, max_batch_points=1000)` calling `log_metric`
  over 10 keys for its share of the points, then `flush()`: points / wall time;
- raw ingest: the same points as pre-encoded 1,000-point batches over aiohttp, one connection per job
  (the service's cost alone, with no client CPU to hide it).

Then, one client sending one request at a time to the servers in turn (so all see the same moment of the
machine), with a third, auth-off server as a control for the noise between two processes: 2,000
`GET /api/v1/runs/{run_id}` per server after 200 warm-up requests, and 500 1,000-point batches; and the
`authenticate` middleware timed alone in this process.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import statistics
import time
from typing import Any

import aiohttp

from bench.common import RESULTS, kiseki_server, machine_facts, postgres, postgres_version, write_section
from bench.ingest import make_bodies
from kiseki_server import db
from kiseki_server.auth import credentials

SECTION = "## Access control (issue 13)"
KEYS = [f"metric_{i}" for i in range(10)]
ADMIN_TOKEN = credentials.new_token()
TARGET_INGEST_COST = 0.05
TARGET_SMALL_MS = 0.2


def headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


async def _setup(url: str, token: str | None) -> tuple[str, str | None]:
    """(experiment id, the token to use): on the auth-on server a new user `bench` with a write token."""
    async with aiohttp.ClientSession() as s:
        if token is not None:
            admin = headers(ADMIN_TOKEN)
            async with s.post(f"{url}/api/v1/users", json={"name": "bench"}, headers=admin) as r:
                assert r.status == 201, await r.text()
            body = {"user": "bench", "scope": "write", "name": "bench"}
            async with s.post(f"{url}/api/v1/tokens", json=body, headers=admin) as r:
                assert r.status == 201, await r.text()
                token = (await r.json())["token"]
        name = f"bench-auth-{'on' if token else 'off'}"
        async with s.post(
            f"{url}/api/v1/experiments/get-or-create", json={"name": name}, headers=headers(token)
        ) as r:
            assert r.status == 200, await r.text()
            return (await r.json())["experiment"]["experiment_id"], token


async def _create_runs(url: str, token: str | None, experiment_id: str, n: int) -> list[str]:
    async with aiohttp.ClientSession(headers=headers(token)) as s:
        runs = []
        for _ in range(n):
            async with s.post(f"{url}/api/v1/runs", json={"experiment_id": experiment_id}) as r:
                assert r.status < 300, await r.text()
                runs.append((await r.json())["info"]["run_id"])
        return runs


def _sdk_job(args: tuple[str, str | None, str, int, float, mp.Queue]) -> None:
    url, token, run_id, points, start_at, out = args
    import kiseki

    client = kiseki.Client(url, token=token or "", max_batch_points=1000)
    steps = points // len(KEYS)
    time.sleep(max(0.0, start_at - time.time()))
    started = time.time()
    log_metric = client.log_metric
    for step in range(steps):
        for key in KEYS:
            log_metric(run_id, key, 0.5, step=step)
    client.flush()
    finished = time.time()
    client.close()
    out.put((steps * len(KEYS), started, finished))


def _raw_job(args: tuple[str, str | None, str, int, int, float, mp.Queue]) -> None:
    url, token, run_id, n_batches, seed, start_at, out = args
    bodies = make_bodies(n_batches, 1000, seed)

    async def send() -> tuple[int, float, float]:
        sent = {"Content-Type": "application/json", **headers(token)}
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as s:
            await asyncio.sleep(max(0.0, start_at - time.time()))
            started = time.time()
            for body in bodies:
                async with s.post(f"{url}/api/v1/runs/{run_id}/batch", data=body, headers=sent) as r:
                    await r.read()
                    if r.status != 200:
                        raise RuntimeError(f"batch failed: {r.status}")
            return 1000 * len(bodies), started, time.time()

    out.put(asyncio.run(send()))


def _parallel(target: Any, jobs: list[tuple[Any, ...]]) -> float:
    """Points per second of `jobs` run as processes that start together."""
    queue: mp.Queue = mp.Queue()
    procs = [mp.Process(target=target, args=((*job, queue),)) for job in jobs]
    for p in procs:
        p.start()
    results = [queue.get() for _ in procs]
    for p in procs:
        p.join()
    wall = max(r[2] for r in results) - min(r[1] for r in results)
    return sum(r[0] for r in results) / wall


def ingest_sdk(url: str, token: str | None, experiment_id: str, jobs: int, points: int) -> float:
    runs = asyncio.run(_create_runs(url, token, experiment_id, jobs))
    start_at = time.time() + 2 + jobs * 0.1
    return _parallel(_sdk_job, [(url, token, run, points // jobs, start_at) for run in runs])


def ingest_raw(url: str, token: str | None, experiment_id: str, jobs: int, points: int) -> float:
    runs = asyncio.run(_create_runs(url, token, experiment_id, jobs))
    n_batches = max(2, points // (jobs * 1000))
    start_at = time.time() + 2 + points / 2e6
    return _parallel(_raw_job, [(url, token, run, n_batches, i, start_at) for i, run in enumerate(runs)])


async def alternating(
    servers: dict[str, tuple[str, str, str | None]], n_get: int = 2000, n_batch: int = 500
) -> dict[str, dict[str, list[float]]]:
    """Seconds per request, one client, one request at a time, taking the servers in turn (the order
    rotated every time) so that all see the same moment of the machine: after 200 warm-up GETs each,
    `n_get` GETs of a run (5 params, 5 metrics) and `n_batch` 1,000-point batches per server."""
    times: dict[str, dict[str, list[float]]] = {mode: {"get": [], "batch": []} for mode in servers}
    targets = {}
    for mode, (url, experiment_id, token) in servers.items():
        run_id = (await _create_runs(url, token, experiment_id, 1))[0]
        targets[mode] = (url, run_id, token)
    bodies = make_bodies(n_batch, 1000, 7)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=2)) as s:
        for url, run_id, token in targets.values():
            body = {
                "params": [{"key": f"p{i}", "value": str(i)} for i in range(5)],
                "metrics": [{"key": f"m{i}", "value": 0.5, "timestamp": 1, "step": 1} for i in range(5)],
            }
            async with s.post(f"{url}/api/v1/runs/{run_id}/batch", json=body, headers=headers(token)) as r:
                assert r.status == 200, await r.text()
            for _ in range(200):
                async with s.get(f"{url}/api/v1/runs/{run_id}", headers=headers(token)) as r:
                    await r.read()

        async def timed(mode: str, kind: str, i: int) -> None:
            url, run_id, token = targets[mode]
            t = time.perf_counter()
            if kind == "get":
                async with s.get(f"{url}/api/v1/runs/{run_id}", headers=headers(token)) as r:
                    await r.read()
            else:
                sent = {"Content-Type": "application/json", **headers(token)}
                async with s.post(f"{url}/api/v1/runs/{run_id}/batch", data=bodies[i], headers=sent) as r:
                    await r.read()
            assert r.status == 200, r.status
            times[mode][kind].append(time.perf_counter() - t)

        modes = list(targets)
        for kind, n in (("get", n_get), ("batch", n_batch)):
            for i in range(n):
                turn = i % len(modes)
                for mode in modes[turn:] + modes[:turn]:
                    await timed(mode, kind, i)
    return times


async def middleware_cost(
    database_url: str, token: str, run_id: str, n: int = 20_000, rounds: int = 5
) -> dict[str, float]:
    """µs per request the `authenticate` middleware adds to `GET /api/v1/runs/{run_id}`, auth off and on
    (the token's and the permission's cached look-ups, refreshed from Postgres every auth_cache_seconds):
    it called on a resolved request minus the handler called directly, best of `rounds` alternating
    rounds, in this process: what the noisy HTTP figures cannot resolve."""
    from aiohttp import web
    from aiohttp.test_utils import make_mocked_request

    from kiseki_server.app import create_app
    from kiseki_server.auth.middleware import authenticate
    from kiseki_server.config import Settings

    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(text="{}")

    cost: dict[str, float] = {}
    for mode in ("off", "on"):
        settings = Settings(
            database_url=database_url, auth=mode == "on", db_pool_min_size=1, db_pool_max_size=2
        )
        app = create_app(settings)
        runner = web.AppRunner(app)
        await runner.setup()  # the pool, the stores, the authorizer's key
        try:
            sent = headers(token) if mode == "on" else {}
            request = make_mocked_request("GET", f"/api/v1/runs/{run_id}", headers=sent, app=app)
            match_info = await app.router.resolve(request)  # as aiohttp does before the middlewares
            match_info.add_app(app)
            match_info.freeze()
            request._match_info = match_info
            response = await authenticate(request, handler)
            assert response.status == 200
            bare, wrapped = [], []
            for _ in range(rounds):
                started = time.perf_counter()
                for _ in range(n):
                    await handler(request)
                bare.append(time.perf_counter() - started)
                started = time.perf_counter()
                for _ in range(n):
                    await authenticate(request, handler)
                wrapped.append(time.perf_counter() - started)
            cost[mode] = (min(wrapped) - min(bare)) / n * 1e6
        finally:
            await runner.cleanup()
    return cost


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def paired_ratios(figures: dict[str, Any], key: str) -> list[float]:
    """on/off of each round of auth on against the auth-off round next to it (ABBA: off,on | on,off | …),
    so that a slow stretch of the shared machine falls inside one pair."""
    return [on / off for off, on in zip(figures["off"][key], figures["on"][key], strict=True)]


def section(facts: str, pg: str, args: argparse.Namespace, figures: dict[str, Any]) -> str:
    off, on = figures["off"], figures["on"]
    (before, after), middleware, alt = figures["load"], figures["middleware"], figures["alternating"]
    lines = [
        SECTION,
        "",
        f"`python -m bench.auth --rounds {args.rounds} --write` — {facts}; {pg}; load average "
        f"{before[0]:.1f} before, {after[0]:.1f} after. `kiseki server` processes on one Postgres: auth "
        "off, and auth on called with a write-scoped token of a non-admin user who owns the experiment "
        "(so every request pays the token check and the experiment-permission check), plus a second "
        "auth-off one as a control; the clients on the same 2 cores.",
        "",
        f"Ingest: {args.rounds} rounds per mode in ABBA order, each {args.jobs} SDK processes "
        f"(`Client(token=…)`, 1,000-point batches, {args.points:,} points in all), then the same points as "
        "pre-encoded 1,000-point HTTP batches from as many processes. On/off is the median over pairs of "
        "adjacent rounds.",
        "",
        "| measure | auth off | auth on | on / off | target |",
        "|---|---:|---:|---:|---|",
    ]
    for label, key in [
        (f"SDK ingest, {args.jobs} jobs x 1,000-point batches, points/s (median of rounds)", "sdk"),
        (f"raw HTTP ingest, {args.jobs} jobs x 1,000-point batches, points/s (median of rounds)", "raw"),
    ]:
        a, b = statistics.median(off[key]), statistics.median(on[key])
        ratios = paired_ratios(figures, key)
        ratio = statistics.median(ratios)
        spread = f"{ratio:.1%} (pairs {min(ratios):.0%} to {max(ratios):.0%})"
        target = f"cost ≤ 5 % {'✔' if 1 - ratio <= TARGET_INGEST_COST else '✘'}" if key == "sdk" else ""
        lines.append(f"| {label} | {a:,.0f} | {b:,.0f} | {spread} | {target} |")
    get_off, get_on = alt["off"]["get"], alt["on"]["get"]
    batch_off, batch_on = alt["off"]["batch"], alt["on"]["batch"]
    p50 = {k: percentile(v, 0.5) * 1e3 for k, v in [("g0", get_off), ("g1", get_on)]}
    p99 = {k: percentile(v, 0.99) * 1e3 for k, v in [("g0", get_off), ("g1", get_on)]}
    b50 = {k: percentile(v, 0.5) * 1e3 for k, v in [("b0", batch_off), ("b1", batch_on)]}
    get_ctl, batch_ctl = alt["control"]["get"], alt["control"]["batch"]
    noise_get = (percentile(get_ctl, 0.5) - percentile(get_off, 0.5)) * 1e3
    noise_batch = (percentile(batch_ctl, 0.5) - percentile(batch_off, 0.5)) * 1e3
    delta = p50["g1"] - p50["g0"]
    batch_cost = b50["b1"] / b50["b0"] - 1
    extra_ms = (middleware["on"] - middleware["off"]) / 1000
    best_raw, cores = max(off["raw"]), os.cpu_count() or 1
    share = extra_ms / 1000 * (best_raw / 1000) / cores  # seconds of CPU added per second of machine
    lines += [
        "",
        f"Requests one at a time from one client, taking the servers in turn (the order rotated every "
        f"time; a third, auth-off server as a control), after 200 warm-up GETs each: {len(get_off):,} "
        f"`GET /api/v1/runs/{{id}}` (a run with 5 "
        f"params and 5 metrics) and {len(batch_off):,} 1,000-point batches per server. And the "
        "`authenticate` middleware alone, in process (called on a resolved request, minus the handler "
        "alone; best of 5 x 20,000).",
        "",
        "| measure | auth off | auth on | on - off | target |",
        "|---|---:|---:|---:|---|",
        f"| small request p50, ms | {p50['g0']:.3f} | {p50['g1']:.3f} | {delta:+.3f} ms | "
        f"≤ +0.2 ms {'✔' if delta <= TARGET_SMALL_MS else '✘'} |",
        f"| small request p99, ms | {p99['g0']:.3f} | {p99['g1']:.3f} | {p99['g1'] - p99['g0']:+.3f} ms | |",
        f"| 1,000-point batch p50, ms | {b50['b0']:.3f} | {b50['b1']:.3f} | "
        f"{b50['b1'] - b50['b0']:+.3f} ms ({batch_cost:+.1%}) | |",
        f"| control: a second auth-off server in the same rotation, p50 GET / batch | | | "
        f"{noise_get:+.3f} ms / {noise_batch:+.3f} ms | (the noise floor) |",
        f"| `authenticate` middleware, µs per request | {middleware['off']:.1f} | {middleware['on']:.1f} | "
        f"{extra_ms * 1000:+.1f} µs | ≤ +200 µs {'✔' if extra_ms <= TARGET_SMALL_MS else '✘'} |",
        f"| that, as a share of the machine at the best auth-off raw ingest round ({best_raw:,.0f} points/s"
        f" = {best_raw / 1000:,.0f} batches/s on {cores} cores) | | | {share:.2%} | ≤ 5 % "
        f"{'✔' if share <= TARGET_INGEST_COST else '✘'} |",
        "",
        "Ingest rounds (in the order run):",
        "",
        "| round | mode | SDK points/s | raw points/s |",
        "|---:|---|---:|---:|",
    ]
    for i, (mode, index) in enumerate(figures["order"], 1):
        f = figures[mode]
        lines.append(f"| {i} | {mode} | {f['sdk'][index]:,.0f} | {f['raw'][index]:,.0f} |")
    lines += [
        "",
        "What auth on adds to a request: an HMAC-SHA256 of the bearer token and two dictionary look-ups",
        "(the credential; the user's level on the run's experiment), with a Postgres query for either only",
        "when its entry is older than `auth_cache_seconds` (0.5 s, so that a revocation takes effect on",
        "every replica within a second: `tests/test_auth_replicas.py`). The middleware row measures exactly",
        "that; the rows of requests in turn measure it end to end with every server seeing the same moment",
        "of the machine. The concurrent ingest rounds carry the noise of 2 cores shared by the clients, the",
        "service, Postgres and whatever else runs: adjacent rounds of one mode differ by tens of percent,",
        "more than the modes do, so they bound the cost only coarsely; the figures above resolve it.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=6, help="rounds per mode (default: 6)")
    parser.add_argument("--jobs", type=int, default=8, help="parallel jobs (default: 8)")
    parser.add_argument("--points", type=int, default=400_000, help="points per ingest round")
    parser.add_argument("--write", action="store_true", help=f"update the section in {RESULTS.name}")
    args = parser.parse_args()
    facts = machine_facts()
    print(f"machine: {facts}")
    with postgres() as database_url:
        asyncio.run(db.upgrade(database_url))
        pg = asyncio.run(postgres_version(database_url))
        print(f"database: {pg}")
        auth_env = {"KISEKI_AUTH": "true", "KISEKI_ADMIN_TOKEN": ADMIN_TOKEN}
        with (
            kiseki_server(database_url) as url_off,
            kiseki_server(database_url, env=auth_env) as url_on,
            kiseki_server(database_url) as url_control,
        ):
            servers = {"off": (url_off, *asyncio.run(_setup(url_off, None)))}
            servers["on"] = (url_on, *asyncio.run(_setup(url_on, ADMIN_TOKEN)))
            _, experiment_on, token_on = servers["on"]
            assert token_on is not None
            probe = asyncio.run(_create_runs(url_on, token_on, experiment_on, 1))[0]
            middleware = asyncio.run(middleware_cost(database_url, token_on, probe))
            print(f"authenticate middleware: {middleware['off']:.1f} µs off, {middleware['on']:.1f} µs on")
            load_before = os.getloadavg()
            figures: dict[str, Any] = {mode: {"sdk": [], "raw": []} for mode in servers}
            figures["order"] = []
            modes = [("off", "on"), ("on", "off")]
            for r in range(args.rounds):
                for mode in modes[r % 2]:
                    url, experiment_id, token = servers[mode]
                    f = figures[mode]
                    f["sdk"].append(ingest_sdk(url, token, experiment_id, args.jobs, args.points))
                    f["raw"].append(ingest_raw(url, token, experiment_id, args.jobs, args.points))
                    figures["order"].append((mode, len(f["sdk"]) - 1))
                    print(
                        f"round {r + 1} auth {mode:>3}: SDK {f['sdk'][-1]:>10,.0f} points/s, "
                        f"raw {f['raw'][-1]:>10,.0f} points/s",
                        flush=True,
                    )
            control = (url_control, *asyncio.run(_setup(url_control, None)))
            figures["alternating"] = asyncio.run(alternating({**servers, "control": control}))
            for mode, t in figures["alternating"].items():
                print(
                    f"alternating, auth {mode:>3}: GET run p50 {percentile(t['get'], 0.5) * 1e3:.3f} ms, "
                    f"1,000-point batch p50 {percentile(t['batch'], 0.5) * 1e3:.3f} ms",
                    flush=True,
                )
            figures["load"] = (load_before, os.getloadavg())
            figures["middleware"] = middleware
    text = section(facts, pg, args, figures)
    print(text)
    if args.write:
        write_section(SECTION, text)
        print(f"updated {RESULTS}")


if __name__ == "__main__":
    main()
