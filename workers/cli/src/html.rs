//! The report as one self-contained HTML page (pictures beside it).

use serde_json::Value;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn num(v: &Value, digits: usize) -> String {
    v.as_f64().map_or("n/a".into(), |x| format!("{x:.digits$}"))
}

fn pct(v: &Value) -> String {
    v.as_f64().map_or("n/a".into(), |x| format!("{:+.1}%", x * 100.0))
}

fn comparison(title: &str, r: &Value) -> String {
    if r.is_null() {
        return String::new();
    }
    let mut rows = String::new();
    let before = r["offTheShelf"]["perClass"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let after = r["tuned"]["perClass"].as_array().cloned().unwrap_or_default();
    for (b, a) in before.iter().zip(&after) {
        rows += &format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(b["class"].as_str().unwrap_or("?")),
            b["groundTruth"],
            num(&b["ap"], 3),
            num(&a["ap"], 3),
            num(&b["ap50"], 3),
            num(&a["ap50"], 3)
        );
    }
    let teacher = if r["teacher"].is_null() {
        String::new()
    } else {
        format!(
            "<p>Teacher on the same frames: AP {}, AP@0.5 {}. Share of the AP@0.5 gap to the teacher closed: {}.</p>",
            num(&r["teacher"]["ap"], 3),
            num(&r["teacher"]["ap50"], 3),
            r["ap50GapClosed"]
                .as_f64()
                .map_or("n/a".into(), |x| format!("{:.1}%", x * 100.0))
        )
    };
    let curves = pr_curves(r);
    format!(
        "<h2>{}</h2><table><tr><th>class</th><th>objects</th><th>AP before</th><th>AP after</th><th>AP@0.5 before</th><th>AP@0.5 after</th></tr>{rows}\
         <tr><th>mean</th><td></td><th>{}</th><th>{}</th><th>{}</th><th>{}</th></tr></table><p>AP change: <b>{}</b>.</p>{teacher}{curves}",
        esc(title),
        num(&r["offTheShelf"]["ap"], 3),
        num(&r["tuned"]["ap"], 3),
        num(&r["offTheShelf"]["ap50"], 3),
        num(&r["tuned"]["ap50"], 3),
        pct(&r["apRelativeGain"])
    )
}

/// Precision against recall at IoU 0.5 per class, before (red), after (green) and, against the
/// ground truth, the teacher (grey), as inline SVGs.
fn pr_curves(r: &Value) -> String {
    let (w, h, pad) = (360.0, 220.0, 32.0);
    let mut out = String::new();
    let curves = |who: &str| r[who]["pr50"].as_array().cloned().unwrap_or_default();
    for (k, before) in curves("offTheShelf").iter().enumerate() {
        let class = before["class"].as_str().unwrap_or("?");
        let line = |curve: &Value, colour: &str| {
            let points: Vec<String> = curve["precision"]
                .as_array()
                .into_iter()
                .flatten()
                .enumerate()
                .filter_map(|(i, p)| {
                    let p = p.as_f64()?;
                    // Past the highest recall reached the curve is 0: stop there.
                    (p > 0.0).then(|| {
                        format!(
                            "{:.1},{:.1}",
                            pad + i as f64 / 100.0 * (w - 2.0 * pad),
                            h - pad - p * (h - 2.0 * pad)
                        )
                    })
                })
                .collect();
            format!(
                "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" points=\"{}\"/>",
                points.join(" ")
            )
        };
        let teacher = curves("teacher")
            .get(k)
            .map_or(String::new(), |t| line(t, "#999"));
        let after = curves("tuned").get(k).map_or(String::new(), |a| line(a, "#393"));
        out += &format!(
            "<svg width=\"{w}\" height=\"{h}\" style=\"border:1px solid #ccc;margin-right:8px\"><title>{class}</title>\
             <line x1=\"{pad}\" y1=\"{y0}\" x2=\"{x1}\" y2=\"{y0}\" stroke=\"#000\"/><line x1=\"{pad}\" y1=\"{pad}\" x2=\"{pad}\" y2=\"{y0}\" stroke=\"#000\"/>\
             {teacher}{}{after}<text x=\"{pad}\" y=\"20\">{class}: precision vs recall, IoU 0.5</text>\
             <text x=\"{x1}\" y=\"{yl}\" text-anchor=\"end\">recall 1</text><text x=\"4\" y=\"{pad}\">1</text></svg>",
            line(before, "#c33"),
            class = esc(class),
            y0 = h - pad,
            x1 = w - pad,
            yl = h - 8.0,
        );
    }
    if out.is_empty() {
        return out;
    }
    format!(
        "<p>{out}</p><p>Off-the-shelf <span style=\"color:#c33\">red</span>, tuned <span style=\"color:#393\">green</span>{}.</p>",
        if r["teacher"].is_null() {
            ""
        } else {
            ", teacher <span style=\"color:#999\">grey</span>"
        }
    )
}

/// Loss and eval AP per epoch as an inline SVG.
fn curve(epochs: &[Value]) -> String {
    if epochs.is_empty() {
        return String::new();
    }
    let (w, h, pad) = (520.0, 200.0, 30.0);
    let n = epochs.len().max(2) as f64 - 1.0;
    let series = |key: &str| -> Vec<(f64, f64)> {
        epochs
            .iter()
            .enumerate()
            .filter_map(|(i, e)| e[key].as_f64().map(|v| (i as f64, v)))
            .collect()
    };
    let path = |points: &[(f64, f64)], colour: &str| {
        let max = points.iter().map(|p| p.1).fold(f64::MIN, f64::max).max(1e-9);
        let pts: Vec<String> = points
            .iter()
            .map(|(i, v)| {
                format!(
                    "{:.1},{:.1}",
                    pad + i / n * (w - 2.0 * pad),
                    h - pad - v / max * (h - 2.0 * pad)
                )
            })
            .collect();
        format!(
            "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" points=\"{}\"/>",
            pts.join(" ")
        )
    };
    format!(
        "<svg width=\"{w}\" height=\"{h}\" style=\"border:1px solid #ccc\">{}{}\
         <text x=\"{pad}\" y=\"16\" fill=\"#c33\">training loss</text><text x=\"160\" y=\"16\" fill=\"#393\">eval AP (trainer's split)</text></svg>",
        path(&series("loss"), "#c33"),
        path(&series("ap"), "#393")
    )
}

pub fn render(r: &Value) -> String {
    let m = &r["motion"];
    let t = &r["training"];
    let mut pictures = String::new();
    for p in r["heldOut"]["pictures"].as_array().into_iter().flatten() {
        let what = match p["kind"].as_str() {
            Some("fixed") => "the frame tuning fixed most",
            Some("broke") => "the frame tuning broke most",
            _ => "a frame from the middle",
        };
        let counts = |e: &Value| {
            format!(
                "{} hits, {} false, {} missed",
                e["hits"], e["falseBoxes"], e["missed"]
            )
        };
        pictures += &format!(
            "<figure><img src=\"{}\" width=\"384\"><img src=\"{}\" width=\"384\"><figcaption>Frame {}, {what}: off-the-shelf ({}) and tuned ({})</figcaption></figure>",
            esc(p["before"].as_str().unwrap_or("")),
            esc(p["after"].as_str().unwrap_or("")),
            p["frame"],
            counts(&p["errorsBefore"]),
            counts(&p["errorsAfter"]),
        );
    }
    if !pictures.is_empty() {
        pictures = format!(
            "<p>Detections with score &ge; 0.5 matched at IoU 0.5 to the ground truth (or, where there is none, the teacher's labels): \
             <span style=\"color:#393\">green</span> found, <span style=\"color:#c33\">red</span> false, \
             <span style=\"color:#b90\">yellow</span> missed.</p>{pictures}"
        );
    }
    let stages = &r["stages"];
    let stage_rows: String = ["capture", "training", "heldOut"]
        .iter()
        .zip([
            "capture (motion, crops, teacher labels)",
            "fine-tune",
            "held-out evaluation",
        ])
        .map(|(key, name)| format!("<tr><th>{name}</th><td>{} s</td></tr>", num(&stages[*key], 0)))
        .collect();
    let coverage = m["groundTruthCoverage"]
        .as_f64()
        .map_or("no ground truth".into(), |c| format!("{:.1}%", c * 100.0));
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Edge AutoTuner: tuning report</title>\
         <style>body{{font-family:sans-serif;max-width:900px;margin:2em auto}}td,th{{padding:2px 10px;text-align:right}}figure{{margin:1em 0}}</style></head><body>\
         <h1>Tuning report</h1><p>Video <code>{}</code>: tuned on frames {}-{}, evaluated on the held-out frames {}-{} (every {}). Classes: {}. Teacher labels at confidence &ge; {}.</p>\
         {}{}\
         <h2>Motion and upload</h2><table>\
         <tr><th>frames decoded / examined / selected</th><td>{} / {} / {}</td></tr>\
         <tr><th>mean crop area (share of the frame)</th><td>{}</td></tr><tr><th>crops per selected frame</th><td>{}</td></tr>\
         <tr><th>bytes to the teacher (crops)</th><td>{}</td></tr><tr><th>the same frames whole</th><td>{} ({}x more)</td></tr>\
         <tr><th>every decoded frame whole (estimate)</th><td>{}x more</td></tr><tr><th>ground-truth boxes inside the crops</th><td>{}</td></tr>\
         <tr><th>dataset: train / eval images</th><td>{} / {}</td></tr></table>\
         <h2>Training</h2><p>{} layers, {} epochs requested, exported epoch {}; {:.0} s.</p>{}\
         <h2>Before and after</h2>{}<h2>Time per stage</h2><table>{stage_rows}</table><p>Run time: {:.0} s. Figures: <code>report.json</code>; the trainer's report: <code>training/report.json</code>.</p></body></html>",
        esc(r["video"].as_str().unwrap_or("")),
        r["frames"]["tuning"][0],
        r["frames"]["tuning"][1],
        r["frames"]["heldOut"][0],
        r["frames"]["heldOut"][1],
        r["frames"]["evalStep"],
        esc(&r["classes"].to_string()),
        r["teacherMinScore"],
        comparison(
            "Held-out frames against the ground truth",
            &r["heldOut"]["againstGroundTruth"]
        ),
        comparison(
            "Held-out frames against the teacher's labels",
            &r["heldOut"]["againstTeacher"]
        ),
        m["framesDecoded"],
        m["framesExamined"],
        m["framesSelected"],
        num(&m["meanCropAreaFraction"], 3),
        num(&m["meanCropsPerFrame"], 2),
        m["cropBytes"],
        m["fullFrameBytes"],
        num(&m["uploadReductionSelectedFrames"], 2),
        num(&m["uploadReductionAllFrames"], 2),
        coverage,
        m["trainImages"],
        m["evalImages"],
        esc(t["trainableLayers"].as_str().unwrap_or("")),
        t["epochsRequested"],
        t["selectedEpoch"],
        t["timing"]["totalSeconds"].as_f64().unwrap_or(0.0),
        curve(t["epochs"].as_array().map_or(&[][..], |v| v.as_slice())),
        pictures,
        r["seconds"].as_f64().unwrap_or(0.0),
    )
}
