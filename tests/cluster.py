"""Launching a 2-worker MultiWorkerMirroredStrategy cluster on 127.0.0.1 for the tests: free ports,
bounded time, each worker's exit status and output."""

import json
import os
import socket
import subprocess
import sys

TIMEOUT_S = 300
TESTS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TESTS)


def free_ports(count):
    """`count` ports that were free on 127.0.0.1 a moment ago."""
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def run_workers(cwd, command, workers=2, timeout=TIMEOUT_S):
    """Runs `command(index)` (an argv list for the Python interpreter) as each worker of a cluster on
    127.0.0.1 (TF_CONFIG set for each); returns their [(returncode, output)]. Killed after `timeout` s."""
    addresses = [f"127.0.0.1:{port}" for port in free_ports(workers)]
    processes = []
    for index in range(workers):
        config = {"cluster": {"worker": addresses}, "task": {"type": "worker", "index": index}}
        path = os.pathsep.join([REPO, TESTS, os.environ.get("PYTHONPATH", "")])
        env = dict(os.environ, TF_CONFIG=json.dumps(config), TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=path)
        processes.append(subprocess.Popen([sys.executable, *command(index)], env=env, cwd=cwd, text=True,
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    results = []
    try:
        for process in processes:
            output, _ = process.communicate(timeout=timeout)
            results.append((process.returncode, output))
    finally:
        for process in processes:
            process.kill()
    return results
