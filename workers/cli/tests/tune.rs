//! The standalone run on a short slice of vtest.avi (PETS09-S2L1) with its ground truth: the
//! whole loop runs, and the report's figures are checked for sanity, not for values.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

fn assets() -> PathBuf {
    autotuner_detect::assets::dir()
}

fn unit(v: &Value) -> f64 {
    let x = v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"));
    assert!((0.0..=1.0).contains(&x), "{x} outside [0, 1]");
    x
}

/// `autotuner tune` on PETS09's first 120 frames into `output`, one epoch of the heads alone
/// (this test is of the report; every layer, the default, takes minutes in a test build).
fn tune_slice(output: &std::path::Path, extra: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_autotuner"))
        .args([
            "tune",
            "--max-frames",
            "120",
            "--epochs",
            "1",
            "--trainable-layers",
            "boxRegression",
        ])
        .args(extra)
        .arg("--output")
        .arg(output)
        .arg("--ground-truth")
        .arg(assets().join("data/PETS09-S2L1/gt/gt.txt"))
        .output()
        .unwrap()
}

#[test]
fn tune_on_a_short_slice_writes_a_sane_report() {
    let dir = tempfile::tempdir().unwrap();
    let out = tune_slice(dir.path(), &["--eval-step", "2"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let html = String::from_utf8(out.stdout).unwrap();
    assert!(
        html.trim_end().ends_with("report.html"),
        "prints where the report is: {html}"
    );
    let r: Value = serde_json::from_slice(&std::fs::read(dir.path().join("report.json")).unwrap()).unwrap();

    assert_eq!(r["frames"]["total"], 120);
    assert_eq!(r["frames"]["tuning"], serde_json::json!([1, 60]));
    assert_eq!(r["frames"]["heldOut"], serde_json::json!([61, 120]));

    let m = &r["motion"];
    let selected = m["framesSelected"].as_u64().unwrap();
    assert!(
        selected > 30 && selected <= 60,
        "people walk through every frame of PETS09: {m}"
    );
    assert_eq!(m["annotated"], selected);
    assert_eq!(
        m["trainImages"].as_u64().unwrap() + m["evalImages"].as_u64().unwrap(),
        selected,
        "every labelled frame is in one split"
    );
    assert!(m["evalImages"].as_u64().unwrap() > 0);
    let area = unit(&m["meanCropAreaFraction"]);
    assert!(area > 0.05 && area < 1.0);
    assert!(m["cropBytes"].as_u64().unwrap() < m["fullFrameBytes"].as_u64().unwrap());
    assert!(unit(&m["groundTruthCoverage"]) > 0.9, "the crops hold the people");

    let t = &r["training"];
    assert_eq!(t["epochs"].as_array().unwrap().len(), 1);
    let model = PathBuf::from(t["export"]["path"].as_str().unwrap());
    assert!(model.exists(), "the tuned student is exported");

    let gt = &r["heldOut"]["againstGroundTruth"];
    for who in ["offTheShelf", "tuned", "teacher"] {
        unit(&gt[who]["ap"]);
        unit(&gt[who]["ap50"]);
        assert_eq!(gt[who]["perClass"][0]["class"], "person");
    }
    assert!(
        unit(&gt["teacher"]["ap50"]) > unit(&gt["offTheShelf"]["ap50"]),
        "the teacher is the better detector: {gt}"
    );
    let gain = gt["apRelativeGain"].as_f64().unwrap();
    let expected = gt["tuned"]["ap"].as_f64().unwrap() / gt["offTheShelf"]["ap"].as_f64().unwrap() - 1.0;
    assert!((gain - expected).abs() < 1e-9);
    // The gate's verdict is the operator's rule applied to the trainer's figures.
    let g = &r["gate"];
    let (gain, bound) = (g["gain"].as_f64().unwrap(), g["gainLowerBound"].as_f64().unwrap());
    let trained = &r["training"];
    let expected_gain = trained["after"]["ap"].as_f64().unwrap() - trained["before"]["ap"].as_f64().unwrap();
    assert!((gain - expected_gain).abs() < 1e-12, "{g}");
    assert_eq!(bound, trained["gain"]["apLowerBound"].as_f64().unwrap());
    let judged = g["evalImages"].as_u64().unwrap() >= g["minEvalSize"].as_u64().unwrap();
    assert_eq!(g["evalImages"], trained["eval"]["images"]);
    assert_eq!(
        g["promotes"].as_bool().unwrap(),
        judged && autotuner_api::promotion::clears(gain, Some(bound), g["minImprovement"].as_f64().unwrap()),
        "{g}"
    );
    if !judged {
        assert!(
            g["reason"].as_str().unwrap().contains("training.minEvalSize"),
            "{g}"
        );
    }
    let better = unit(&gt["tuned"]["ap"]) >= unit(&gt["offTheShelf"]["ap"])
        && unit(&gt["tuned"]["ap50"]) >= unit(&gt["offTheShelf"]["ap50"]);
    assert_eq!(g["groundTruthSaysBetter"], better, "{g}");
    let teacher_view = &r["heldOut"]["againstTeacher"];
    unit(&teacher_view["tuned"]["ap"]);
    // The same judge on the held-out frames: their paired gain against the teacher, and the
    // operator's rule applied to it.
    let held_out_gain = &teacher_view["gain"];
    assert_eq!(held_out_gain["draws"], 1000, "{held_out_gain}");
    let expected =
        teacher_view["tuned"]["ap"].as_f64().unwrap() - teacher_view["offTheShelf"]["ap"].as_f64().unwrap();
    assert!(
        (held_out_gain["ap"].as_f64().unwrap() - expected).abs() < 1e-12,
        "{held_out_gain}"
    );
    let on_held_out = &g["onHeldOutFrames"];
    assert_eq!(on_held_out["images"], r["heldOut"]["frames"]);
    let (gain, bound) = (
        held_out_gain["ap"].as_f64().unwrap(),
        held_out_gain["apLowerBound"].as_f64().unwrap(),
    );
    assert_eq!(
        on_held_out["promotes"].as_bool().unwrap(),
        autotuner_api::promotion::clears(gain, Some(bound), g["minImprovement"].as_f64().unwrap()),
        "{on_held_out}"
    );

    // Precision-recall curves at IoU 0.5: 101 recall points, precision non-increasing.
    for who in ["offTheShelf", "tuned", "teacher"] {
        let curve = gt[who]["pr50"][0]["precision"].as_array().unwrap();
        assert_eq!(curve.len(), 101);
        let p: Vec<f64> = curve.iter().map(|v| v.as_f64().unwrap()).collect();
        assert!(
            p.windows(2).all(|w| w[0] >= w[1]),
            "interpolated precision: {p:?}"
        );
        // The off-the-shelf student and the teacher are fixed models on fixed frames; what the
        // tuned one scores depends on training, which is the benchmarks' subject.
        if who != "tuned" {
            assert!(p[0] > 0.5, "{who} starts precise: {}", p[0]);
        }
    }

    // Example frames: what tuning fixed most and broke most (when it did), and one from the
    // middle, drawn before and after with hits, false boxes and misses marked.
    let pictures = r["heldOut"]["pictures"].as_array().unwrap();
    assert!(pictures.iter().any(|p| p["kind"] == "typical"), "{pictures:?}");
    for p in pictures {
        for side in ["before", "after"] {
            let path = dir.path().join(p[side].as_str().unwrap());
            let (w, h) = image::image_dimensions(&path).unwrap();
            assert_eq!((w, h), (768, 576));
        }
        // The same objects are judged before and after: found + missed is the frame's count.
        let objects = |e: &Value| e["hits"].as_u64().unwrap() + e["missed"].as_u64().unwrap();
        assert_eq!(objects(&p["errorsBefore"]), objects(&p["errorsAfter"]), "{p}");
        let errors = |e: &Value| e["falseBoxes"].as_u64().unwrap() + e["missed"].as_u64().unwrap();
        match p["kind"].as_str().unwrap() {
            "fixed" => assert!(errors(&p["errorsAfter"]) < errors(&p["errorsBefore"]), "{p}"),
            "broke" => assert!(errors(&p["errorsAfter"]) > errors(&p["errorsBefore"]), "{p}"),
            _ => {}
        }
    }
    let stages = &r["stages"];
    eprintln!("seconds per stage: {stages}");
    for stage in ["capture", "training", "heldOut"] {
        assert!(stages[stage].as_f64().unwrap() > 0.0, "{stages}");
    }
    let page = std::fs::read_to_string(dir.path().join("report.html")).unwrap();
    assert!(page.contains("Tuning report") && page.contains("<svg") && page.contains("pictures/frame-"));
    assert!(
        page.contains("precision vs recall") && page.contains("Time per stage"),
        "{page}"
    );

    // Again with --reuse-capture and the same capture settings: the dataset is taken as it is
    // (not one file of it rewritten) and the report carries the first capture's statistics.
    let annotations = dir.path().join("dataset/train/annotations.json");
    let written = std::fs::metadata(&annotations).unwrap().modified().unwrap();
    let again = tune_slice(dir.path(), &["--reuse-capture", "--eval-step", "20"]);
    let log = String::from_utf8_lossy(&again.stderr);
    assert!(again.status.success(), "{log}");
    assert!(
        log.contains("(--reuse-capture)") && !log.contains("capture: frames 1-60"),
        "{log}"
    );
    assert_eq!(
        std::fs::metadata(&annotations).unwrap().modified().unwrap(),
        written
    );
    let second: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("report.json")).unwrap()).unwrap();
    assert_eq!(second["motion"], r["motion"]);

    // As a person sees it: rendered by a real browser, the curves and the example frames show.
    let shot = screenshot(&dir.path().join("report.html"), &dir.path().join("report.png"));
    let near = |want: [u8; 3]| {
        shot.pixels()
            .filter(|p| p.0.iter().zip(want).all(|(&c, w)| c.abs_diff(w) < 40))
            .count()
    };
    assert!(
        near([204, 51, 51]) > 200 && near([51, 153, 51]) > 200,
        "the red and green curves are drawn"
    );
    let pictured = shot.pixels().filter(|p| p.0.iter().all(|&c| c < 200)).count();
    assert!(
        pictured > (shot.width() * shot.height()) as usize / 20,
        "the example frames load: {pictured} dark pixels"
    );
}

/// Renders `page` with headless Chromium (Debian's `chromium-headless-shell`, installed by
/// `scripts/setup --tests`) in a network namespace of its own, so it reaches nothing, not even a
/// resolver; returns the screenshot.
fn screenshot(page: &std::path::Path, png: &std::path::Path) -> image::RgbImage {
    let out = Command::new("timeout")
        .args([
            "120",
            "unshare",
            "--net",
            "chromium-headless-shell",
            "--no-sandbox",
            "--headless",
            "--disable-gpu",
        ])
        .args([
            "--hide-scrollbars",
            "--window-size=1000,3200",
            "--allow-file-access-from-files",
        ])
        .arg(format!("--screenshot={}", png.display()))
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("chromium-headless-shell (scripts/setup --tests installs it)");
    assert!(
        png.exists(),
        "no screenshot: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    image::open(png).unwrap().into_rgb8()
}

#[test]
fn a_video_that_does_not_exist_fails_with_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_autotuner"))
        .args(["tune", "--video", "/no/such/video.mp4", "--output"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/no/such/video.mp4"));
}

#[test]
fn settings_out_of_range_are_refused_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        ["--min-score", "1.5"],
        ["--tune-fraction", "1"],
        ["--eval-share", "0.9"],
        // Above the default --min-score (0.5): a band must lie under the label threshold.
        ["--uncertain-min-score", "0.6"],
        ["--teacher-crop-scale", "0"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_autotuner"))
            .arg("tune")
            .args(args)
            .arg("--output")
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(args[0]), "{args:?}: {err}");
    }
    assert!(!dir.path().join("dataset").exists(), "nothing written");
}
