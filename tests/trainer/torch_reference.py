#!/usr/bin/env python3
"""The PyTorch reference for the trainer benchmark: the same fine-tune as `trainer` on the same
data, written the usual way, with a full forward pass of the student every step (no feature
cache). The student is the same ONNX graph, executed op by op with torch (Conv, Clip, Add, Mul,
Transpose, Reshape, Concat and the shape arithmetic tf2onnx emits), its weights from the ONNX
initializers. Trained: the box rows and the given classes' rows of the six box-predictor convs
(boxRegression), or every weight (unfrozen). Loss: sigmoid cross-entropy with hard-negative
mining (3 per positive) and smooth L1, both over the number of matched anchors; Adam.

usage: torch_reference.py MODEL TRAIN_COCO MODE EPOCHS BATCH VIEWS [MAX_STEPS]
Prints JSON: {jobSeconds, loadSeconds, trainSeconds, evalSeconds, steps, secondsPerStep, threads}.
"""
import json
import math
import os
import sys
import time

import cv2
import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper


def anchors_mobilenet_v2_300():
    # TF OD API's multiple_grid_anchor_generator: scales 0.2..0.95 over 6 layers, ratios
    # 1, 2, 0.5, 3, 1/3 and an interpolated scale; the first layer has 3 boxes (0.1, 2, 0.5).
    sizes = [19, 10, 5, 3, 2, 1]
    scales = [0.2 + (0.95 - 0.2) * i / 5 for i in range(6)] + [1.0]
    out = []
    for layer, n in enumerate(sizes):
        if layer == 0:
            boxes = [(0.1, 1.0), (scales[0], 2.0), (scales[0], 0.5)]
        else:
            s = scales[layer]
            boxes = [(s, 1.0), (s, 2.0), (s, 0.5), (s, 3.0), (s, 1 / 3), (math.sqrt(s * scales[layer + 1]), 1.0)]
        for y in range(n):
            for x in range(n):
                for s, r in boxes:
                    out.append(((y + 0.5) / n, (x + 0.5) / n, s / math.sqrt(r), s * math.sqrt(r)))
    return np.array(out, dtype=np.float32)  # cy, cx, h, w


class Graph:
    def __init__(self, path, trainable_names):
        m = onnx.load(path)
        self.nodes = list(m.graph.node)
        self.init = {}
        for t in m.graph.initializer:
            a = numpy_helper.to_array(t)
            self.init[t.name] = torch.tensor(a) if a.dtype == np.float32 else a
        self.input = m.graph.input[0].name
        self.params = {}
        for n in trainable_names:
            self.init[n] = torch.nn.Parameter(self.init[n])
            self.params[n] = self.init[n]

    def run(self, x, outputs):
        v = {self.input: x}
        get = lambda n: v[n] if n in v else self.init[n]
        for node in self.nodes:
            op, i = node.op_type, node.input
            at = {a.name: a for a in node.attribute}
            if op == "Transpose":
                r = get(i[0]).permute(*at["perm"].ints)
            elif op == "Conv":
                p = list(at["pads"].ints) if "pads" in at else [0, 0, 0, 0]
                xx = F.pad(get(i[0]), (p[1], p[3], p[0], p[2]))
                r = F.conv2d(xx, get(i[1]), get(i[2]) if len(i) > 2 else None,
                             stride=list(at["strides"].ints), groups=at["group"].i if "group" in at else 1)
            elif op == "Clip":
                r = get(i[0]).clamp(float(get(i[1])), float(get(i[2])))
            elif op in ("Add", "Mul"):
                a, b = get(i[0]), get(i[1])
                r = a + b if op == "Add" else a * b
            elif op == "Shape":
                r = np.array(get(i[0]).shape, dtype=np.int64)
            elif op == "Gather":
                r = np.asarray(get(i[0]))[np.asarray(get(i[1]))]
            elif op == "Cast":
                r = np.asarray(get(i[0])).astype(np.int64)
            elif op == "Slice":
                r = np.asarray(get(i[0]))[int(np.asarray(get(i[1])).ravel()[0]):int(np.asarray(get(i[2])).ravel()[0])]
            elif op == "Concat":
                parts = [get(n) for n in i]
                if isinstance(parts[0], torch.Tensor):
                    r = torch.cat(parts, dim=at["axis"].i)
                else:
                    r = np.concatenate([np.atleast_1d(np.asarray(p)) for p in parts])
            elif op == "Reshape":
                r = get(i[0]).reshape(*[int(d) for d in np.asarray(get(i[1]))])
            else:
                raise SystemExit(f"unsupported op {op}")
            v[node.output[0]] = r
        return [v[o] for o in outputs]


def main():
    model, train, mode, epochs, batch, views = sys.argv[1:7]
    max_steps = int(sys.argv[7]) if len(sys.argv) > 7 else None
    epochs, batch, views = int(epochs), int(batch), int(views)
    started = time.perf_counter()
    proto = onnx.load(model)
    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    if mode == "unfrozen":
        names = [x for n in convs for x in n.input[1:]]
    else:
        names = [x for n in convs if n.name.startswith("BoxPredictor") for x in n.input[1:]]
    graph = Graph(model, names)
    for p in graph.init.values():
        if isinstance(p, torch.Tensor) and not isinstance(p, torch.nn.Parameter):
            p.requires_grad_(False)
    head_out = ["concat:0", "concat_1:0"]

    coco = json.load(open(train))
    root = os.path.dirname(train)
    by_image = {}
    for a in coco["annotations"]:
        if not a.get("iscrowd"):
            by_image.setdefault(a["image_id"], []).append(a["bbox"])
    rng = np.random.default_rng(1)
    inputs, boxes = [], []
    for im in coco["images"]:
        bgr = cv2.imread(os.path.join(root, im["file_name"]))
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        h, w = rgb.shape[:2]
        for v in range(views):
            x0, y0, x1, y1 = 0, 0, w, h
            flip = False
            if v > 0:
                cw, ch = int(w * rng.uniform(0.8, 1)), int(h * rng.uniform(0.8, 1))
                x0, y0 = int(rng.uniform(0, w - cw)), int(rng.uniform(0, h - ch))
                x1, y1, flip = x0 + cw, y0 + ch, rng.uniform() < 0.5
            crop = cv2.resize(rgb[y0:y1, x0:x1], (300, 300), interpolation=cv2.INTER_LINEAR)
            if flip:
                crop = crop[:, ::-1]
            inputs.append(crop.astype(np.float32) * (2 / 255) - 1)
            bb = []
            for bx, by, bw, bh in by_image.get(im["id"], []):
                a0, b0 = max(bx, x0), max(by, y0)
                a1, b1 = min(bx + bw, x1), min(by + bh, y1)
                if a1 - a0 > 1 and b1 - b0 > 1:
                    r = [(b0 - y0) / (y1 - y0), (a0 - x0) / (x1 - x0), (b1 - y0) / (y1 - y0), (a1 - x0) / (x1 - x0)]
                    if flip:
                        r = [r[0], 1 - r[3], r[2], 1 - r[1]]
                    bb.append(r)
            boxes.append(np.array(bb, dtype=np.float32).reshape(-1, 4))
    inputs = torch.tensor(np.stack(inputs))
    anchors = anchors_mobilenet_v2_300()
    load_seconds = time.perf_counter() - started

    ay0, ax0 = anchors[:, 0] - anchors[:, 2] / 2, anchors[:, 1] - anchors[:, 3] / 2
    ay1, ax1 = anchors[:, 0] + anchors[:, 2] / 2, anchors[:, 1] + anchors[:, 3] / 2

    def targets(bb):
        n = len(anchors)
        cls = np.zeros(n, np.float32)
        enc = np.zeros((n, 4), np.float32)
        if len(bb) == 0:
            return cls, enc
        ih = np.clip(np.minimum(ay1[:, None], bb[None, :, 2]) - np.maximum(ay0[:, None], bb[None, :, 0]), 0, None)
        iw = np.clip(np.minimum(ax1[:, None], bb[None, :, 3]) - np.maximum(ax0[:, None], bb[None, :, 1]), 0, None)
        inter = ih * iw
        union = (anchors[:, 2] * anchors[:, 3])[:, None] + ((bb[:, 2] - bb[:, 0]) * (bb[:, 3] - bb[:, 1]))[None] - inter
        iou = inter / np.maximum(union, 1e-9)
        best = iou.argmax(1)
        matched = np.where(iou.max(1) >= 0.5, best, -1)
        matched[iou.argmax(0)] = np.arange(len(bb))
        pos = matched >= 0
        g = bb[matched[pos]]
        a = anchors[pos]
        gh, gw = g[:, 2] - g[:, 0], g[:, 3] - g[:, 1]
        gcy, gcx = g[:, 0] + gh / 2, g[:, 1] + gw / 2
        enc[pos] = np.stack([(gcy - a[:, 0]) / a[:, 2] * 10, (gcx - a[:, 1]) / a[:, 3] * 10,
                             np.log(gh / a[:, 2]) * 5, np.log(gw / a[:, 3]) * 5], 1)
        cls[pos] = 1
        return cls, enc

    all_targets = [targets(b) for b in boxes]
    optimizer = torch.optim.Adam(list(graph.params.values()), lr=1e-4)
    person_columns = torch.tensor([1])
    steps = 0
    train_started = time.perf_counter()
    n_images = len(coco["images"])
    for epoch in range(epochs):
        order = rng.permutation(n_images)
        for start in range(0, n_images, batch):
            items = [i * views + rng.integers(views) for i in order[start:start + batch]]
            x = inputs[items]
            box_pred, logits = graph.run(x, head_out)
            logits = logits[:, :, person_columns]
            box_pred = box_pred.reshape(len(items), -1, 4)
            cls = torch.tensor(np.stack([all_targets[i][0] for i in items]))[:, :, None]
            enc = torch.tensor(np.stack([all_targets[i][1] for i in items]))
            per_anchor = F.binary_cross_entropy_with_logits(logits, cls, reduction="none").sum(2)
            pos = cls[:, :, 0]
            with torch.no_grad():
                neg_loss = per_anchor.detach().clone()
                neg_loss[pos > 0] = -1
                k = torch.clamp(pos.sum(1) * 3, min=3).long()
                ranked = neg_loss.argsort(1, descending=True)
                rank = ranked.argsort(1)
                weight = ((rank < k[:, None]) | (pos > 0)).float()
            matched = pos.sum().clamp(min=1)
            loss = (per_anchor * weight).sum() / matched
            loss = loss + (F.smooth_l1_loss(box_pred, enc, reduction="none").sum(2) * pos).sum() / matched
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            steps += 1
            if max_steps and steps >= max_steps:
                break
        if max_steps and steps >= max_steps:
            break
    train_seconds = time.perf_counter() - train_started
    eval_started = time.perf_counter()
    with torch.no_grad():
        for start in range(0, min(395, len(inputs)), 16):
            graph.run(inputs[start:start + 16], head_out)
    eval_seconds = time.perf_counter() - eval_started
    print(json.dumps({
        "mode": mode, "jobSeconds": time.perf_counter() - started, "loadSeconds": load_seconds,
        "trainSeconds": train_seconds, "evalSeconds": eval_seconds, "steps": steps,
        "secondsPerStep": train_seconds / max(steps, 1), "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }))


if __name__ == "__main__":
    main()
