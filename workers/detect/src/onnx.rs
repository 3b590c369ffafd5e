//! Reading and editing ONNX graphs: initializer values, and the SSD raw head cut down to the
//! classes a camera needs.
//!
//! The student's class predictors are 3x3 convolutions with one output per anchor and COCO
//! column (91): more than half of the model's arithmetic, almost all of it for classes nobody
//! asked for. [`keep_ssd_classes`] keeps the rows of the wanted columns only (and background),
//! so the model computes exactly the same logits for them, about twice as fast on a CPU.

use onnx_ir::{Message, ModelProto, NodeProto, TensorProto};

const INT32: i32 = 6;
const INT64: i32 = 7;

/// The values of a float initializer.
pub fn floats_of(t: &TensorProto) -> Vec<f32> {
    if t.raw_data.is_empty() {
        t.float_data.clone()
    } else {
        t.raw_data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect()
    }
}

/// The values of an integer initializer (INT32 or INT64), `None` for other types.
pub fn ints_of(t: &TensorProto) -> Option<Vec<i64>> {
    Some(match (t.data_type, t.raw_data.is_empty()) {
        (INT64, false) => t
            .raw_data
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect(),
        (INT32, false) => t
            .raw_data
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes(c.try_into().expect("4 bytes")) as i64)
            .collect(),
        (INT64, true) => t.int64_data.clone(),
        (INT32, true) => t.int32_data.iter().map(|&v| v as i64).collect(),
        _ => return None,
    })
}

fn set_floats(t: &mut TensorProto, values: &[f32]) {
    t.float_data.clear();
    t.raw_data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
}

fn set_ints(t: &mut TensorProto, values: &[i64]) {
    t.int64_data.clear();
    t.int32_data.clear();
    t.raw_data = match t.data_type {
        INT32 => values.iter().flat_map(|&v| (v as i32).to_le_bytes()).collect(),
        _ => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
    };
}

/// A raw SSD head (box encodings, class logits) with the logits of `classes` (COCO ids, which
/// are the head's columns) and background only. Returns the model and, per remaining column,
/// its class id (column 0: background). The box encodings and the kept logits are unchanged.
pub fn keep_ssd_classes(model: &[u8], classes: &[u32]) -> Result<(Vec<u8>, Vec<u32>), String> {
    let mut model = ModelProto::parse_from_bytes(model).map_err(|e| format!("not an ONNX model: {e}"))?;
    let graph = model.graph.as_mut().ok_or("the model has no graph")?;
    let logits = graph
        .output
        .get(1)
        .ok_or("the model has no second output (class logits)")?
        .name
        .clone();
    let producer = |graph: &onnx_ir::GraphProto, value: &str| -> Option<usize> {
        graph
            .node
            .iter()
            .position(|n| n.output.iter().any(|o| o == value))
    };
    let node = |graph: &onnx_ir::GraphProto, value: &str, op: &str| -> Result<NodeProto, String> {
        producer(graph, value)
            .map(|i| graph.node[i].clone())
            .filter(|n| n.op_type == op)
            .ok_or_else(|| format!("{value} is not the output of a {op}"))
    };
    let initializer =
        |graph: &onnx_ir::GraphProto, name: &str| graph.initializer.iter().position(|t| t.name == name);
    let concat = node(graph, &logits, "Concat")?;
    let mut columns = None::<usize>;
    let mut kept: Vec<u32> = vec![0];
    let mut wanted: Vec<u32> = classes.to_vec();
    wanted.sort_unstable();
    wanted.dedup();
    kept.extend(wanted.iter().filter(|&&c| c > 0));
    let mut shapes_done: Vec<String> = Vec::new();
    for part in &concat.input {
        let reshape = node(graph, part, "Reshape")?;
        let data = producer(graph, &reshape.input[0]).ok_or("a logits reshape has no producer")?;
        let data = &graph.node[data];
        let conv = if data.op_type == "Transpose" {
            node(graph, &data.input[0], "Conv")?
        } else if data.op_type == "Conv" {
            data.clone()
        } else {
            return Err(format!("{} is not a class predictor's output", reshape.input[0]));
        };
        let (w, b) = match (conv.input.get(1), conv.input.get(2)) {
            (Some(w), Some(b)) => (
                initializer(graph, w).ok_or("a class predictor's weights are not an initializer")?,
                initializer(graph, b).ok_or("a class predictor's biases are not an initializer")?,
            ),
            _ => return Err(format!("class predictor {} has no bias", conv.name)),
        };
        // The shape the logits take: [batch, anchors, classes], its last entry a constant.
        let shape = &reshape.input[1];
        let (shape_init, last_only) = match initializer(graph, shape) {
            Some(i) => (i, false),
            None => {
                let mut source = node(graph, shape, "Cast")
                    .map(|c| c.input[0].clone())
                    .unwrap_or(shape.clone());
                let concat_shape = node(graph, &source, "Concat")?;
                source = concat_shape.input.last().cloned().ok_or("an empty shape")?;
                (
                    initializer(graph, &source)
                        .ok_or("the class count of the logits shape is not a constant")?,
                    true,
                )
            }
        };
        let shape_name = graph.initializer[shape_init].name.clone();
        let mut shape_values =
            ints_of(&graph.initializer[shape_init]).ok_or("the logits shape is not an integer")?;
        let c = match columns {
            // A shape constant shared with a predictor already cut down.
            Some(n) if shapes_done.contains(&shape_name) => n,
            _ => *shape_values.last().ok_or("an empty logits shape")? as usize,
        };
        if columns.is_some_and(|n| n != c) || c < 2 {
            return Err(format!("class predictors disagree on the class count ({c})"));
        }
        columns = Some(c);
        if let Some(&bad) = kept.iter().find(|&&k| k as usize >= c) {
            return Err(format!("class {bad} is not among the model's {c} columns"));
        }
        let rows = graph.initializer[w].dims.first().copied().unwrap_or(0) as usize;
        if rows == 0
            || !rows.is_multiple_of(c)
            || graph.initializer[b].dims.first().copied() != Some(rows as i64)
        {
            return Err(format!(
                "class predictor {} has {rows} outputs, not anchors x {c}",
                conv.name
            ));
        }
        let per_row = (floats_of(&graph.initializer[w]).len()) / rows;
        let keep_rows: Vec<usize> = (0..rows / c)
            .flat_map(|a| kept.iter().map(move |&k| a * c + k as usize))
            .collect();
        let weights = floats_of(&graph.initializer[w]);
        let biases = floats_of(&graph.initializer[b]);
        let new_w: Vec<f32> = keep_rows
            .iter()
            .flat_map(|&r| weights[r * per_row..(r + 1) * per_row].iter().copied())
            .collect();
        let new_b: Vec<f32> = keep_rows.iter().map(|&r| biases[r]).collect();
        let tw = &mut graph.initializer[w];
        tw.dims[0] = keep_rows.len() as i64;
        set_floats(tw, &new_w);
        let tb = &mut graph.initializer[b];
        tb.dims[0] = keep_rows.len() as i64;
        set_floats(tb, &new_b);
        // A shape constant may be shared by several predictors: changed once.
        if !shapes_done.contains(&shape_name) {
            *shape_values.last_mut().expect("not empty") = kept.len() as i64;
            if last_only && shape_values.len() != 1 {
                return Err("the class count of the logits shape is not a single constant".into());
            }
            set_ints(&mut graph.initializer[shape_init], &shape_values);
            shapes_done.push(shape_name);
        }
    }
    let output = &mut graph.output[1];
    if let Some(shape) = output
        .type_
        .as_mut()
        .and_then(|t| t.mut_tensor_type().shape.as_mut())
        && let Some(last) = shape.dim.last_mut()
    {
        last.set_dim_value(kept.len() as i64);
    }
    let bytes = model.write_to_bytes().map_err(|e| e.to_string())?;
    Ok((bytes, kept))
}
