#!/usr/bin/env python3
"""The reference motion detector, in Python with OpenCV, for tests and benchmarks of workers/vision.

The algorithm is the reference method as the Rust detector implements it (workers/vision/src/
detector.rs), written the obvious way with cv2 and numpy: a pixel-wise numpy median of the last N
sampled frames, the median of the last M such backgrounds, cv2.GaussianBlur, cv2.absdiff,
cv2.threshold, cv2.dilate, cv2.findContours(RETR_EXTERNAL) and cv2.boundingRect. The timing rules
(when a sample is taken, when a new background takes over, when the model resets) are the Rust
detector's, so that the two can be compared frame by frame.

Commands:
  decode VIDEO OUT            decode a video to raw 8-bit gray frames (cv2 BGR -> gray); prints "W H N"
  detect FRAMES W H CONFIG OUT_JSONL OUT_MASKS
                              run the reference over raw frames; one JSON line per frame, and the
                              final mask of each detected frame as packed bits (row-major, LSB first)
  bench FRAMES W H CONFIG SCALE_W SCALE_H COUNT OUT_JSONL
                              time the reference single-threaded on COUNT frames scaled (nearest
                              neighbour) to SCALE_W x SCALE_H; prints a JSON summary

CONFIG is JSON with the keys of the Rust MotionConfig (see DEFAULT below).
"""
import json
import sys
import time
from collections import deque

import cv2
import numpy as np

DEFAULT = {
    "background": "median",  # or "firstFrame"
    "medianFrames": 25,
    "medianFrameSkip": 10,
    "backgroundHistory": 5,
    "resetIntervalFrames": None,
    "resetChangedFraction": 0.6,
    "blurKernel": 21,
    "threshold": 25,
    "dilateIterations": 2,
    "minRegionArea": 500,
    "cropMargin": 0.1,
    "cropAspect": 1.0,
}


def median_u8(images):
    """numpy.median over the stack, rounded half up to uint8 (the mean of the middle two for even counts)."""
    return np.floor(np.median(np.stack(images), axis=0) + 0.5).astype(np.uint8)


def crop_for(union, width, height, margin, aspect):
    """Same arithmetic, in the same order, as detector::crop_for in Rust (f32 settings widened to f64)."""
    x, y, uw, uh = (float(v) for v in union)
    margin = float(np.float32(margin))
    cw = uw + 2.0 * np.floor(uw * margin + 0.5)
    ch = uh + 2.0 * np.floor(uh * margin + 0.5)
    if aspect is not None:
        aspect = float(np.float32(aspect))
        if cw < ch * aspect:
            cw = float(np.ceil(ch * aspect))
        else:
            ch = float(np.ceil(cw / aspect))
    cw = min(cw, float(width))
    ch = min(ch, float(height))
    cx = x + uw / 2.0
    cy = y + uh / 2.0
    cx0 = min(max(np.floor(cx - cw / 2.0), 0.0), width - cw)
    cy0 = min(max(np.floor(cy - ch / 2.0), 0.0), height - ch)
    return [int(cx0), int(cy0), int(cw), int(ch)]


class ReferenceDetector:
    def __init__(self, width, height, config):
        c = dict(DEFAULT)
        c.update(config)
        self.c = c
        self.width, self.height = width, height
        self.k = c["blurKernel"]
        self.kernel = np.ones((5, 5), np.uint8)
        self.median = c["background"] == "median"
        self.background = None
        self.samples = deque(maxlen=c["medianFrames"])
        self.backgrounds = deque(maxlen=c["backgroundHistory"])
        self.rebuild = None
        self.index = 0
        self.last_reset = 0
        self.next_sample = 0
        self.background_samples = 0

    def blur(self, image):
        return cv2.GaussianBlur(image, (self.k, self.k), 0)

    def reset_to(self, gray, index):
        self.background = self.blur(gray)
        self.background_samples = 1
        self.last_reset = index
        if self.median:
            self.samples.clear()
            self.backgrounds.clear()
            self.samples.append(gray.copy())
            self.backgrounds.append(gray.copy())
            self.rebuild = None
            self.next_sample = index + self.c["medianFrameSkip"]

    def add_sample(self, gray, index):
        self.samples.append(gray.copy())
        self.backgrounds.append(median_u8(list(self.samples)))
        blurred = self.blur(median_u8(list(self.backgrounds)))
        self.next_sample = index + self.c["medianFrameSkip"]
        # Computed now, used one sampling period later (the Rust detector spreads the work over it).
        self.rebuild = (index + self.c["medianFrameSkip"], blurred, len(self.samples))

    def process(self, gray):
        c = self.c
        index = self.index
        self.index += 1
        if self.rebuild is not None and index >= self.rebuild[0]:
            _, self.background, self.background_samples = self.rebuild
            self.rebuild = None
        out = {"index": index, "state": None, "reset": None, "changed": 0, "regions": [],
               "union": None, "crop": None, "selected": False}
        mask = None
        reset = None
        if self.background is None:
            out["state"] = "warming"
            reset = "start"
        else:
            diff = cv2.absdiff(self.blur(gray), self.background)
            _, changed = cv2.threshold(diff, c["threshold"], 255, cv2.THRESH_BINARY)
            count = cv2.countNonZero(changed)
            out["changed"] = count
            fraction = np.float32(count) / np.float32(self.width * self.height)
            if fraction > np.float32(c["resetChangedFraction"]):
                out["state"] = "reset"
                reset = "changedArea"
            else:
                out["state"] = "detected"
                if c["dilateIterations"] > 0:
                    changed = cv2.dilate(changed, self.kernel, iterations=c["dilateIterations"])
                mask = changed
                contours, _ = cv2.findContours(changed, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
                union = None
                for contour in contours:
                    x, y, w, h = cv2.boundingRect(contour)
                    if w * h >= c["minRegionArea"]:
                        out["regions"].append([x, y, w, h])
                        if union is None:
                            union = [x, y, x + w, y + h]
                        else:
                            union = [min(union[0], x), min(union[1], y), max(union[2], x + w), max(union[3], y + h)]
                if union is not None:
                    u = [union[0], union[1], union[2] - union[0], union[3] - union[1]]
                    out["union"] = u
                    out["crop"] = crop_for(u, self.width, self.height, c["cropMargin"], c["cropAspect"])
                    out["selected"] = True
                interval = c["resetIntervalFrames"]
                if interval is not None and index - self.last_reset >= interval:
                    reset = "interval"
        out["reset"] = reset
        if reset is not None:
            self.reset_to(gray, index)
        elif self.median and index == self.next_sample:
            self.add_sample(gray, index)
        out["samples"] = self.background_samples
        return out, mask


def read_frames(path, width, height):
    data = np.fromfile(path, dtype=np.uint8)
    return data.reshape(-1, height, width)


def scale_nearest(frames, width, height):
    """Nearest-neighbour scaling with the index rule the Rust benchmark uses: src = dst * src_size // dst_size."""
    n, h, w = frames.shape
    rows = (np.arange(height) * h) // height
    cols = (np.arange(width) * w) // width
    return [np.ascontiguousarray(f[rows][:, cols]) for f in frames]


def cmd_decode(video, out):
    cap = cv2.VideoCapture(video)
    if not cap.isOpened():
        sys.exit(f"reference.py: cannot open {video}")
    count, shape = 0, None
    with open(out + ".part", "wb") as f:
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
            shape = gray.shape
            f.write(gray.tobytes())
            count += 1
    if count == 0:
        sys.exit(f"reference.py: no frames in {video}")
    import os
    os.replace(out + ".part", out)
    print(shape[1], shape[0], count)


def cmd_detect(frames_path, width, height, config, out_jsonl, out_masks):
    frames = read_frames(frames_path, int(width), int(height))
    detector = ReferenceDetector(int(width), int(height), json.loads(config))
    empty = np.zeros((int(height), int(width)), np.uint8)
    with open(out_jsonl, "w") as lines, open(out_masks, "wb") as masks:
        for frame in frames:
            report, mask = detector.process(frame)
            lines.write(json.dumps(report) + "\n")
            masks.write(np.packbits((mask if mask is not None else empty) > 0, bitorder="little").tobytes())


def cmd_bench(frames_path, width, height, config, scale_w, scale_h, count, out_jsonl):
    cv2.setNumThreads(1)
    frames = read_frames(frames_path, int(width), int(height))[: int(count)]
    scaled = scale_nearest(frames, int(scale_w), int(scale_h))
    detector = ReferenceDetector(int(scale_w), int(scale_h), json.loads(config))
    reports = []
    times = []
    start = time.perf_counter()
    for frame in scaled:
        t0 = time.perf_counter()
        report, _ = detector.process(frame)
        times.append(time.perf_counter() - t0)
        reports.append(report)
    seconds = time.perf_counter() - start
    with open(out_jsonl, "w") as lines:
        for r in reports:
            lines.write(json.dumps(r) + "\n")
    print(json.dumps({"frames": len(scaled), "seconds": seconds, "fps": len(scaled) / seconds,
                      "max_frame_ms": max(times) * 1e3,
                      "opencv": cv2.__version__, "numpy": np.__version__, "threads": cv2.getNumThreads()}))


if __name__ == "__main__":
    commands = {"decode": cmd_decode, "detect": cmd_detect, "bench": cmd_bench}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        sys.exit(__doc__)
    commands[sys.argv[1]](*sys.argv[2:])
