//! The student's ONNX graph run in burn (CPU backend) against ONNX Runtime on the same input:
//! box encodings and class logits within 1e-3 on real frames of vtest.avi.

use std::path::PathBuf;

use autotuner_detect::{Detector, DevicePreference, Family, RgbImage, Runtime};
use autotuner_trainer::OnnxGraph;
use burn::prelude::*;

fn assets() -> PathBuf {
    let dir = autotuner_detect::assets::dir();
    assert!(
        dir.join("models/ssd_mobilenet_v2_coco_raw.onnx").is_file(),
        "run scripts/fetch-assets (scripts/test does)"
    );
    dir
}

#[test]
fn burn_runs_the_student_like_onnx_runtime() {
    let model = assets().join("models/ssd_mobilenet_v2_coco_raw.onnx");
    let (w, h) = (768usize, 576usize);
    let frames = std::fs::read(assets().join("vtest-768x576-401-795.rgb")).unwrap();
    // Frames 401 and 601: the input the student sees, prepared as the detector prepares it.
    let pre = autotuner_trainer::augment::student_preprocess();
    let mut input = vec![0.0f32; 2 * pre.len()];
    for (k, index) in [0usize, 200].into_iter().enumerate() {
        let frame = RgbImage::new(&frames[index * w * h * 3..(index + 1) * w * h * 3], w, h).unwrap();
        pre.apply(frame, &mut input[k * pre.len()..(k + 1) * pre.len()]);
    }
    let shape = [2, 300, 300, 3];

    let runtime = Runtime::load(&assets().join("libonnxruntime.so")).unwrap();
    let mut ort = Detector::load(&runtime, &model, Family::SsdRaw, DevicePreference::Cpu).unwrap();
    let expected = ort.raw_outputs(&input, shape).unwrap();

    // Without autodiff burn's convolutions run; with it the trainer's own kernels, each
    // convolution followed by ReLU6 clamping its output itself.
    for device in [Device::flex(), Device::flex().autodiff()] {
        let graph = OnnxGraph::load(&model, &device).unwrap();
        let x = Tensor::<4>::from_data(TensorData::new(input.clone(), shape), &device);
        assert_like(graph.forward(x).unwrap(), &expected);
    }
}

fn assert_like(got: Vec<(Tensor<4>, Vec<usize>)>, expected: &[autotuner_detect::RawOutput]) {
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].1, [2, 1917, 1, 4], "box encodings");
    assert_eq!(got[1].1, [2, 1917, 91], "class logits");
    for ((tensor, shape), (want_shape, want)) in got.into_iter().zip(expected) {
        assert_eq!(&shape, want_shape);
        let values: Vec<f32> = tensor.into_data().try_to_vec::<f32>().unwrap();
        let worst = values
            .iter()
            .zip(want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        eprintln!("{shape:?}: largest difference {worst:e} (values up to {scale})");
        assert!(worst <= 1e-3, "burn and ONNX Runtime differ by {worst}");
        assert!(scale > 1.0, "real activations, not zeros");
    }
}
