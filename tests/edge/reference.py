#!/usr/bin/env python3
"""The Python baseline of the edge benchmark: what a Python service would do to run the student on
a video, written the fast way (OpenCV's decoder and SIMD resize, numpy vectorised decoding, OpenCV's
NMS), on the same onnxruntime library the Rust worker loads.

usage: reference.py VIDEO MODEL FRAMES THREADS   -> prints JSON {images_per_second, detections}
"""
import json
import sys
import time

import cv2
import numpy as np
import onnxruntime as ort

sys.path.insert(0, __file__.rsplit("/", 2)[0] + "/detect")
from reference import ssd_anchors  # noqa: E402  the same anchors as the Rust crate

video, model, frames, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
options = ort.SessionOptions()
options.intra_op_num_threads = threads
options.add_session_config_entry("session.intra_op.allow_spinning", "0")
session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
name = session.get_inputs()[0].name
anchors = ssd_anchors()
min_logit = np.log(0.5 / 0.5)


def detect(frame):
    h, w = frame.shape[:2]
    rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
    x = cv2.resize(rgb, (300, 300), interpolation=cv2.INTER_LINEAR).astype(np.float32) * np.float32(2 / 255) - 1
    boxes, logits = session.run(None, {name: x[None]})
    person = logits[0, :, 1]
    keep = np.nonzero(person >= min_logit)[0]
    if keep.size == 0:
        return 0
    scores = 1 / (1 + np.exp(-person[keep]))
    a = anchors[keep]
    t = boxes.reshape(-1, 4)[keep]
    cy = t[:, 0] / 10 * a[:, 2] + a[:, 0]
    cx = t[:, 1] / 10 * a[:, 3] + a[:, 1]
    bh = np.exp(t[:, 2] / 5) * a[:, 2]
    bw = np.exp(t[:, 3] / 5) * a[:, 3]
    xywh = np.stack([np.clip(cx - bw / 2, 0, 1) * w, np.clip(cy - bh / 2, 0, 1) * h, bw * w, bh * h], 1)
    return len(cv2.dnn.NMSBoxes(xywh.tolist(), scores.tolist(), 0.5, 0.5))


def run():
    capture = cv2.VideoCapture(video)
    found = n = 0
    while n < frames:
        ok, frame = capture.read()
        if not ok:
            break
        found += detect(frame)
        n += 1
    return n, found


run()  # warm-up (and the file in the page cache)
started = time.perf_counter()
n, found = run()
seconds = time.perf_counter() - started
print(json.dumps({"images": n, "seconds": seconds, "images_per_second": n / seconds, "detections": found}))
