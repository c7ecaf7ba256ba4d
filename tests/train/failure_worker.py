"""One of two processes (1 CPU device each) for tests/train/test_failure_agreement.py.

    python failure_worker.py PROCESS_ID PORT

Each process serves its own Search-R1-style HTTP retriever and rolls out a scripted search
three times, each rollout ending in the trainer's agreement (`failures_agreed` with the loop's
`rollout_failure`). Process 1's retriever answers the first search, then sleeps far past the
client's timeout. Both processes must then stop with the same error, as main.py reports it
(`error: ...` on stderr, exit status 1), and print when they stopped.
"""
import http.server
import json
import os
import sys
import threading
import time
import types

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # this checkout
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402

pid, port = int(sys.argv[1]), sys.argv[2]
jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=2, process_id=pid)

import numpy as np  # noqa: E402

from searche1_jax.model.checkpoint import smollm2_gguf_path  # noqa: E402
from searche1_jax.model.tokenizer import Tokenizer  # noqa: E402
from searche1_jax.retrieval.factory import build_retriever  # noqa: E402
from searche1_jax.rollout.agent import STOP_STRINGS, AgentConfig, SearchAgent  # noqa: E402
from searche1_jax.rollout.sampler import SamplingParams  # noqa: E402
from searche1_jax.rollout.scripted import ScriptedPolicy  # noqa: E402
from searche1_jax.rollout.stop import build_stop_automaton, token_bytes_from_tokenizer  # noqa: E402
from searche1_jax.train.loop import rollout_failure  # noqa: E402
from searche1_jax.train.multihost import ProcessFailed, failures_agreed  # noqa: E402

SLEEP_S = 600  # process 1's retriever after its first answer: past any timeout and the heartbeat
served = []


class Retriever(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        served.append(body["queries"])
        if pid == 1 and len(served) > 1:
            time.sleep(SLEEP_S)
        hits = [[{"document": {"id": "1", "contents": f"T\nabout {q}"}, "score": 1.0}] for q in body["queries"]]
        raw = json.dumps({"result": hits}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *args):
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Retriever)
server.daemon_threads = True
threading.Thread(target=server.serve_forever, daemon=True).start()
r = types.SimpleNamespace(kind="http", url=f"http://127.0.0.1:{server.server_address[1]}", index="", corpus="",
                          topk=1, timeout=0.5, deadline=1.0, max_queries=256)

tok = Tokenizer.from_gguf(smollm2_gguf_path())
eos = tok.eos_ids[0]
ids = tok.encode("<search> alpha </search>") + tok.encode("<answer> a </answer>") + [eos] * 4
policy = ScriptedPolicy(np.asarray([ids, ids], np.int32), tok.vocab_size)
stop = build_stop_automaton(list(STOP_STRINGS), token_bytes_from_tokenizer(tok.backend))
agent = SearchAgent(tok, build_retriever(r), stop, AgentConfig(max_turns=1, topk=1, max_turn_tokens=16,
                                                               max_response_tokens=96, prompt_bucket=32))
try:
    for step in range(3):
        print(f"rollout {step} starts at {time.time()}", flush=True)
        with failures_agreed("rollouts", rollout_failure(r)):
            trajs = agent.run(policy, ["q0", "q1"], jax.random.key(step), SamplingParams(greedy=True))
        print(f"rollout {step} agreed: {[t.answer for t in trajs]}", flush=True)
except ProcessFailed as e:
    print(f"stopped at {time.time()}", flush=True)
    raise SystemExit(f"error: {e}") from None
