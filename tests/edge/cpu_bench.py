#!/usr/bin/env python3
"""CPU of the capture worker on a camera at 25 fps: the real `capture` binary (motion detection,
selection at the spec's default budget of 60 uploads a minute, and the student on every frame) on an RTSP stream from GStreamer's server (real time),
for each clip given. The teacher is away (an unreachable annotator: its work is not on the node),
so selected frames only go to the spool. CPU = (user + system time of the process) / wall time,
read from /proc over a window after a warm-up.

usage: cpu_bench.py CAPTURE ONNXRUNTIME MODEL OUT.json CLIP [CLIP ...]
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

capture, onnxruntime, model, out = sys.argv[1:5]
clips = sys.argv[5:]
here = os.path.dirname(os.path.abspath(__file__))
tick = os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, seconds=20):
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"nothing listens on {port}")


def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / tick


def metric(port, series):
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return 0.0


rows = []
for clip in clips:
    work = tempfile.mkdtemp()
    rtsp, http = free_port(), free_port()
    server = subprocess.Popen(["/usr/bin/python3", os.path.join(here, "../video/rtsp_server.py"), clip, str(rtsp)],
                              stdout=subprocess.DEVNULL)
    wait_port(rtsp)
    proc = subprocess.Popen([capture, "--url", f"rtsp://127.0.0.1:{rtsp}/live", "--annotator-url", "http://127.0.0.1:9",
                             "--dataset", os.path.join(work, "data"), "--model", model, "--onnxruntime", onnxruntime,
                             "--inference-threads", "1", "--cpu", "--metrics-listen", f"127.0.0.1:{http}",
                             # The spec's default upload budget.
                             "--uploads-per-minute", "60"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(http)
    time.sleep(5)  # warm-up: model loaded, background model built
    c0, t0 = cpu_seconds(proc.pid), time.time()
    f0 = metric(http, 'autotuner_capture_frames_total{outcome="decoded"}')
    i0 = metric(http, 'autotuner_edge_frames_total{outcome="inferred"}')
    time.sleep(20)
    c1, t1 = cpu_seconds(proc.pid), time.time()
    f1 = metric(http, 'autotuner_capture_frames_total{outcome="decoded"}')
    i1 = metric(http, 'autotuner_edge_frames_total{outcome="inferred"}')
    dropped = metric(http, 'autotuner_edge_frames_total{outcome="dropped"}')
    source_dropped = metric(http, 'autotuner_capture_frames_total{outcome="dropped"}')
    proc.terminate()
    proc.wait()
    server.terminate()
    server.wait()
    shutil.rmtree(work, ignore_errors=True)
    wall = t1 - t0
    row = {"clip": os.path.basename(clip), "cores_used": (c1 - c0) / wall, "decoded_fps": (f1 - f0) / wall,
           "inferred_fps": (i1 - i0) / wall, "inference_dropped_total": dropped, "source_dropped_total": source_dropped, "seconds": wall}
    print(json.dumps(row), flush=True)
    rows.append(row)
json.dump({"command": "scripts/bench-edge (tests/edge/cpu_bench.py)",
           "setup": "capture (release) on an RTSP stream at 25 fps from GStreamer's server, motion + the student "
                    "(person, 1 ONNX Runtime thread) on every frame, annotator unreachable",
           "results": rows}, open(out, "w"), indent=2)
