#!/usr/bin/env python3
"""Python references for workers/detect: the same detectors with onnxruntime + numpy, and COCO
evaluation with pycocotools.

Commands:
  frames VIDEO FIRST LAST OUT
      decode frames FIRST..LAST (1-based, inclusive) of VIDEO to raw RGB (cv2, BGR -> RGB)
  pngs VIDEO OUT_DIR
      decode every frame of VIDEO to OUT_DIR/000001.png, ... (lossless, for COCO datasets)
  detect FAMILY MODEL FRAMES W H OPTIONS OUT
      run a detector (yolo | ssdRaw | ssdPostprocessed) on every W x H RGB frame of FRAMES; OPTIONS
      is JSON {minScore, iouThreshold, maxDetections}; OUT gets a JSON list per frame of
      [x0, y0, x1, y1, cocoClassId, score]
  bench FAMILY MODEL JPEG_DIR BATCH
      end-to-end images/s on every .jpg of JPEG_DIR (cv2.imdecode, preprocessing, onnxruntime,
      decoding and NMS), BATCH images per model call; prints JSON
  coco GROUND_TRUTH DETECTIONS OUT
      COCOeval (bbox) of the two JSON files: GROUND_TRUTH {images: [ids], categories: [ids],
      annotations: [{image_id, category_id, bbox: [x, y, w, h], iscrowd}]}, DETECTIONS a list of
      {image_id, category_id, bbox, score}; OUT gets {ap, ap50, ap75, perClass: {id: [ap, ap50, ap75]}}

Preprocessing is the Rust crate's (bilinear resize with half-pixel centres in float32, the YOLO
letterbox padded with 114), so both feed onnxruntime the same tensor.
"""
import json
import sys

import numpy as np

COCO_IDS = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28, 31, 32,
            33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60,
            61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90]


def taps(src, dst):
    ratio = np.float32(src) / np.float32(dst)
    s = (np.arange(dst, dtype=np.float32) + np.float32(0.5)) * ratio - np.float32(0.5)
    s = np.clip(s, np.float32(0), np.float32(src - 1))
    i0 = np.floor(s).astype(np.int64)
    i1 = np.minimum(i0 + 1, src - 1)
    return i0, i1, (s - i0.astype(np.float32)).astype(np.float32)


def resize(image, w, h):
    """Bilinear, half-pixel centres, float32, the same operations in the same order as Rust."""
    ih, iw, _ = image.shape
    x0, x1, fx = taps(iw, w)
    y0, y1, fy = taps(ih, h)
    img = image.astype(np.float32)
    one = np.float32(1.0)
    fx = fx[None, :, None]
    fy = fy[:, None, None]
    upper = (one - fx) * img[y0][:, x0] + fx * img[y0][:, x1]
    lower = (one - fx) * img[y1][:, x0] + fx * img[y1][:, x1]
    return (one - fy) * upper + fy * lower


def iou(a, b):
    w = max(min(a[2], b[2]) - max(a[0], b[0]), 0.0)
    h = max(min(a[3], b[3]) - max(a[1], b[1]), 0.0)
    inter = w * h
    union = max(a[2] - a[0], 0) * max(a[3] - a[1], 0) + max(b[2] - b[0], 0) * max(b[3] - b[1], 0) - inter
    return 0.0 if union <= 0 else inter / union


def nms(dets, threshold, limit):
    dets = sorted(dets, key=lambda d: -d[5])
    kept = []
    for d in dets:
        if len(kept) == limit:
            break
        if not any(k[4] == d[4] and iou(k, d) > threshold for k in kept):
            kept.append(d)
    return kept


def detect_yolo(session, frame, opts):
    h, w, _ = frame.shape
    size = 640
    r = min(np.float32(size) / np.float32(w), np.float32(size) / np.float32(h))
    nw = min(max(int(np.floor(np.float32(w) * r + np.float32(0.5))), 1), size)
    nh = min(max(int(np.floor(np.float32(h) * r + np.float32(0.5))), 1), size)
    left = int(max(np.floor(np.float32(size - nw) / np.float32(2) - np.float32(0.1) + np.float32(0.5)), 0))
    top = int(max(np.floor(np.float32(size - nh) / np.float32(2) - np.float32(0.1) + np.float32(0.5)), 0))
    canvas = np.full((size, size, 3), np.float32(114) * np.float32(1 / 255), np.float32)
    canvas[top:top + nh, left:left + nw] = resize(frame, nw, nh) * np.float32(1 / 255)
    x = canvas.transpose(2, 0, 1)[None].copy()
    out = session.run(None, {session.get_inputs()[0].name: x})[0][0]
    scores = out[4:]
    best = scores.argmax(axis=0)
    conf = scores.max(axis=0)
    sx, sy = np.float32(nw) / np.float32(w), np.float32(nh) / np.float32(h)
    dets = []
    for j in np.nonzero(conf >= opts["minScore"])[0]:
        cx, cy, bw, bh = out[0, j], out[1, j], out[2, j], out[3, j]
        two = np.float32(2)
        x0 = (cx - bw / two - np.float32(left)) / sx
        y0 = (cy - bh / two - np.float32(top)) / sy
        x1 = (cx + bw / two - np.float32(left)) / sx
        y1 = (cy + bh / two - np.float32(top)) / sy
        box = [float(np.clip(x0, 0, w)), float(np.clip(y0, 0, h)), float(np.clip(x1, 0, w)), float(np.clip(y1, 0, h))]
        dets.append(box + [COCO_IDS[int(best[j])], float(conf[j])])
    return nms(dets, opts["iouThreshold"], opts["maxDetections"])


def ssd_anchors():
    grids = [19, 10, 5, 3, 2, 1]
    n = len(grids)
    scales = [np.float32(0.2) + (np.float32(0.95) - np.float32(0.2)) * np.float32(i) / np.float32(n - 1) for i in range(n)] + [np.float32(1.0)]
    anchors = []
    for layer, grid in enumerate(grids):
        s, nxt = scales[layer], scales[layer + 1]
        if layer == 0:
            specs = [(np.float32(0.1), np.float32(1.0)), (s, np.float32(2.0)), (s, np.float32(0.5))]
        else:
            specs = [(s, np.float32(a)) for a in (1.0, 2.0, 0.5, 3.0, 0.3333)] + [(np.sqrt(s * nxt), np.float32(1.0))]
        stride = np.float32(1.0) / np.float32(grid)
        for y in range(grid):
            for x in range(grid):
                for sc, ar in specs:
                    root = np.sqrt(ar)
                    anchors.append(((np.float32(y) + np.float32(0.5)) * stride, (np.float32(x) + np.float32(0.5)) * stride, sc / root, sc * root))
    return np.array(anchors, np.float32)


def detect_ssd_raw(session, frame, opts, anchors):
    x = (resize(frame, 300, 300) * np.float32(2 / 255) - np.float32(1))[None].astype(np.float32)
    boxes, logits = session.run(None, {session.get_inputs()[0].name: x})
    return decode_ssd(boxes.reshape(-1, 4), logits[0], frame.shape, opts, anchors)


def decode_ssd(boxes, logits, shape, opts, anchors):
    h, w, _ = shape
    scores = np.float32(1) / (np.float32(1) + np.exp(-logits))
    dets = []
    for j, c in zip(*np.nonzero(scores[:, 1:] >= opts["minScore"])):
        c = c + 1
        if c not in COCO_IDS:
            continue
        a = anchors[j]
        ty, tx, th, tw = boxes[j]
        cy = ty / np.float32(10) * a[2] + a[0]
        cx = tx / np.float32(10) * a[3] + a[1]
        bh = np.exp(th / np.float32(5)) * a[2]
        bw = np.exp(tw / np.float32(5)) * a[3]
        two = np.float32(2)
        ymin, xmin, ymax, xmax = cy - bh / two, cx - bw / two, cy + bh / two, cx + bw / two
        c01 = lambda v: np.clip(v, np.float32(0), np.float32(1))
        box = [float(c01(xmin) * np.float32(w)), float(c01(ymin) * np.float32(h)),
               float(c01(xmax) * np.float32(w)), float(c01(ymax) * np.float32(h))]
        dets.append(box + [int(c), float(scores[j, c])])
    return nms(dets, opts["iouThreshold"], opts["maxDetections"])


def detect_ssd_post(session, frame, opts):
    h, w, _ = frame.shape
    names = [o.name for o in session.get_outputs()]
    outs = dict(zip(names, session.run(None, {session.get_inputs()[0].name: frame[None]})))
    n = int(outs["num_detections:0"][0])
    dets = []
    for i in range(n):
        s = float(outs["detection_scores:0"][0, i])
        if s < opts["minScore"]:
            continue
        ymin, xmin, ymax, xmax = outs["detection_boxes:0"][0, i]
        dets.append([float(xmin * np.float32(w)), float(ymin * np.float32(h)), float(xmax * np.float32(w)),
                     float(ymax * np.float32(h)), int(round(float(outs["detection_classes:0"][0, i]))), s])
    return dets[: opts["maxDetections"]]


def video_frames(video):
    """The frames of VIDEO in order, as cv2 decodes them (BGR)."""
    import cv2
    cap = cv2.VideoCapture(video)
    while True:
        ok, frame = cap.read()
        if not ok:
            return
        yield frame


def cmd_frames(video, first, last, out):
    import cv2
    first, last = int(first), int(last)
    index = 0
    with open(out, "wb") as f:
        for index, frame in enumerate(video_frames(video), start=1):
            if first <= index <= last:
                f.write(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB).tobytes())
    if index < last:
        sys.exit(f"reference.py: {video} has {index} frames, fewer than {last}")


def cmd_pngs(video, out_dir):
    import os
    import cv2
    os.makedirs(out_dir, exist_ok=True)
    index = 0
    for index, frame in enumerate(video_frames(video), start=1):
        cv2.imwrite(os.path.join(out_dir, f"{index:06d}.png"), frame, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    print(index)


def cmd_detect(family, model, frames, w, h, options, out):
    import onnxruntime as ort
    w, h = int(w), int(h)
    opts = json.loads(options)
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    data = np.fromfile(frames, dtype=np.uint8).reshape(-1, h, w, 3)
    anchors = ssd_anchors() if family == "ssdRaw" else None
    results = []
    for frame in data:
        if family == "yolo":
            results.append(detect_yolo(session, frame, opts))
        elif family == "ssdRaw":
            results.append(detect_ssd_raw(session, frame, opts, anchors))
        elif family == "ssdPostprocessed":
            results.append(detect_ssd_post(session, frame, opts))
        else:
            sys.exit(f"unknown family {family}")
    with open(out, "w") as f:
        json.dump(results, f)


def preprocess_ssd(frame):
    return (resize(frame, 300, 300) * np.float32(2 / 255) - np.float32(1)).astype(np.float32)


def cmd_bench(family, model, jpeg_dir, batch):
    import glob
    import time
    import cv2
    import onnxruntime as ort
    batch = int(batch)
    files = sorted(glob.glob(f"{jpeg_dir}/*.jpg"))
    blobs = [np.fromfile(f, dtype=np.uint8) for f in files]
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    opts = {"minScore": 0.25, "iouThreshold": 0.5, "maxDetections": 300}
    anchors = ssd_anchors()
    found = 0

    def run():
        nonlocal found
        for start in range(0, len(blobs), batch):
            frames = [cv2.cvtColor(cv2.imdecode(b, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB) for b in blobs[start:start + batch]]
            if family == "yolo":
                for frame in frames:
                    found += len(detect_yolo(session, frame, opts))
            elif family == "ssdRaw":
                x = np.stack([preprocess_ssd(f) for f in frames])
                boxes, logits = session.run(None, {session.get_inputs()[0].name: x})
                for i, frame in enumerate(frames):
                    found += len(decode_ssd(boxes[i].reshape(-1, 4), logits[i], frame.shape, opts, anchors))
            else:
                sys.exit(f"bench: unsupported family {family}")

    run()  # warm-up
    found = 0
    started = time.perf_counter()
    run()
    seconds = time.perf_counter() - started
    print(json.dumps({"images": len(blobs), "seconds": seconds, "images_per_second": len(blobs) / seconds,
                      "detections": found, "onnxruntime": ort.__version__}))


def cmd_coco(ground_truth, detections, out):
    import contextlib
    import io
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    gt = json.load(open(ground_truth))
    dataset = {
        "images": [{"id": i} for i in gt["images"]],
        "categories": [{"id": c} for c in gt["categories"]],
        "annotations": [dict(a, id=k + 1, area=a["bbox"][2] * a["bbox"][3]) for k, a in enumerate(gt["annotations"])],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = dataset
        coco.createIndex()
        dts = coco.loadRes(json.load(open(detections))) if json.load(open(detections)) else COCO()
        ev = COCOeval(coco, dts, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    p = ev.eval["precision"][:, :, :, 0, 2]  # T x R x K, area all, maxDets 100

    def mean(a):
        a = a[a > -1]
        return float(np.mean(a)) if a.size else None

    per_class = {str(c): [mean(p[:, :, k]), mean(p[0, :, k]), mean(p[5, :, k])] for k, c in enumerate(ev.params.catIds)}
    with open(out, "w") as f:
        json.dump({"ap": mean(p), "ap50": mean(p[0]), "ap75": mean(p[5]), "perClass": per_class}, f)


if __name__ == "__main__":
    commands = {"frames": cmd_frames, "pngs": cmd_pngs, "detect": cmd_detect, "bench": cmd_bench, "coco": cmd_coco}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        sys.exit(__doc__)
    commands[sys.argv[1]](*sys.argv[2:])
