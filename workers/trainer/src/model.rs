//! The student as the trainer sees it: the frozen part of the graph (computed once per image and
//! cached), the trainable body (graph nodes with trainable weights, run in burn with autodiff),
//! and the box-predictor head, run in burn with only the rows that matter trainable: all box
//! rows, and the class rows of the dataset's classes. The other 90 class outputs keep their
//! pretrained weights.

use std::collections::HashMap;

use autotuner_detect::anchors::{Anchor, SsdAnchorConfig};
use burn::prelude::*;
use burn::tensor::ops::ConvOptions;

use crate::graph::{ConvNode, GraphError, OnnxGraph};

/// Which layers a fine-tune changes: the CameraTuning's `training.trainableLayers` itself, so the
/// Job, `autotuner tune` and the library share one type and one default.
pub use autotuner_api::TrainableLayers as Trainable;

/// One trainable tensor: an initializer of the graph, whole or some rows of its first axis.
#[derive(Debug, Clone)]
pub struct Param {
    pub initializer: String,
    pub rows: Option<Vec<usize>>,
    pub value: Tensor<4>,
}

#[derive(Debug, Clone)]
struct HeadLayer {
    input: String,
    anchors: usize,
    boxes: ConvNode,
    classes: ConvNode,
}

/// The student, split for training.
#[derive(Debug)]
pub struct Student {
    pub graph: OnnxGraph,
    head: Vec<HeadLayer>,
    /// The values the trainable part starts from: cached per image.
    pub cut: Vec<String>,
    body: Vec<ConvNode>,
    /// The dataset's classes (COCO ids), the columns of the logits the trainer scores.
    pub classes: Vec<u32>,
    /// Classes of the pretrained head, background included.
    head_classes: usize,
    pub anchors: Vec<Anchor>,
}

/// The value `upper` trains from: the output of MobileNetV2's last block at 1/8 resolution
/// (`expanded_conv_5`), the input of its first block at 1/16.
pub const UPPER_CUT: &str = "FeatureExtractor/MobilenetV2/expanded_conv_5/add:0";

/// The value `most` trains from: the output of MobileNetV2's last block at 1/4 resolution
/// (`expanded_conv_2`), the input of its first block at 1/8.
pub const MOST_CUT: &str = "FeatureExtractor/MobilenetV2/expanded_conv_2/add:0";

/// `cut` when the graph has it (the SSD-MobileNetV2 feature extractor's block names).
fn named_cut(graph: &OnnxGraph, cut: &str, trainable: Trainable) -> Result<String, GraphError> {
    graph
        .convs()
        .iter()
        .any(|c| c.input == cut)
        .then(|| cut.to_string())
        .ok_or_else(|| {
            GraphError::Output(format!(
                "{cut} (trainable layers `{}` needs the SSD-MobileNetV2 feature extractor's block names)",
                trainable.as_str()
            ))
        })
}

impl Student {
    /// Splits `graph` (the raw-head SSD-MobileNetV2) for `trainable` layers and `classes`.
    pub fn new(graph: OnnxGraph, trainable: Trainable, classes: Vec<u32>) -> Result<Self, GraphError> {
        let convs = graph.convs();
        let find = |layer: usize, kind: &str| {
            convs
                .iter()
                .find(|c| c.name.starts_with(&format!("BoxPredictor_{layer}/{kind}/")))
                .cloned()
                .ok_or_else(|| GraphError::Output(format!("BoxPredictor_{layer}/{kind}")))
        };
        let mut head = Vec::new();
        let mut head_classes = 0;
        for layer in 0..6 {
            let boxes = find(layer, "BoxEncodingPredictor")?;
            let classes = find(layer, "ClassPredictor")?;
            let box_rows = graph
                .initializer_tensor(&boxes.weight)
                .map(|t| t.dims()[0])
                .unwrap_or(0);
            let class_rows = graph
                .initializer_tensor(&classes.weight)
                .map(|t| t.dims()[0])
                .unwrap_or(0);
            let anchors = box_rows / 4;
            if anchors == 0 || !class_rows.is_multiple_of(anchors) {
                return Err(GraphError::Output(format!(
                    "BoxPredictor_{layer} has {box_rows} box rows"
                )));
            }
            head_classes = class_rows / anchors;
            head.push(HeadLayer {
                input: boxes.input.clone(),
                anchors,
                boxes,
                classes,
            });
        }
        if let Some(c) = classes.iter().find(|&&c| c as usize >= head_classes) {
            return Err(GraphError::Output(format!(
                "class {c} is beyond the head's {head_classes} classes"
            )));
        }
        let head_inputs: Vec<&str> = head.iter().map(|l| l.input.as_str()).collect();
        let cut: Vec<String> = match trainable {
            Trainable::BoxRegression => {
                let mut unique: Vec<String> = Vec::new();
                for l in &head {
                    if !unique.contains(&l.input) {
                        unique.push(l.input.clone());
                    }
                }
                unique
            }
            Trainable::Top => vec![head[0].input.clone()],
            Trainable::Upper => vec![named_cut(&graph, UPPER_CUT, trainable)?],
            Trainable::Most => vec![named_cut(&graph, MOST_CUT, trainable)?],
            Trainable::Unfrozen => vec![graph.input_name().to_string()],
        };
        let cut_refs: Vec<&str> = cut.iter().map(String::as_str).collect();
        let body = graph.convs_between(&cut_refs, &head_inputs)?;
        Ok(Self {
            graph,
            head,
            cut,
            body,
            classes,
            head_classes,
            anchors: SsdAnchorConfig::mobilenet_v2_300().anchors(),
        })
    }

    /// The number of trainable convolutions outside the head.
    pub fn body_convs(&self) -> usize {
        self.body.len()
    }

    fn class_rows(&self, layer: &HeadLayer) -> Vec<usize> {
        (0..layer.anchors)
            .flat_map(|a| {
                self.classes
                    .iter()
                    .map(move |&c| a * self.head_classes + c as usize)
            })
            .collect()
    }

    /// The trainable tensors with their pretrained values, on `device`.
    pub fn initial_params(&self, device: &Device) -> Vec<Param> {
        let mut params = Vec::new();
        let mut add = |name: &str, rows: Option<Vec<usize>>| {
            let (values, dims) = self.graph.initializer(name).expect("an initializer of the graph");
            let mut shape = [1usize; 4];
            shape[..dims.len()].copy_from_slice(&dims);
            let row_len: usize = shape[1..].iter().product();
            let (data, first) = match &rows {
                None => (values, shape[0]),
                Some(r) => (
                    r.iter()
                        .flat_map(|&i| values[i * row_len..(i + 1) * row_len].iter().copied())
                        .collect(),
                    r.len(),
                ),
            };
            shape[0] = first;
            params.push(Param {
                initializer: name.to_string(),
                rows,
                value: Tensor::<4>::from_data(TensorData::new(data, shape), device),
            });
        };
        for layer in &self.head {
            let rows = self.class_rows(layer);
            add(&layer.boxes.weight, None);
            add(layer.boxes.bias.as_deref().expect("box predictor bias"), None);
            add(&layer.classes.weight, Some(rows.clone()));
            add(
                layer.classes.bias.as_deref().expect("class predictor bias"),
                Some(rows),
            );
        }
        for conv in &self.body {
            add(&conv.weight, None);
            if let Some(b) = &conv.bias {
                add(b, None);
            }
        }
        params
    }

    /// Box encodings `[B, anchors, 4]` and logits of the dataset's classes `[B, anchors, K]`
    /// from the cut values (in the order of [`cut`](Self::cut)).
    pub fn forward(
        &self,
        cut: Vec<Tensor<4>>,
        params: &[Param],
    ) -> Result<(Tensor<3>, Tensor<3>), GraphError> {
        let head_params = &params[..4 * self.head.len()];
        let mut values: HashMap<&str, Tensor<4>> = HashMap::new();
        let head_inputs: Vec<&str> = self.head.iter().map(|l| l.input.as_str()).collect();
        if self.body.is_empty() && self.cut.iter().all(|c| head_inputs.contains(&c.as_str())) {
            for (name, t) in self.cut.iter().zip(cut) {
                values.insert(name, t);
            }
        } else {
            let overrides: HashMap<String, Tensor<4>> = params[4 * self.head.len()..]
                .iter()
                .map(|p| (p.initializer.clone(), p.value.clone()))
                .collect();
            let inputs = self.cut.iter().map(String::as_str).zip(cut).collect();
            let mut unique = head_inputs.clone();
            unique.dedup();
            let outs = self.graph.forward_to(inputs, &unique, &overrides)?;
            for (name, (t, _)) in unique.into_iter().zip(outs) {
                values.insert(name, t);
            }
        }
        let k = self.classes.len();
        let (mut boxes, mut logits) = (Vec::new(), Vec::new());
        for (layer, p) in self.head.iter().zip(head_params.chunks(4)) {
            let x = values[layer.input.as_str()].clone();
            let conv = |x: Tensor<4>, w: Tensor<4>, bias: Tensor<1>, node: &ConvNode| {
                let pads = node.pads;
                let options = ConvOptions {
                    stride: [1, 1],
                    padding: [(pads[0], pads[2]), (pads[1], pads[3])],
                    dilation: [1, 1],
                    groups: 1,
                };
                crate::layers::conv(x, w, Some(bias), options, None)
            };
            let (b, c) = if layer.boxes.pads == layer.classes.pads {
                // Both predictors read the same input the same way: one convolution with their
                // filters stacked unfolds the input once instead of twice (the bulk of a step).
                let box_channels = p[0].value.dims()[0];
                let class_channels = p[2].value.dims()[0];
                let w = Tensor::cat(vec![p[0].value.clone(), p[2].value.clone()], 0);
                let bias = Tensor::cat(
                    vec![p[1].value.clone().reshape([-1]), p[3].value.clone().reshape([-1])],
                    0,
                );
                let both = conv(x, w, bias, &layer.boxes);
                (
                    both.clone().narrow(1, 0, box_channels),
                    both.narrow(1, box_channels, class_channels),
                )
            } else {
                (
                    conv(
                        x.clone(),
                        p[0].value.clone(),
                        p[1].value.clone().reshape([-1]),
                        &layer.boxes,
                    ),
                    conv(
                        x,
                        p[2].value.clone(),
                        p[3].value.clone().reshape([-1]),
                        &layer.classes,
                    ),
                )
            };
            let [n, _, h, w] = b.dims();
            // NCHW -> NHWC -> (cell, anchor) rows: the order of the graph's Transpose + Reshape.
            boxes.push(b.permute([0, 2, 3, 1]).reshape([n, h * w * layer.anchors, 4]));
            logits.push(c.permute([0, 2, 3, 1]).reshape([n, h * w * layer.anchors, k]));
        }
        Ok((Tensor::cat(boxes, 1), Tensor::cat(logits, 1)))
    }

    /// The trained weights, whole initializers with the trained rows written in, for export.
    pub fn weights(&self, params: &[Param]) -> HashMap<String, Vec<f32>> {
        let mut out: HashMap<String, Vec<f32>> = HashMap::new();
        for p in params {
            let trained: Vec<f32> = p
                .value
                .clone()
                .inner()
                .into_data()
                .try_to_vec::<f32>()
                .expect("f32 weights");
            match &p.rows {
                None => {
                    out.insert(p.initializer.clone(), trained);
                }
                Some(rows) => {
                    let (mut whole, _) = self.graph.initializer(&p.initializer).expect("initializer");
                    let row_len = trained.len() / rows.len().max(1);
                    for (k, &r) in rows.iter().enumerate() {
                        whole[r * row_len..(r + 1) * row_len]
                            .copy_from_slice(&trained[k * row_len..(k + 1) * row_len]);
                    }
                    out.insert(p.initializer.clone(), whole);
                }
            }
        }
        out
    }

    /// The columns of the full logits output that [`forward`](Self::forward) computes.
    pub fn logit_columns(&self) -> Vec<usize> {
        self.classes.iter().map(|&c| c as usize).collect()
    }

    pub fn head_classes(&self) -> usize {
        self.head_classes
    }
}
