"""Benchmark the speech server (`xtts-ft serve`): concurrent clients against our batching engine, against the
same requests served one at a time through coqui's `Xtts.inference` behind the same HTTP layer (what
single-request servers do), and against `synthesize_many(batch_size=8)` over the same sentences, in one run.

Everything runs in this one process on one loaded model: each server is our FastAPI app under uvicorn on
127.0.0.1 (a port the OS picks), driven by the real `openai` client from threads; no traffic leaves loopback and
every loop is bounded (--requests per setting, a timeout per request).

  ours         SpeechScheduler: sentences of concurrent requests share one batched generate (max_batch_size 8)
  one-by-one   the same HTTP layer over an engine that runs each request alone through coqui's Xtts.inference
               (XttsSynthesizer.synthesize), in arrival order
  many-8       XttsSynthesizer.synthesize_many(batch_size=8) over the same sentences, no HTTP (the ceiling)

For each of --clients (1, 4, 8, 16 concurrent clients, each sending Harvard sentences one after the other until
--requests are done): requests/s, p50/p95 latency (request sent → last byte), and, for ours, p50 time to first
audio with streaming requests (`stream_format="audio"`, request sent → first audio byte). Then the RSS of this
process before and after --rss-requests more requests on our server (after a warm-up): nothing may leak.

Every request decodes exactly --codes GPT codes per sentence (random weights: the stop token is never drawn, the
cap is --codes; see scripts/bench_inference.py's fixed_length), so every path does the same work.

    .venv/bin/python scripts/bench_serve.py --quick            # tiny model, small counts: a smoke run
    .venv/bin/python scripts/bench_serve.py                    # full XTTS-v2 size on CPU
    .venv/bin/python scripts/bench_serve.py --device cuda --requests 64 --rss-requests 500

Another job on the same cores changes every number: run it on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import queue
import socket
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_inference import REFERENCE, SENTENCES, build_model, fixed_length  # noqa: E402  (the same model and cap)

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_S = 1800  # one request, at full size on a slow CPU with 16 clients ahead of it


class OneByOne:
    """The scheduler's face (what the HTTP layer calls), over coqui's Xtts.inference one request at a time."""

    def __init__(self, models: dict):
        self.models = models
        self._voices, self._jobs = {}, queue.Queue()
        self._thread = None
        self._accepting = True

    def add_voice(self, name, reference):
        self._voices[name] = reference

    def voice_names(self):
        return list(self._voices)

    def queue_depth(self):
        return self._jobs.qsize()

    def submit(self, job):
        from xtts_ft.serving.scheduler import JobHandle, ShuttingDown

        if not self._accepting:
            raise ShuttingDown("the server is shutting down")
        handle = JobHandle(job, self.models[job.model].synthesizer.sample_rate, 1)
        self._jobs.put(handle)
        return handle

    def start(self):
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, daemon=True)
            self._thread.start()

    def _work(self):
        while (handle := self._jobs.get()) is not None:
            job = handle.job
            synthesizer = self.models[job.model].synthesizer
            result = synthesizer.synthesize(
                job.text, job.language, reference=self._voices[job.voice], decoding=dict(job.decoding), seed=job.seed
            )
            handle._add(0, result.wav, final=True)

    def drain(self, timeout_s=60):
        self._accepting = False
        self.stop()

    def stop(self):
        if self._thread is not None:
            self._jobs.put(None)
            self._thread.join()
            self._thread = None


class Served:
    """A SpeechServer over `scheduler`, under uvicorn in a thread on 127.0.0.1."""

    def __init__(self, scheduler, metrics=None):
        import uvicorn

        from xtts_ft.serving import openai_api

        settings = openai_api.ServerSettings(api_key=None, response_format="pcm", max_input_chars=4096)
        speech = openai_api.SpeechServer(scheduler, settings, Path(tempfile.mkdtemp(prefix="bench-serve-")), metrics)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1"
        self.server = openai_api.DrainingServer(uvicorn.Config(speech.app, log_level="warning"), speech)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 120
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.05)

    def close(self):
        self.server.should_exit = True
        self.thread.join(120)
        self.sock.close()


def run_clients(url: str, clients: int, texts: list, stream: bool) -> dict:
    """`clients` threads share the texts (each sends its next one when its last is answered); per request the
    latency and, streamed, the time to the first audio byte."""
    import openai

    client = openai.OpenAI(base_url=url, api_key="bench", max_retries=0, timeout=TIMEOUT_S)
    pending = queue.Queue()
    for text in texts:
        pending.put(text)
    latencies, first_audio = [], []

    def worker():
        while True:
            try:
                text = pending.get_nowait()
            except queue.Empty:
                return
            request = dict(model="bench", voice="alicia", input=text, response_format="pcm", extra_body={"seed": 0})
            started = time.perf_counter()
            if stream:
                with client.audio.speech.with_streaming_response.create(stream_format="audio", **request) as answer:
                    for i, _ in enumerate(answer.iter_bytes()):
                        if i == 0:
                            first_audio.append(time.perf_counter() - started)
            else:
                client.audio.speech.create(**request).read()
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for future in [pool.submit(worker) for _ in range(clients)]:
            future.result()
    wall = time.perf_counter() - started
    row = {"clients": clients, "requests": len(texts), "wall_s": wall, "requests_per_s": len(texts) / wall}
    row.update(p50_s=float(np.percentile(latencies, 50)), p95_s=float(np.percentile(latencies, 95)))
    if first_audio:
        row["ttfa_p50_s"] = float(np.percentile(first_audio, 50))
    return row


def rss_bytes() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=["full", "tiny"], default="full")
    parser.add_argument("--codes", type=int, default=48, help="GPT codes per sentence (21.5 per second of audio)")
    parser.add_argument("--clients", default="1,4,8,16")
    parser.add_argument("--requests", type=int, default=32, help="requests per setting")
    parser.add_argument("--rss-requests", type=int, default=500, help="0: no RSS measurement")
    parser.add_argument(
        "--skip-one-by-one", action="store_true", help="no one-at-a-time server (ours against synthesize_many only)"
    )
    parser.add_argument("--quick", action="store_true", help="tiny model, clients 1,4, 8 requests, 24 for RSS")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/xtts_ft_bench_inference"))
    parser.add_argument("--out", type=Path, default=REPO / "scripts" / "results" / "bench_serve.json")
    args = parser.parse_args()
    if args.quick:
        args.size, args.codes, args.clients, args.requests, args.rss_requests = "tiny", 16, "1,4", 8, 24

    from xtts_ft.serving.metrics import ServerMetrics
    from xtts_ft.serving.openai_api import load_models
    from xtts_ft.serving.scheduler import SpeechScheduler

    torch.set_num_threads(os.cpu_count())
    models = load_models(build_model(args.size, args.work_dir), {}, name="bench", device=args.device)
    synthesizer = models["bench"].synthesizer
    fixed_length(synthesizer, args.codes)
    clients = [int(c) for c in args.clients.split(",")]
    texts = (SENTENCES * (1 + args.requests // len(SENTENCES)))[: args.requests]
    requests = [{"text": t, "language": "en", "reference": REFERENCE} for t in texts]
    synthesizer.synthesize(texts[0], "en", reference=REFERENCE, seed=0)  # warm-up: voice latents, allocator
    synthesizer.synthesize_many(requests[:8], {"seed": 0}, 8)  # warm-up: the batch kernels' set-up (timing, packing)

    def many_8() -> float:
        started = time.perf_counter()
        synthesizer.synthesize_many(requests, {"seed": 0}, 8)
        return time.perf_counter() - started

    many = {"requests": len(texts), "wall_s": many_8()}
    many["requests_per_s"] = len(texts) / many["wall_s"]
    print(f"many-8: {many['requests_per_s']:.3f} requests/s", flush=True)

    # many_8_around: synthesize_many timed again right before and right after each of our non-streamed runs, so
    # that the ratio compares the two under the same load (other jobs on a shared machine come and go).
    results = {"ours": [], "ours_stream": [], "one_by_one": [], "many_8": many, "many_8_around": []}
    metrics = ServerMetrics()
    ours = SpeechScheduler(
        models, max_batch_size=8, max_wait_ms=20, max_queue=4096, on_batch=metrics.batch_rows.observe
    )
    ours.add_voice("alicia", REFERENCE)
    baseline = OneByOne(models)
    baseline.add_voice("alicia", REFERENCE)
    servers = [("ours", ours)] + ([] if args.skip_one_by_one else [("one_by_one", baseline)])
    for name, scheduler in servers:
        served = Served(scheduler, metrics if name == "ours" else None)
        try:
            warm = min(8, max(clients))  # warm-up through HTTP, at the largest batch the runs will have
            run_clients(served.url, warm, texts[:warm], stream=False)
            for n in clients:
                before = many_8() if name == "ours" else None
                results[name].append(run_clients(served.url, n, texts, stream=False))
                print(f"{name} {n} clients: {json.dumps(results[name][-1])}", flush=True)
                if name == "ours":
                    walls = [before, many_8()]
                    around = {"clients": n, "wall_s": walls, "requests_per_s": 2 * len(texts) / sum(walls)}
                    results["many_8_around"].append(around)
                    print(f"many-8 around {n} clients: {json.dumps(around)}", flush=True)
                if name == "ours":
                    results["ours_stream"].append(run_clients(served.url, n, texts, stream=True))
                    print(f"ours streamed {n} clients: {json.dumps(results['ours_stream'][-1])}", flush=True)
            if name == "ours" and args.rss_requests > 0:
                rss = {"before": rss_bytes()}
                batch = (texts * (1 + args.rss_requests // len(texts)))[: args.rss_requests]
                run_clients(served.url, min(8, max(clients)), batch, stream=False)
                rss["after"], rss["requests"] = rss_bytes(), len(batch)
                rss["growth"] = rss["after"] / rss["before"] - 1
                results["rss"] = rss
                print(f"RSS over {len(batch)} requests: {rss['growth'] * 100:+.1f} %", flush=True)
        finally:
            served.close()

    table = report(results, clients)
    print(table)
    record = {
        "size": args.size,
        "codes": args.codes,
        "requests": args.requests,
        "device": args.device,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "results": results,
        "table": table,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2))
    print(f"→ {args.out}")


def report(results: dict, clients: list) -> str:
    one = {row["clients"]: row for row in results["one_by_one"]}
    around = {row["clients"]: row["requests_per_s"] for row in results.get("many_8_around", [])}
    streamed = {row["clients"]: row for row in results["ours_stream"]}
    lines = [
        "| clients | ours req/s | one-by-one req/s | ratio | ours p50 / p95 s | one-by-one p50 / p95 s | "
        "ours streamed TTFA p50 s | TTFA / one-by-one p50 | vs many-8 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    nothing = {"requests_per_s": float("nan"), "p50_s": float("nan"), "p95_s": float("nan")}  # --skip-one-by-one
    for row in results["ours"]:
        n, ttfa = row["clients"], streamed[row["clients"]].get("ttfa_p50_s", float("nan"))
        base = one.get(n, nothing)
        lines.append(
            f"| {n} | {row['requests_per_s']:.3f} | {base['requests_per_s']:.3f} | "
            f"{row['requests_per_s'] / base['requests_per_s']:.2f}x | {row['p50_s']:.2f} / {row['p95_s']:.2f} | "
            f"{base['p50_s']:.2f} / {base['p95_s']:.2f} | {ttfa:.2f} | {ttfa / base['p50_s']:.2f} | "
            f"{row['requests_per_s'] / around.get(n, results['many_8']['requests_per_s']):.2f}x |"
        )
    rss = results.get("rss")
    if rss:
        lines.append(
            f"\nRSS over {rss['requests']} requests: {rss['before'] / 2**20:.0f} → {rss['after'] / 2**20:.0f} MiB "
            f"({rss['growth'] * 100:+.1f} %)"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
