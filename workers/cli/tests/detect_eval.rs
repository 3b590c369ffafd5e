//! `autotuner detect` and `autotuner eval` on real footage (vtest.avi, PETS09-S2L1) with its real
//! ground truth, written out again as COCO JSON and YOLO text: what `detect` writes is what
//! `eval` scores, the three formats of one ground truth score alike, and bad input fails fast
//! with a message that says what to fix.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{Value, json};

const FRAMES: u64 = 30;

fn assets() -> PathBuf {
    autotuner_detect::assets::dir()
}

fn video() -> String {
    assets().join("vtest.avi").display().to_string()
}

fn autotuner(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_autotuner"))
        .args(args)
        .output()
        .unwrap()
}

fn ok(out: Output) -> String {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn failure(out: Output) -> String {
    assert!(
        !out.status.success(),
        "should fail: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).to_string()
}

fn eval_json(args: &[&str], dir: &Path, name: &str) -> Value {
    let path = dir.join(name);
    let mut all = vec!["eval", "--max-frames", "30", "--json", path.to_str().unwrap()];
    all.extend_from_slice(args);
    let table = ok(autotuner(&all));
    assert!(
        table.contains("person") && table.contains("AP50"),
        "a table on stdout: {table}"
    );
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn ap(report: &Value) -> (f64, f64) {
    let s = &report["scores"];
    (s["ap"].as_f64().unwrap(), s["ap50"].as_f64().unwrap())
}

/// PETS09's ground truth of the first `FRAMES` frames, boxes to be scored only (flag 1), clipped
/// to the frame as a YOLO exporter must: (frame, x, y, w, h).
fn pets09_boxes() -> Vec<(u64, [f64; 4])> {
    let text = std::fs::read_to_string(assets().join("data/PETS09-S2L1/gt/gt.txt")).unwrap();
    text.lines()
        .filter_map(|l| {
            let f: Vec<f64> = l.split(',').map(|v| v.parse().unwrap()).collect();
            let frame = f[0] as u64;
            if frame > FRAMES || f[6] == 0.0 {
                return None;
            }
            let (x0, y0) = (f[2].max(0.0), f[3].max(0.0));
            let (x1, y1) = ((f[2] + f[4]).min(768.0), (f[3] + f[5]).min(576.0));
            Some((frame, [x0, y0, x1 - x0, y1 - y0]))
        })
        .collect()
}

#[test]
fn what_detect_writes_eval_scores_and_three_formats_of_one_ground_truth_agree() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (json_path, csv_path, mp4) = (d.join("found.json"), d.join("found.csv"), d.join("found.mp4"));
    let video = video();
    // Detections down to 0.05, as COCO AP integrates over, as a COCO file with an annotated MP4,
    // and as CSV.
    let printed = ok(autotuner(&[
        "detect",
        "--input",
        &video,
        "--max-frames",
        "30",
        "--classes",
        "person",
        "--min-score",
        "0.05",
        "--output",
        json_path.to_str().unwrap(),
        "--annotated",
        mp4.to_str().unwrap(),
    ]));
    assert_eq!(printed.trim(), json_path.to_str().unwrap());
    ok(autotuner(&[
        "detect",
        "--input",
        &video,
        "--max-frames",
        "30",
        "--classes",
        "person",
        "--min-score",
        "0.05",
        "--output",
        csv_path.to_str().unwrap(),
    ]));
    let coco: Value = serde_json::from_slice(&std::fs::read(&json_path).unwrap()).unwrap();
    assert_eq!(coco["images"].as_array().unwrap().len(), 30);
    assert_eq!(coco["images"][0]["frame"], 1);
    assert_eq!(coco["categories"], json!([{"id": 1, "name": "person"}]));
    let found = coco["annotations"].as_array().unwrap();
    assert!(found.len() > 60, "people in every frame: {}", found.len());
    assert!(found.iter().all(|a| a["score"].as_f64().unwrap() >= 0.05));
    let csv = std::fs::read_to_string(&csv_path).unwrap();
    assert_eq!(
        csv.lines().count(),
        found.len() + 1,
        "the same detections, a row each"
    );

    // The annotated MP4: every frame, the video's size, in a codec players read.
    let probe = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-count_frames",
            "-show_entries",
            "stream=codec_name,width,height,nb_read_frames",
            "-of",
            "json",
        ])
        .arg(&mp4)
        .output()
        .unwrap();
    let stream = &serde_json::from_slice::<Value>(&probe.stdout).unwrap()["streams"][0];
    assert_eq!(stream["nb_read_frames"], "30", "{stream}");
    assert_eq!(
        (stream["width"].as_u64(), stream["height"].as_u64()),
        (Some(768), Some(576))
    );
    assert!(["h264", "mpeg4"].contains(&stream["codec_name"].as_str().unwrap()));

    // The same detections score the same from either file and from the model run by eval.
    let gt_path = assets().join("data/PETS09-S2L1/gt/gt.txt");
    let gt = gt_path.to_str().unwrap();
    let from_json = ap(&eval_json(
        &[
            "--input",
            &video,
            "--ground-truth",
            gt,
            "--detections",
            json_path.to_str().unwrap(),
        ],
        d,
        "a.json",
    ));
    let from_csv = ap(&eval_json(
        &[
            "--input",
            &video,
            "--ground-truth",
            gt,
            "--detections",
            csv_path.to_str().unwrap(),
        ],
        d,
        "b.json",
    ));
    let from_model = eval_json(&["--input", &video, "--ground-truth", gt], d, "c.json");
    assert_eq!(from_model["frames"], 30);
    assert_eq!(from_model["scores"]["perClass"][0]["class"], "person");
    let from_model = ap(&from_model);
    assert!(
        from_model.0 > 0.1 && from_model.1 > 0.3,
        "the student finds PETS09's people: {from_model:?}"
    );
    for other in [from_json, from_csv] {
        // The CSV rounds scores to 4 and boxes to 2 decimals.
        assert!(
            (other.0 - from_model.0).abs() < 2e-3 && (other.1 - from_model.1).abs() < 2e-3,
            "{other:?} {from_model:?}"
        );
    }

    // One ground truth in three formats: MOTChallenge, COCO (a category named as the data set
    // names it, mapped), and YOLO files named by frame, with their classes.txt.
    let boxes = pets09_boxes();
    let mot: String = boxes
        .iter()
        .enumerate()
        .map(|(i, (f, [x, y, w, h]))| format!("{f},{i},{x},{y},{w},{h},1,-1,-1,-1\n"))
        .collect();
    std::fs::write(d.join("gt.txt"), mot).unwrap();
    let coco_gt = json!({
        "images": (1..=FRAMES).map(|f| json!({"id": f * 10, "file_name": format!("img/{f:06}.jpg"), "width": 768, "height": 576})).collect::<Vec<_>>(),
        "annotations": boxes.iter().enumerate().map(|(i, (f, b))| json!({"id": i, "image_id": f * 10, "category_id": 7, "bbox": b, "iscrowd": 0})).collect::<Vec<_>>(),
        "categories": [{"id": 7, "name": "pedestrian"}],
    });
    std::fs::write(d.join("gt.json"), serde_json::to_vec(&coco_gt).unwrap()).unwrap();
    let yolo = d.join("labels");
    std::fs::create_dir_all(&yolo).unwrap();
    std::fs::write(yolo.join("classes.txt"), "person\n").unwrap();
    for f in 1..=FRAMES {
        let lines: String = boxes
            .iter()
            .filter(|(g, _)| *g == f)
            .map(|(_, [x, y, w, h])| {
                format!(
                    "0 {:.7} {:.7} {:.7} {:.7}\n",
                    (x + w / 2.0) / 768.0,
                    (y + h / 2.0) / 576.0,
                    w / 768.0,
                    h / 576.0
                )
            })
            .collect();
        std::fs::write(yolo.join(format!("frame_{f:06}.txt")), lines).unwrap();
    }
    let detections = json_path.to_str().unwrap();
    let score = |gt: &Path, extra: &[&str], name: &str| {
        let mut args = vec![
            "--input",
            &video,
            "--ground-truth",
            gt.to_str().unwrap(),
            "--detections",
            detections,
        ];
        args.extend_from_slice(extra);
        ap(&eval_json(&args, d, name))
    };
    let by_mot = score(&d.join("gt.txt"), &[], "m.json");
    let by_coco = score(
        &d.join("gt.json"),
        &["--class-map", "pedestrian=person"],
        "k.json",
    );
    let by_yolo = score(&yolo, &[], "y.json");
    assert_eq!(by_mot, by_coco, "COCO and MOT hold the same boxes");
    assert!(
        (by_yolo.0 - by_mot.0).abs() < 1e-3 && (by_yolo.1 - by_mot.1).abs() < 1e-3,
        "{by_yolo:?} {by_mot:?}"
    );
    // PETS09's own file (boxes past the frame's edge, clipped when read) scores as the clipped copy.
    assert!(
        (by_mot.0 - from_json.0).abs() < 1e-6 && (by_mot.1 - from_json.1).abs() < 1e-6,
        "{by_mot:?} {from_json:?}"
    );
}

#[test]
fn a_folder_of_images_is_footage_too() {
    let dir = tempfile::tempdir().unwrap();
    let frames = dir.path().join("frames");
    std::fs::create_dir_all(&frames).unwrap();
    for n in 1..=4 {
        let name = format!("{n:06}.png");
        std::fs::copy(assets().join("vtest-frames").join(&name), frames.join(&name)).unwrap();
    }
    let out = dir.path().join("found.json");
    ok(autotuner(&[
        "detect",
        "--input",
        frames.to_str().unwrap(),
        "--classes",
        "person",
        "--output",
        out.to_str().unwrap(),
    ]));
    let coco: Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    let names: Vec<&str> = coco["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["file_name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["000001.png", "000002.png", "000003.png", "000004.png"]);
    assert!(!coco["annotations"].as_array().unwrap().is_empty());
}

#[test]
fn bad_footage_or_ground_truth_fails_fast_and_says_what_to_fix() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let video = video();
    let gt = assets().join("data/PETS09-S2L1/gt/gt.txt");
    let gt = gt.to_str().unwrap();

    // A file that is not a video.
    let text = d.join("notes.mp4");
    std::fs::write(&text, "not a video").unwrap();
    let e = failure(autotuner(&[
        "detect",
        "--input",
        text.to_str().unwrap(),
        "--output",
        d.join("x.json").to_str().unwrap(),
    ]));
    assert!(e.contains("notes.mp4"), "{e}");
    assert!(!d.join("x.json").exists(), "nothing written");

    // PETS09's ground truth against another video (TUD-Campus: 640x480, 71 frames).
    let tud = assets().join("data/TUD-Campus/TUD-Campus.mp4");
    let e = failure(autotuner(&[
        "eval",
        "--input",
        tud.to_str().unwrap(),
        "--ground-truth",
        gt,
    ]));
    assert!(
        e.contains("the video has 71 frames") && e.contains("another video"),
        "{e}"
    );

    // A class the student does not know, and the way out.
    let yolo = d.join("labels");
    std::fs::create_dir_all(&yolo).unwrap();
    std::fs::write(yolo.join("classes.txt"), "person\nforklift\n").unwrap();
    std::fs::write(yolo.join("000001.txt"), "0 0.5 0.5 0.1 0.2\n1 0.2 0.2 0.1 0.1\n").unwrap();
    let e = failure(autotuner(&[
        "eval",
        "--input",
        &video,
        "--max-frames",
        "2",
        "--ground-truth",
        yolo.to_str().unwrap(),
    ]));
    assert!(e.contains("\"forklift\"") && e.contains("--class-map"), "{e}");
    ok(autotuner(&[
        "eval",
        "--input",
        &video,
        "--max-frames",
        "2",
        "--ground-truth",
        yolo.to_str().unwrap(),
        "--class-map",
        "forklift=-",
    ]));

    // Output names and settings are checked before any work.
    let e = failure(autotuner(&[
        "detect",
        "--input",
        &video,
        "--output",
        d.join("x.txt").to_str().unwrap(),
    ]));
    assert!(e.contains(".json (COCO) or .csv"), "{e}");
    let e = failure(autotuner(&["eval", "--input", &video]));
    assert!(e.contains("--ground-truth is required"), "{e}");
    let e = failure(autotuner(&["detect", "--input", &video, "--classes", "persn"]));
    assert!(e.contains("\"persn\" is not a COCO class"), "{e}");
}
