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
    format!(
        "<h2>{}</h2><table><tr><th>class</th><th>objects</th><th>AP before</th><th>AP after</th><th>AP@0.5 before</th><th>AP@0.5 after</th></tr>{rows}\
         <tr><th>mean</th><td></td><th>{}</th><th>{}</th><th>{}</th><th>{}</th></tr></table><p>AP change: <b>{}</b>.</p>{teacher}",
        esc(title),
        num(&r["offTheShelf"]["ap"], 3),
        num(&r["tuned"]["ap"], 3),
        num(&r["offTheShelf"]["ap50"], 3),
        num(&r["tuned"]["ap50"], 3),
        pct(&r["apRelativeGain"])
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
        pictures += &format!(
            "<figure><img src=\"{}\" width=\"384\"><img src=\"{}\" width=\"384\"><figcaption>frame {}: off-the-shelf ({} detections, red) and tuned ({} detections, green), score &ge; 0.5</figcaption></figure>",
            esc(p["before"].as_str().unwrap_or("")),
            esc(p["after"].as_str().unwrap_or("")),
            p["frame"],
            p["detectionsBefore"],
            p["detectionsAfter"]
        );
    }
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
         <h2>Before and after</h2>{}<p>Run time: {:.0} s. Figures: <code>report.json</code>; the trainer's report: <code>training/report.json</code>.</p></body></html>",
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
