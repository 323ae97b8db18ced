"""The AgentBackend's one connection under the API server's threads: made once however many calls arrive at
first, and replaced once it is lost (a restarted machine), the lost one closed. The real path is exercised by
the API tests through the VM (tests/api, ``vm`` backend)."""

import threading
import time

from runner.backends.agent import AgentBackend


class _Client:
    def __init__(self):
        self.lost = False
        self.closed = False

    def close(self):
        self.closed = True


def test_concurrent_first_calls_open_one_connection():
    made = []

    def connect():
        time.sleep(0.05)  # a slow handshake: every thread arrives while the first one connects
        made.append(_Client())
        return made[-1]

    backend = AgentBackend(connect)
    seen = []
    threads = [threading.Thread(target=lambda: seen.append(backend.client)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(made) == 1 and all(c is made[0] for c in seen)


def test_a_lost_connection_is_replaced_and_closed():
    made = []
    backend = AgentBackend(lambda: made.append(_Client()) or made[-1])
    first = backend.client
    assert backend.client is first
    first.lost = True
    second = backend.client
    assert second is not first and first.closed and len(made) == 2
