//! An ONNX graph executed with burn tensors: the operators the TF-converted SSD-MobileNetV2 raw
//! head uses (Conv, Clip, Add, Mul, Transpose, Reshape, Concat, and the shape arithmetic
//! Shape/Gather/Cast/Slice that tf2onnx emits for a dynamic batch), with the initializers as
//! tensors on the chosen device.

use std::collections::HashMap;
use std::path::Path;

use autotuner_detect::onnx::{Message, ModelProto, NodeProto, floats_of, ints_of};
use burn::prelude::*;
use burn::tensor::ops::ConvOptions;
use thiserror::Error;

use crate::layers::Bounds;

#[derive(Debug, Error)]
pub enum GraphError {
    #[error("cannot read {path}: {message}")]
    Read { path: String, message: String },
    #[error("node {node} ({op}): {message}")]
    Node {
        node: String,
        op: String,
        message: String,
    },
    #[error("the graph has no output {0}")]
    Output(String),
}

/// A convolution of the graph: its input value, its weight and bias initializers, and its
/// padding (top, left, bottom, right).
#[derive(Debug, Clone, PartialEq)]
pub struct ConvNode {
    pub name: String,
    pub input: String,
    pub weight: String,
    pub bias: Option<String>,
    pub pads: [usize; 4],
}

/// A value flowing through the graph: a float tensor (kept 4-D, with its ONNX rank) or a small
/// integer vector (shapes), computed on the host.
// A few hundred values live per forward pass; boxing the tensor would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone)]
enum Value {
    Float(Tensor<4>, usize),
    Ints(Vec<i64>),
}

/// The values computed so far in a forward pass, each handed over (not cloned) to its last
/// reader: an operation that can write over its input (ReLU6 over its convolution's output)
/// then finds it unshared, and nothing outlives its readers.
struct Values<'a> {
    computed: HashMap<&'a str, Value>,
    /// How many reads of each value are still to come (a wanted output counts as one).
    reads_left: HashMap<&'a str, usize>,
}

impl<'a> Values<'a> {
    fn new(nodes: impl IntoIterator<Item = &'a NodeProto>, outputs: &[&'a str]) -> Self {
        let mut reads_left: HashMap<&str, usize> = HashMap::new();
        for name in nodes
            .into_iter()
            .flat_map(|n| n.input.iter().map(String::as_str))
            .chain(outputs.iter().copied())
        {
            *reads_left.entry(name).or_default() += 1;
        }
        Values {
            computed: HashMap::new(),
            reads_left,
        }
    }

    fn insert(&mut self, name: &'a str, value: Value) {
        self.computed.insert(name, value);
    }

    fn contains_float(&self, name: &str) -> bool {
        matches!(self.computed.get(name), Some(Value::Float(..)))
    }

    /// The value `name` for one read: the last read takes it.
    fn read(&mut self, name: &str) -> Option<Value> {
        let left = self.reads_left.get_mut(name)?;
        *left = left.saturating_sub(1);
        if *left == 0 {
            self.computed.remove(name)
        } else {
            self.computed.get(name).cloned()
        }
    }
}

/// What follows a Conv node and the convolution computes too: a per-channel scale (a Mul by a
/// constant, an unfolded batch norm), a per-channel shift (an Add) and a clamp (a Clip with
/// constant bounds, ReLU6), in that order, each read only by the next. The scale and shift fold
/// into the weight and bias, the clamp into the kernels ([`crate::layers::conv`]): one pass over
/// the output instead of four.
#[derive(Debug, Clone, PartialEq)]
struct ConvChain {
    /// The initializers of the Mul and the Add.
    scale: Option<String>,
    shift: Option<String>,
    clamp: Option<Bounds>,
    /// The Mul, Add and Clip nodes, in order: the last one's output is the chain's.
    absorbed: Vec<usize>,
}

/// A loaded ONNX graph.
pub struct OnnxGraph {
    model: ModelProto,
    nodes: Vec<NodeProto>,
    /// By the Conv node's index.
    conv_chains: HashMap<usize, ConvChain>,
    floats: HashMap<String, (Tensor<4>, usize)>,
    ints: HashMap<String, Vec<i64>>,
    input: String,
    outputs: Vec<String>,
}

impl std::fmt::Debug for OnnxGraph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnnxGraph")
            .field("nodes", &self.nodes.len())
            .field("initializers", &(self.floats.len() + self.ints.len()))
            .field("input", &self.input)
            .field("outputs", &self.outputs)
            .finish()
    }
}

fn to4(dims: &[usize]) -> [usize; 4] {
    let mut d = [1usize; 4];
    d[..dims.len()].copy_from_slice(dims);
    d
}

fn attr_ints(n: &NodeProto, name: &str) -> Vec<i64> {
    n.attribute
        .iter()
        .find(|a| a.name == name)
        .map(|a| a.ints.clone())
        .unwrap_or_default()
}

fn attr_int(n: &NodeProto, name: &str, default: i64) -> i64 {
    n.attribute
        .iter()
        .find(|a| a.name == name)
        .map_or(default, |a| a.i)
}

/// The Conv nodes of `nodes` that a scale, a shift or a clamp follows, with what follows them
/// ([`ConvChain`]): each node of a chain reads the one before, and nothing else reads that one
/// (no other node, not a graph output). A chain ends at the first node that does not qualify.
fn conv_chains(
    nodes: &[NodeProto],
    floats: &HashMap<String, (Tensor<4>, usize)>,
    outputs: &[String],
) -> HashMap<usize, ConvChain> {
    let mut readers: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, node) in nodes.iter().enumerate() {
        for input in &node.input {
            readers.entry(input.as_str()).or_default().push(i);
        }
    }
    // The one node that reads `value`, when only a node reads it.
    let only_reader = |value: &String| match readers.get(value.as_str())?.as_slice() {
        [reader] if !outputs.contains(value) => Some(*reader),
        _ => None,
    };
    let constant = |name: Option<&String>| {
        let (t, _) = floats.get(name?)?;
        t.clone().into_scalar_or_first().ok()
    };
    let bounds = |clip: &NodeProto, value: &String| {
        (clip.input.first() == Some(value)).then_some(())?;
        Some(Bounds {
            min: constant(clip.input.get(1))?,
            max: constant(clip.input.get(2))?,
        })
    };
    // The other input of a two-input node reading `value`, when it is a per-channel constant.
    let per_channel = |node: &NodeProto, value: &String, channels: usize| {
        let [a, b] = node.input.as_slice() else {
            return None;
        };
        let other = if a == value { b } else { a };
        let (t, rank) = floats.get(other)?;
        (other != value && *rank == 4 && t.dims() == [1, channels, 1, 1]).then(|| other.clone())
    };
    nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| n.op_type == "Conv")
        .filter_map(|(i, conv)| {
            let channels = floats.get(conv.input.get(1)?)?.0.dims()[0];
            let mut chain = ConvChain {
                scale: None,
                shift: None,
                clamp: None,
                absorbed: Vec::new(),
            };
            let mut value = conv.output.first()?;
            for op in ["Mul", "Add", "Clip"] {
                let Some(next) = only_reader(value) else { break };
                let node = &nodes[next];
                if node.op_type != op {
                    continue;
                }
                let qualifies = match op {
                    "Mul" => per_channel(node, value, channels).map(|c| chain.scale = Some(c)),
                    "Add" => per_channel(node, value, channels).map(|c| chain.shift = Some(c)),
                    _ => bounds(node, value).map(|b| chain.clamp = Some(b)),
                };
                if qualifies.is_none() {
                    break;
                }
                chain.absorbed.push(next);
                value = node.output.first()?;
            }
            (!chain.absorbed.is_empty()).then_some((i, chain))
        })
        .collect()
}

impl OnnxGraph {
    /// Loads the graph and its weights from `path`, placing the weights on `device`.
    pub fn load(path: &Path, device: &Device) -> Result<Self, GraphError> {
        let read = |message: String| GraphError::Read {
            path: path.display().to_string(),
            message,
        };
        let bytes = std::fs::read(path).map_err(|e| read(e.to_string()))?;
        let model = ModelProto::parse_from_bytes(&bytes).map_err(|e| read(e.to_string()))?;
        let graph = model.graph.as_ref().ok_or_else(|| read("no graph".into()))?;
        let (mut floats, mut ints) = (HashMap::new(), HashMap::new());
        for t in &graph.initializer {
            if let Some(v) = ints_of(t) {
                ints.insert(t.name.clone(), v);
                continue;
            }
            let dims: Vec<usize> = t.dims.iter().map(|&d| d as usize).collect();
            let data = TensorData::new(floats_of(t), to4(&dims));
            floats.insert(t.name.clone(), (Tensor::<4>::from_data(data, device), dims.len()));
        }
        let input = graph
            .input
            .iter()
            .map(|i| i.name.clone())
            .find(|n| !floats.contains_key(n) && !ints.contains_key(n))
            .ok_or_else(|| read("no input".into()))?;
        let outputs: Vec<String> = graph.output.iter().map(|o| o.name.clone()).collect();
        Ok(Self {
            conv_chains: conv_chains(&graph.node, &floats, &outputs),
            nodes: graph.node.clone(),
            model: model.clone(),
            floats,
            ints,
            input,
            outputs,
        })
    }

    pub fn input_name(&self) -> &str {
        &self.input
    }

    pub fn output_names(&self) -> &[String] {
        &self.outputs
    }

    /// The model as read, for writing it back with new weights.
    pub fn model(&self) -> &ModelProto {
        &self.model
    }

    /// The Conv nodes, in graph order.
    pub fn convs(&self) -> Vec<ConvNode> {
        self.nodes
            .iter()
            .filter(|n| n.op_type == "Conv" && n.input.len() >= 2)
            .map(|n| {
                let p = attr_ints(n, "pads");
                ConvNode {
                    name: n.name.clone(),
                    input: n.input[0].clone(),
                    weight: n.input[1].clone(),
                    bias: n.input.get(2).cloned(),
                    pads: if p.len() == 4 {
                        [p[0] as usize, p[1] as usize, p[2] as usize, p[3] as usize]
                    } else {
                        [0; 4]
                    },
                }
            })
            .collect()
    }

    /// A float initializer: its values and ONNX shape.
    pub fn initializer(&self, name: &str) -> Option<(Vec<f32>, Vec<usize>)> {
        let (t, rank) = self.floats.get(name)?;
        let dims = t.dims()[..*rank].to_vec();
        Some((t.clone().into_data().try_to_vec::<f32>().ok()?, dims))
    }

    /// A float initializer as the tensor the graph uses (ONNX shape padded to 4-D with ones).
    pub fn initializer_tensor(&self, name: &str) -> Option<Tensor<4>> {
        self.floats.get(name).map(|(t, _)| t.clone())
    }

    /// Runs the graph on `input` (its ONNX layout, 4-D) and returns the graph's outputs, each
    /// with its ONNX shape.
    pub fn forward(&self, input: Tensor<4>) -> Result<Vec<(Tensor<4>, Vec<usize>)>, GraphError> {
        let names: Vec<&str> = self.outputs.iter().map(String::as_str).collect();
        let input_name = self.input.clone();
        let values = self.forward_to(vec![(input_name.as_str(), input)], &names, &HashMap::new())?;
        Ok(values
            .into_iter()
            .map(|(t, rank)| {
                let shape = t.dims()[..rank].to_vec();
                (t, shape)
            })
            .collect())
    }

    /// The indices of the nodes needed to compute `outputs` from the values in `provided` (and
    /// the initializers), in graph order.
    pub fn needed_nodes(&self, provided: &[&str], outputs: &[&str]) -> Result<Vec<usize>, GraphError> {
        let mut needed: std::collections::HashSet<&str> = outputs.iter().copied().collect();
        let mut chosen = Vec::new();
        for (i, node) in self.nodes.iter().enumerate().rev() {
            let produces = node
                .output
                .iter()
                .any(|o| needed.contains(o.as_str()) && !provided.contains(&o.as_str()));
            if produces {
                chosen.push(i);
                needed.extend(node.input.iter().map(String::as_str));
            }
        }
        chosen.reverse();
        let produced: std::collections::HashSet<&str> = chosen
            .iter()
            .flat_map(|&i| self.nodes[i].output.iter().map(String::as_str))
            .collect();
        for name in needed {
            let known = provided.contains(&name)
                || produced.contains(name)
                || self.floats.contains_key(name)
                || self.ints.contains_key(name)
                || name.is_empty();
            if !known {
                return Err(GraphError::Output(name.to_string()));
            }
        }
        Ok(chosen)
    }

    /// The Conv nodes between the values `from` and `to` (the nodes that [`forward_to`]
    /// runs for them).
    ///
    /// [`forward_to`]: Self::forward_to
    pub fn convs_between(&self, from: &[&str], to: &[&str]) -> Result<Vec<ConvNode>, GraphError> {
        let nodes = self.needed_nodes(from, to)?;
        let names: std::collections::HashSet<&str> =
            nodes.iter().map(|&i| self.nodes[i].name.as_str()).collect();
        Ok(self
            .convs()
            .into_iter()
            .filter(|c| names.contains(c.name.as_str()))
            .collect())
    }

    /// Computes the values `outputs` from `inputs` (any values of the graph, not only its
    /// input), running only the nodes needed. `params` replace initializers of the same name:
    /// the trainer passes its trainable weights this way, with autodiff. Returns each output with
    /// its ONNX rank.
    pub fn forward_to(
        &self,
        inputs: Vec<(&str, Tensor<4>)>,
        outputs: &[&str],
        params: &HashMap<String, Tensor<4>>,
    ) -> Result<Vec<(Tensor<4>, usize)>, GraphError> {
        let provided: Vec<&str> = inputs.iter().map(|(n, _)| *n).collect();
        let nodes = self.needed_nodes(&provided, outputs)?;
        let mut values = Values::new(nodes.iter().map(|&i| &self.nodes[i]), outputs);
        for (name, tensor) in inputs {
            values.insert(name, Value::Float(tensor, 4));
        }
        // A convolution computes what follows it too ([`ConvChain`]) unless a value inside the
        // chain is wanted.
        let chains: HashMap<usize, &ConvChain> = nodes
            .iter()
            .filter_map(|&i| Some((i, self.conv_chains.get(&i)?)))
            .filter(|(i, chain)| {
                let inside =
                    std::iter::once(*i).chain(chain.absorbed[..chain.absorbed.len() - 1].iter().copied());
                inside
                    .map(|k| self.nodes[k].output[0].as_str())
                    .all(|value| !outputs.contains(&value))
                    && chain.absorbed.iter().all(|k| nodes.contains(k))
            })
            .collect();
        let absorbed: std::collections::HashSet<usize> =
            chains.values().flat_map(|c| c.absorbed.iter().copied()).collect();
        for i in nodes {
            if absorbed.contains(&i) {
                continue;
            }
            let node = &self.nodes[i];
            let chain = chains.get(&i).copied();
            let out = self
                .run(node, &mut values, params, chain)
                .map_err(|message| GraphError::Node {
                    node: node.name.clone(),
                    op: node.op_type.clone(),
                    message,
                })?;
            let last = chain.and_then(|c| c.absorbed.last()).map_or(i, |&k| k);
            values.insert(&self.nodes[last].output[0], out);
        }
        outputs
            .iter()
            .map(|name| match values.read(name) {
                Some(Value::Float(t, rank)) => Ok((t, rank)),
                _ => Err(GraphError::Output(name.to_string())),
            })
            .collect()
    }

    fn float(
        &self,
        values: &mut Values,
        params: &HashMap<String, Tensor<4>>,
        name: &str,
    ) -> Result<(Tensor<4>, usize), String> {
        match values.read(name) {
            Some(Value::Float(t, r)) => Ok((t, r)),
            Some(Value::Ints(_)) => Err(format!("{name} is an integer vector, not a tensor")),
            None => {
                let (constant, rank) = self.floats.get(name).ok_or_else(|| format!("no value {name}"))?;
                Ok((params.get(name).unwrap_or(constant).clone(), *rank))
            }
        }
    }

    fn ints(&self, values: &mut Values, name: &str) -> Result<Vec<i64>, String> {
        match values.read(name) {
            Some(Value::Ints(v)) => Ok(v),
            Some(Value::Float(..)) => Err(format!("{name} is a tensor, not a shape")),
            None => self
                .ints
                .get(name)
                .cloned()
                .ok_or_else(|| format!("no value {name}")),
        }
    }

    /// The weight and bias of a convolution whose output `chain` scales and shifts, with the
    /// scale and shift folded in: `(w·x + b)·s + t` is `(w·s)·x + (b·s + t)`.
    fn fold(
        &self,
        values: &mut Values,
        params: &HashMap<String, Tensor<4>>,
        chain: &ConvChain,
        weight: Tensor<4>,
        bias: Option<Tensor<1>>,
    ) -> Result<(Tensor<4>, Option<Tensor<1>>), String> {
        let (weight, bias) = match &chain.scale {
            Some(name) => {
                let scale = self.float(values, params, name)?.0;
                let channels = scale.dims()[1];
                (
                    weight * scale.clone().reshape([channels, 1, 1, 1]),
                    bias.map(|b| b * scale.reshape([channels])),
                )
            }
            None => (weight, bias),
        };
        let bias = match &chain.shift {
            Some(name) => {
                let shift = self.float(values, params, name)?.0.reshape([-1]);
                Some(bias.map_or(shift.clone(), |b| b + shift))
            }
            None => bias,
        };
        Ok((weight, bias))
    }

    fn scalar(&self, name: &str) -> Result<f32, String> {
        let (t, _) = self
            .floats
            .get(name)
            .ok_or_else(|| format!("{name} is not a constant"))?;
        t.clone().into_scalar_or_first()
    }

    /// Runs `node`; a Conv node computes `chain` too when given.
    fn run(
        &self,
        node: &NodeProto,
        values: &mut Values,
        params: &HashMap<String, Tensor<4>>,
        chain: Option<&ConvChain>,
    ) -> Result<Value, String> {
        let input = |i: usize| {
            node.input
                .get(i)
                .map(String::as_str)
                .ok_or_else(|| format!("missing input {i}"))
        };
        Ok(match node.op_type.as_str() {
            "Transpose" => {
                let (t, rank) = self.float(values, params, input(0)?)?;
                let p = attr_ints(node, "perm");
                if rank != 4 || p.len() != 4 {
                    return Err(format!("only 4-D transposes are supported, got rank {rank}"));
                }
                Value::Float(
                    t.permute([p[0] as usize, p[1] as usize, p[2] as usize, p[3] as usize]),
                    4,
                )
            }
            "Conv" => {
                let (x, _) = self.float(values, params, input(0)?)?;
                let (w, _) = self.float(values, params, input(1)?)?;
                let bias = match node.input.get(2) {
                    Some(b) => Some(self.float(values, params, b)?.0.reshape([-1])),
                    None => None,
                };
                let s = attr_ints(node, "strides");
                let p = attr_ints(node, "pads");
                let d = attr_ints(node, "dilations");
                let (s, p, d) = (
                    if s.len() == 2 { s } else { vec![1, 1] },
                    if p.len() == 4 { p } else { vec![0; 4] },
                    if d.len() == 2 { d } else { vec![1, 1] },
                );
                let options = ConvOptions {
                    stride: [s[0] as usize, s[1] as usize],
                    // ONNX pads are (top, left, bottom, right); TF's SAME puts the odd pixel last.
                    padding: [(p[0] as usize, p[2] as usize), (p[1] as usize, p[3] as usize)],
                    dilation: [d[0] as usize, d[1] as usize],
                    groups: attr_int(node, "group", 1) as usize,
                };
                let (w, bias) = match chain {
                    Some(chain) => self.fold(values, params, chain, w, bias)?,
                    None => (w, bias),
                };
                Value::Float(
                    crate::layers::conv(x, w, bias, options, chain.and_then(|c| c.clamp)),
                    4,
                )
            }
            "Clip" => {
                let (t, rank) = self.float(values, params, input(0)?)?;
                Value::Float(
                    crate::layers::clip(t, self.scalar(input(1)?)?, self.scalar(input(2)?)?),
                    rank,
                )
            }
            "Add" | "Mul" => {
                let (a, ra) = self.float(values, params, input(0)?)?;
                let (b, rb) = self.float(values, params, input(1)?)?;
                Value::Float(if node.op_type == "Add" { a + b } else { a * b }, ra.max(rb))
            }
            "Shape" => {
                let (t, rank) = self.float(values, params, input(0)?)?;
                Value::Ints(t.dims()[..rank].iter().map(|&d| d as i64).collect())
            }
            "Gather" => {
                let v = self.ints(values, input(0)?)?;
                let idx = self.ints(values, input(1)?)?;
                Value::Ints(
                    idx.iter()
                        .map(|&i| v.get(i as usize).copied().ok_or("index out of range"))
                        .collect::<Result<_, _>>()?,
                )
            }
            "Cast" => Value::Ints(self.ints(values, input(0)?)?),
            "Slice" => {
                let v = self.ints(values, input(0)?)?;
                let start = self.ints(values, input(1)?)?.first().copied().unwrap_or(0).max(0) as usize;
                let end = (self
                    .ints(values, input(2)?)?
                    .first()
                    .copied()
                    .unwrap_or(i64::MAX)
                    .max(0) as usize)
                    .min(v.len());
                Value::Ints(v.get(start..end).unwrap_or(&[]).to_vec())
            }
            "Concat" => {
                let axis = attr_int(node, "axis", 0);
                let first = input(0)?;
                if values.contains_float(first) || self.floats.contains_key(first) {
                    let parts = node
                        .input
                        .iter()
                        .map(|i| self.float(values, params, i))
                        .collect::<Result<Vec<_>, _>>()?;
                    let rank = parts[0].1;
                    if axis < 0 || axis as usize >= rank {
                        return Err(format!("concat axis {axis} of rank {rank}"));
                    }
                    Value::Float(
                        Tensor::cat(parts.into_iter().map(|p| p.0).collect(), axis as usize),
                        rank,
                    )
                } else {
                    let mut all = Vec::new();
                    for i in &node.input {
                        all.extend(self.ints(values, i)?);
                    }
                    Value::Ints(all)
                }
            }
            "Reshape" => {
                let (t, _) = self.float(values, params, input(0)?)?;
                let shape = self.ints(values, input(1)?)?;
                let total: usize = t.dims().iter().product();
                let known: i64 = shape.iter().filter(|&&d| d != -1).product();
                if known <= 0 || shape.len() > 4 {
                    return Err(format!("unsupported reshape to {shape:?}"));
                }
                let dims: Vec<usize> = shape
                    .iter()
                    .map(|&d| {
                        if d == -1 {
                            total / known as usize
                        } else {
                            d as usize
                        }
                    })
                    .collect();
                if dims.iter().product::<usize>() != total {
                    return Err(format!("cannot reshape {total} values to {dims:?}"));
                }
                Value::Float(t.reshape(to4(&dims)), dims.len())
            }
            other => return Err(format!("operator {other} is not supported")),
        })
    }
}

trait FirstScalar {
    fn into_scalar_or_first(self) -> Result<f32, String>;
}

impl FirstScalar for Tensor<4> {
    fn into_scalar_or_first(self) -> Result<f32, String> {
        self.into_data()
            .try_to_vec::<f32>()
            .map_err(|e| format!("{e:?}"))?
            .first()
            .copied()
            .ok_or_else(|| "empty constant".into())
    }
}

impl OnnxGraph {
    /// The model with `weights` written into its initializers of the same name (same shapes):
    /// the original graph, inputs and outputs unchanged, so every consumer of the model keeps
    /// working.
    pub fn with_weights(&self, weights: &HashMap<String, Vec<f32>>) -> Result<ModelProto, GraphError> {
        let mut model = self.model.clone();
        let graph = model
            .graph
            .as_mut()
            .ok_or_else(|| GraphError::Output("graph".into()))?;
        let mut written = 0;
        for t in graph.initializer.iter_mut() {
            if let Some(values) = weights.get(&t.name) {
                let count: i64 = t.dims.iter().product();
                if count as usize != values.len() {
                    return Err(GraphError::Node {
                        node: t.name.clone(),
                        op: "initializer".into(),
                        message: format!("{} values for a tensor of {count}", values.len()),
                    });
                }
                t.float_data.clear();
                t.raw_data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
                written += 1;
            }
        }
        if written != weights.len() {
            return Err(GraphError::Output(format!(
                "{} of {} weights have no initializer",
                weights.len() - written,
                weights.len()
            )));
        }
        Ok(model)
    }

    /// The model with the values `names` as its only outputs, for a runtime to compute
    /// intermediate feature maps (and nothing that only the original outputs need).
    pub fn with_outputs(&self, names: &[&str]) -> Result<ModelProto, GraphError> {
        let mut model = self.model.clone();
        let graph = model
            .graph
            .as_mut()
            .ok_or_else(|| GraphError::Output("graph".into()))?;
        let template = graph
            .output
            .first()
            .cloned()
            .ok_or_else(|| GraphError::Output("no output to copy the element type from".into()))?;
        graph.output.clear();
        for name in names {
            let mut output = template.clone();
            output.name = name.to_string();
            if let Some(t) = output.type_.as_mut() {
                t.mut_tensor_type().shape.clear();
            }
            graph.output.push(output);
        }
        Ok(model)
    }
}

/// The bytes of `model`, as an `.onnx` file holds them.
pub fn serialize(model: &ModelProto) -> Result<Vec<u8>, GraphError> {
    model
        .write_to_bytes()
        .map_err(|e| GraphError::Output(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(inputs: &[&str]) -> NodeProto {
        NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn op(op_type: &str, inputs: &[&str], output: &str) -> NodeProto {
        NodeProto {
            op_type: op_type.into(),
            output: vec![output.into()],
            ..node(inputs)
        }
    }

    #[test]
    fn a_convolution_computes_the_constant_scale_shift_and_clamp_that_only_it_feeds() {
        let device = Device::flex();
        let constant = |v: f32, dims: [usize; 4], rank| {
            let data = TensorData::new(vec![v; dims.iter().product()], dims);
            (Tensor::<4>::from_data(data, &device), rank)
        };
        let floats: HashMap<String, _> = [
            ("zero", constant(0.0, [1, 1, 1, 1], 0)),
            ("six", constant(6.0, [1, 1, 1, 1], 0)),
            ("w", constant(1.0, [2, 1, 3, 3], 4)),
            ("scale", constant(2.0, [1, 2, 1, 1], 4)),
            ("shift", constant(0.5, [1, 2, 1, 1], 4)),
            ("wide", constant(0.5, [1, 3, 1, 1], 4)),
        ]
        .into_iter()
        .map(|(name, c)| (name.to_string(), c))
        .collect();
        let nodes = [
            // 0-3: a depthwise convolution with its batch norm unfolded, then ReLU6.
            op("Conv", &["x", "w"], "a"),
            op("Mul", &["a", "scale"], "a1"),
            op("Add", &["a1", "shift"], "a2"),
            op("Clip", &["a2", "zero", "six"], "a6"),
            // 4-6: the unclamped output is read by an Add too.
            op("Conv", &["a6", "w"], "b"),
            op("Clip", &["b", "zero", "six"], "b6"),
            op("Add", &["b", "b6"], "sum"),
            // 7-8: a residual Add (of a value, not a constant).
            op("Conv", &["sum", "w"], "c"),
            op("Add", &["c", "sum"], "c1"),
            // 9-10: the convolution's output is a graph output.
            op("Conv", &["c1", "w"], "d"),
            op("Clip", &["d", "zero", "six"], "d6"),
            // 11-13: the constant first; then bounds that are computed values: the chain ends.
            op("Conv", &["d6", "w"], "e"),
            op("Add", &["shift", "e"], "e1"),
            op("Clip", &["e1", "zero", "sum"], "e6"),
            // 14-15: a constant of another channel count.
            op("Conv", &["e6", "w"], "f"),
            op("Mul", &["f", "wide"], "f1"),
        ];
        let chains = conv_chains(&nodes, &floats, &["d".to_string(), "f1".to_string()]);
        let relu6 = Bounds { min: 0.0, max: 6.0 };
        assert_eq!(
            chains,
            HashMap::from([
                (
                    0,
                    ConvChain {
                        scale: Some("scale".into()),
                        shift: Some("shift".into()),
                        clamp: Some(relu6),
                        absorbed: vec![1, 2, 3],
                    }
                ),
                (
                    11,
                    ConvChain {
                        scale: None,
                        shift: Some("shift".into()),
                        clamp: None,
                        absorbed: vec![12],
                    }
                ),
            ])
        );
    }

    #[test]
    fn a_value_is_handed_to_its_last_reader_and_kept_for_a_wanted_output() {
        let nodes = [node(&["x", "w"]), node(&["x", "y"])];
        let mut values = Values::new(&nodes, &["y"]);
        values.insert("x", Value::Ints(vec![1]));
        values.insert("y", Value::Ints(vec![2]));
        assert!(matches!(values.read("x"), Some(Value::Ints(v)) if v == [1]));
        assert!(
            values.computed.contains_key("x"),
            "one read of x is still to come"
        );
        assert!(matches!(values.read("x"), Some(Value::Ints(v)) if v == [1]));
        assert!(!values.computed.contains_key("x"), "the last reader took x");
        assert!(values.read("y").is_some());
        assert!(values.computed.contains_key("y"), "y is also a wanted output");
        assert!(
            values.read("w").is_none(),
            "w is no computed value (an initializer)"
        );
    }
}
