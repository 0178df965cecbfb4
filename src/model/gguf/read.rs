//! Reading GGUF files: the decoder a file describes, its weights by llama.cpp's names, and
//! its tokenizer.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{DType, Device, Tensor};

use crate::model::config::{Activation, Alibi, DecoderSpec, GemmaParts, GptFamily, GptParts, Parallel, QkvLayout};
use crate::model::config::{Rope, RopeScaling};
use crate::model::error::ModelError;
use crate::model::loaded::Model;
use crate::model::network::decoder::{Decoder, Names, Source};
use crate::model::network::linear::Linear;
use crate::model::text::tokenizer::Tokenizer;

/// The Hugging Face name of a tensor in llama.cpp's naming. Gemma's `post_attention_layernorm`
/// is its attention's output norm, not the pre-MLP norm it is in Llama.
pub(super) fn gguf_name(hf: &str, gemma: bool) -> Option<String> {
    let fixed = [
        ("model.embed_tokens.weight", "token_embd.weight"),
        ("transformer.wte.weight", "token_embd.weight"),
        ("transformer.word_embeddings.weight", "token_embd.weight"),
        ("model.norm.weight", "output_norm.weight"),
        ("transformer.norm_f.weight", "output_norm.weight"),
        ("transformer.norm_f.bias", "output_norm.bias"),
        ("transformer.ln_f.weight", "output_norm.weight"),
        ("transformer.ln_f.bias", "output_norm.bias"),
        ("lm_head.weight", "output.weight"),
    ];
    if let Some((_, g)) = fixed.iter().find(|(h, _)| *h == hf) {
        return Some(g.to_string());
    }
    let rest = ["model.layers.", "transformer.blocks.", "transformer.h."].iter().find_map(|p| hf.strip_prefix(p))?;
    let (layer, rest) = rest.split_once('.')?;
    let gemma_parts = [
        ("post_attention_layernorm.", "post_attention_norm."),
        ("pre_feedforward_layernorm.", "ffn_norm."),
        ("post_feedforward_layernorm.", "post_ffw_norm."),
    ];
    if let Some((h, g)) = gemma_parts.iter().find(|(h, _)| gemma && rest.starts_with(h)) {
        return Some(format!("blk.{layer}.{g}{}", &rest[h.len()..]));
    }
    let parts = [
        ("input_layernorm.", "attn_norm."),
        ("self_attn.q_proj.", "attn_q."),
        ("self_attn.k_proj.", "attn_k."),
        ("self_attn.v_proj.", "attn_v."),
        ("self_attn.o_proj.", "attn_output."),
        ("self_attn.q_norm.", "attn_q_norm."),
        ("self_attn.k_norm.", "attn_k_norm."),
        ("post_attention_layernorm.", "ffn_norm."),
        ("mlp.gate_proj.", "ffn_gate."),
        ("mlp.up_proj.", "ffn_up."),
        ("mlp.down_proj.", "ffn_down."),
        // MPT
        ("norm_1.", "attn_norm."),
        ("attn.Wqkv.", "attn_qkv."),
        ("attn.out_proj.", "attn_output."),
        ("norm_2.", "ffn_norm."),
        ("ffn.up_proj.", "ffn_up."),
        ("ffn.down_proj.", "ffn_down."),
        // Falcon: llama.cpp files the 40B's MLP norm as attn_norm and its attention norm as
        // attn_norm_2 (gguf-py's tensor map; its Falcon graph reads them so).
        ("ln_mlp.", "attn_norm."),
        ("ln_attn.", "attn_norm_2."),
        ("self_attention.query_key_value.", "attn_qkv."),
        ("self_attention.dense.", "attn_output."),
        ("mlp.dense_h_to_4h.", "ffn_up."),
        ("mlp.dense_4h_to_h.", "ffn_down."),
    ];
    let (h, g) = parts.iter().find(|(h, _)| rest.starts_with(h))?;
    Some(format!("blk.{layer}.{g}{}", &rest[h.len()..]))
}

struct GgufSource {
    path: PathBuf,
    content: gguf_file::Content,
    file: Mutex<BufReader<File>>,
    device: Device,
    dequantize: bool,
    gemma: bool,
    /// Falcon's `(heads, kv_heads, head_dim)`: llama.cpp stores the fused q/k/v rows as all
    /// queries, keys, values; they are put back in transformers' key/value groups at load, so
    /// that adapters (PEFT's `query_key_value`) see the same rows in either form.
    falcon_qkv: Option<(usize, usize, usize)>,
}

/// For each row of Falcon's fused q/k/v in transformers' order (per key/value group: its
/// queries, its key, its value), the row holding it in llama.cpp's (all queries, all keys, all
/// values).
pub fn falcon_grouped_rows(heads: usize, kv_heads: usize, head_dim: usize) -> Vec<usize> {
    let rep = heads / kv_heads.max(1);
    let mut rows = Vec::with_capacity((heads + 2 * kv_heads) * head_dim);
    for g in 0..kv_heads {
        let heads_of_group = (g * rep..(g + 1) * rep).chain([heads + g, heads + kv_heads + g]);
        for h in heads_of_group {
            rows.extend(h * head_dim..(h + 1) * head_dim);
        }
    }
    rows
}

/// `q`'s rows in the order `rows` gives (whole rows of blocks move; nothing is requantized).
fn reorder_rows(q: &QTensor, rows: &[usize], device: &Device) -> candle_core::Result<QTensor> {
    let dims = q.shape().dims().to_vec();
    let data = q.data()?;
    if dims.len() != 2 || dims[0] != rows.len() || data.len() % dims[0] != 0 {
        candle_core::bail!("cannot reorder the rows of a {dims:?} tensor into {} rows", rows.len())
    }
    let row_bytes = data.len() / dims[0];
    let mut out = Vec::with_capacity(data.len());
    for &r in rows {
        out.extend_from_slice(&data[r * row_bytes..(r + 1) * row_bytes]);
    }
    let storage = candle_core::quantized::QStorage::from_data(std::borrow::Cow::Owned(out), device, q.dtype())?;
    QTensor::new(storage, dims)
}

/// How a GGUF file's quantized projections run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Quantized matmuls (candle also quantizes the activations to 8 bits): least memory.
    #[default]
    Quantized,
    /// Weights dequantized to f32 once at load: the file's exact values, 4–8× the memory.
    Dequantized,
}

impl GgufSource {
    fn err(&self, message: String) -> ModelError {
        ModelError::Weights { file: self.path.clone(), message }
    }

    fn qtensor(&self, hf: &str, shape: &[usize], why: &str) -> Result<QTensor, ModelError> {
        let name = gguf_name(hf, self.gemma).ok_or_else(|| self.err(format!("no GGUF name for tensor {hf}")))?;
        let Some(info) = self.content.tensor_infos.get(&name) else {
            return Err(ModelError::MissingTensor {
                files: crate::model::network::weights::file_name(&self.path),
                tensor: name,
            });
        };
        if info.shape.dims() != shape {
            return Err(ModelError::Shape {
                file: self.path.clone(),
                tensor: name,
                expected: shape.to_vec(),
                found: info.shape.dims().to_vec(),
                why: why.to_string(),
            });
        }
        let mut file = self.file.lock().map_err(|_| self.err("reader poisoned".into()))?;
        self.content
            .tensor(&mut *file, &name, &self.device)
            .map_err(|e| self.err(format!("cannot read tensor {name}: {e}; the file may be truncated")))
    }
}

impl GgufSource {
    fn layer(&self, q: QTensor, bias: Option<Tensor>) -> Result<Linear, ModelError> {
        if self.dequantize {
            return Ok(Linear::dense(q.dequantize(&self.device)?, bias)?);
        }
        if self.device.is_cpu() {
            if let Some(packed) = crate::model::kernels::qpacked::QPacked::new(&q)? {
                return Ok(Linear::qpacked(packed, bias));
            }
        }
        Ok(Linear::quantized(QMatMul::from_qtensor(q)?, bias))
    }
}

impl Source for GgufSource {
    fn device(&self) -> &Device {
        &self.device
    }

    fn dtype(&self) -> DType {
        DType::F32
    }

    fn tensor(&self, name: &str, shape: &[usize], why: &str) -> Result<Tensor, ModelError> {
        Ok(self.qtensor(name, shape, why)?.dequantize(&self.device)?)
    }

    fn linear(&self, name: &str, out: usize, inp: usize, bias: bool, why: &str) -> Result<Linear, ModelError> {
        let mut q = self.qtensor(&format!("{name}.weight"), &[out, inp], why)?;
        let mut bias = if bias { Some(self.tensor(&format!("{name}.bias"), &[out], why)?) } else { None };
        if let (Some((heads, kv, hd)), true) = (self.falcon_qkv, name.ends_with("query_key_value")) {
            let rows = falcon_grouped_rows(heads, kv, hd);
            q = reorder_rows(&q, &rows, &self.device)?;
            if let Some(b) = bias {
                let index = Tensor::new(rows.iter().map(|&r| r as u32).collect::<Vec<_>>(), b.device())?;
                bias = Some(b.index_select(&index, 0)?);
            }
        }
        self.layer(q, bias)
    }

    fn tied_head(&self, name: &str, vocab: usize, hidden: usize, why: &str) -> Result<Linear, ModelError> {
        let q = self.qtensor(name, &[vocab, hidden], why)?;
        self.layer(q, None)
    }
}

fn meta<'a>(c: &'a gguf_file::Content, path: &Path, key: &str) -> Result<&'a Value, ModelError> {
    c.metadata.get(key).ok_or_else(|| ModelError::Config {
        file: path.to_path_buf(),
        key: key.into(),
        message: "is missing from the GGUF metadata".into(),
    })
}

fn meta_u(c: &gguf_file::Content, path: &Path, key: &str) -> Result<usize, ModelError> {
    let v = meta(c, path, key)?;
    v.to_u64().or_else(|_| v.to_u32().map(u64::from)).map(|n| n as usize).map_err(|_| ModelError::Config {
        file: path.to_path_buf(),
        key: key.into(),
        message: format!("must be a whole number, found {v:?}"),
    })
}

fn meta_f(c: &gguf_file::Content, path: &Path, key: &str, default: f64) -> Result<f64, ModelError> {
    match c.metadata.get(key) {
        None => Ok(default),
        Some(v) => v.to_f32().map(f64::from).map_err(|_| ModelError::Config {
            file: path.to_path_buf(),
            key: key.into(),
            message: format!("must be a number, found {v:?}"),
        }),
    }
}

/// The file opened and its header (metadata and tensor directory) read.
fn open(path: &Path) -> Result<(BufReader<File>, gguf_file::Content), ModelError> {
    let io = |e: std::io::Error| ModelError::Io { file: path.to_path_buf(), source: e };
    let mut reader = BufReader::new(File::open(path).map_err(io)?);
    let content = gguf_file::Content::read(&mut reader).map_err(|e| ModelError::Weights {
        file: path.to_path_buf(),
        message: format!("is not a readable GGUF file ({e})"),
    })?;
    Ok((reader, content))
}

/// The tokenizer of a .gguf file (from its metadata, else the tokenizer.json beside it).
pub fn load_tokenizer(path: &Path) -> Result<Tokenizer, ModelError> {
    tokenizer_of(&open(path)?.1, path)
}

/// The tokenizer of a .gguf file and the ids that end its text, without its weights.
pub fn load_text_side(path: &Path) -> Result<(Tokenizer, Vec<u32>), ModelError> {
    let content = open(path)?.1;
    Ok((tokenizer_of(&content, path)?, eos_ids(&content)))
}

/// The end-of-sequence id the file's metadata names (none when it names none).
fn eos_ids(content: &gguf_file::Content) -> Vec<u32> {
    token_id(content, "tokenizer.ggml.eos_token_id").into_iter().collect()
}

/// A token id in the metadata under `key`.
fn token_id(content: &gguf_file::Content, key: &str) -> Option<u32> {
    content.metadata.get(key).and_then(|v| v.to_u32().ok())
}

fn tokenizer_of(content: &gguf_file::Content, path: &Path) -> Result<Tokenizer, ModelError> {
    if let Some(t) = crate::model::text::gguf_tokenizer::from_metadata(&content.metadata, path)? {
        return Tokenizer::from_gguf(t, path);
    }
    let dir = path.parent().map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    Tokenizer::load(&dir).map_err(|e| match e {
        ModelError::MissingFile { path: p, .. } => ModelError::MissingFile {
            path: p,
            hint: "this GGUF file carries no tokenizer (no tokenizer.ggml.model), so selfspec reads the \
                   tokenizer.json beside it; copy the original model's tokenizer.json there"
                .into(),
        },
        other => other,
    })
}

/// `general.architecture` values selfspec reads.
pub const ARCHITECTURES: [&str; 7] = ["llama", "mistral", "qwen2", "qwen3", "gemma3", "mpt", "falcon"];

/// Opens a .gguf file for inference (f32 activations).
pub fn load(path: &Path, device: &Device, mode: Mode) -> Result<Model, ModelError> {
    let (mut reader, content) = open(path)?;
    let arch = architecture(&content, path)?;
    let spec = spec_of(&content, &mut reader, path, &arch)?;
    let falcon_qkv = (arch == "falcon").then_some((spec.num_heads, spec.num_kv_heads, spec.head_dim));
    let dir = path.parent().map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    let tokenizer = tokenizer_of(&content, path)?;
    let eos_token_ids = spec.eos_token_ids.clone();
    let source = GgufSource {
        path: path.to_path_buf(),
        content,
        file: Mutex::new(reader),
        device: device.clone(),
        dequantize: mode == Mode::Dequantized,
        gemma: arch == "gemma3",
        falcon_qkv,
    };
    let decoder = Decoder::load(spec, &source)?;
    Ok(Model { dir, decoder, tokenizer, eos_token_ids })
}

/// The file's `general.architecture`, one of [`ARCHITECTURES`].
fn architecture(content: &gguf_file::Content, path: &Path) -> Result<String, ModelError> {
    let arch = meta(content, path, "general.architecture")?.to_string().map_err(|_| ModelError::Config {
        file: path.to_path_buf(),
        key: "general.architecture".into(),
        message: "must be a string".into(),
    })?;
    if !ARCHITECTURES.contains(&arch.as_str()) {
        return Err(ModelError::Config {
            file: path.to_path_buf(),
            key: "general.architecture".into(),
            message: format!("\"{arch}\" is not supported; selfspec reads {} GGUF files", ARCHITECTURES.join(", ")),
        });
    }
    Ok(arch.clone())
}

/// The decoder a file of architecture `arch` describes, from its metadata and tensor shapes.
fn spec_of(
    content: &gguf_file::Content,
    reader: &mut BufReader<File>,
    path: &Path,
    arch: &str,
) -> Result<DecoderSpec, ModelError> {
    // Llama-family files store q/k permuted for interleaved rope; Qwen2 has q/k/v biases;
    // Qwen3 and Gemma 3 normalize queries and keys.
    let (interleaved, qkv_bias, qk_norm) = match arch {
        "llama" | "mistral" => (true, false, false),
        "qwen2" => (false, true, false),
        "qwen3" | "gemma3" => (false, false, true),
        _ => (false, false, false),
    };
    let gemma = arch == "gemma3";
    let key = |k: &str| format!("{arch}.{k}");
    let hidden = meta_u(content, path, &key("embedding_length"))?;
    let heads = meta_u(content, path, &key("attention.head_count"))?;
    let kv_heads = match content.metadata.get(&key("attention.head_count_kv")) {
        Some(_) => meta_u(content, path, &key("attention.head_count_kv"))?,
        None => heads,
    };
    let head_dim = match content.metadata.get(&key("attention.key_length")) {
        Some(_) => meta_u(content, path, &key("attention.key_length"))?,
        None => hidden / heads.max(1),
    };
    let embd = content.tensor_infos.get("token_embd.weight").ok_or_else(|| ModelError::MissingTensor {
        files: crate::model::network::weights::file_name(path),
        tensor: "token_embd.weight".into(),
    })?;
    let vocab = embd.shape.dims()[0];
    let num_layers = meta_u(content, path, &key("block_count"))?;
    let rope_freq_factors = match content.tensor_infos.get("rope_freqs.weight") {
        None => None,
        Some(_) => {
            let q = content.tensor(reader, "rope_freqs.weight", &Device::Cpu)?;
            Some(q.dequantize(&Device::Cpu)?.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
        }
    };
    // Checked where the file's other rope settings are read, before the window and Gemma's keys.
    let scaling = rope_scaling(content, path, arch)?;
    let sliding_window = match content.metadata.get(&key("attention.sliding_window")) {
        Some(_) => Some(meta_u(content, path, &key("attention.sliding_window"))?),
        None => None,
    };
    let gemma_parts =
        if gemma { Some(gemma_parts(content, path, arch, hidden, heads, head_dim, num_layers)?) } else { None };
    let sliding_layers = match &gemma_parts {
        Some((_, layers)) => layers.clone(),
        None => vec![sliding_window.is_some(); num_layers],
    };
    let spec = DecoderSpec {
        architecture: match arch {
            "qwen2" => "qwen2",
            "qwen3" => "qwen3",
            "gemma3" => "gemma3",
            _ => "llama",
        },
        vocab_size: vocab,
        hidden_size: hidden,
        intermediate_size: meta_u(content, path, &key("feed_forward_length"))?,
        num_layers,
        num_heads: heads,
        num_kv_heads: kv_heads,
        head_dim,
        rms_norm_eps: meta_f(content, path, &key("attention.layer_norm_rms_epsilon"), 1e-6)?,
        rope: Rope { theta: meta_f(content, path, &key("rope.freq_base"), 10_000.0)?, scaling },
        max_position_embeddings: meta_u(content, path, &key("context_length")).unwrap_or(4096),
        tie_word_embeddings: !content.tensor_infos.contains_key("output.weight"),
        qkv_bias,
        o_bias: false,
        mlp_bias: false,
        activation: if gemma { Activation::GeluTanh } else { Activation::Silu },
        qk_norm,
        sliding_window,
        sliding_layers,
        rope_interleaved: interleaved,
        rope_freq_factors,
        eos_token_ids: eos_ids(content),
        bos_token_id: token_id(content, "tokenizer.ggml.bos_token_id"),
        gemma: gemma_parts.map(|(g, _)| g),
        gpt: None,
    };
    match arch {
        "mpt" | "falcon" => gpt_spec(spec, content, path, arch),
        _ => Ok(spec),
    }
}

/// `rope.scaling.type`: none or linear (Llama 3's scaling comes as the `rope_freqs` tensor).
fn rope_scaling(content: &gguf_file::Content, path: &Path, arch: &str) -> Result<RopeScaling, ModelError> {
    let key = |k: &str| format!("{arch}.{k}");
    match content.metadata.get(&key("rope.scaling.type")) {
        None => Ok(RopeScaling::None),
        Some(v) => match v.to_string().map(String::as_str) {
            Ok("none") => Ok(RopeScaling::None),
            Ok("linear") => {
                Ok(RopeScaling::Linear { factor: meta_f(content, path, &key("rope.scaling.factor"), 1.0)? })
            }
            other => Err(ModelError::Config {
                file: path.to_path_buf(),
                key: key("rope.scaling.type"),
                message: format!(
                    "{other:?} is not supported; selfspec reads none and linear (and Llama 3's rope_freqs tensor)"
                ),
            }),
        },
    }
}

/// MPT's and Falcon's parts as llama.cpp reads them: LayerNorms (with a bias where the file has
/// one), the fused `attn_qkv`, ALiBi with `attention.max_alibi_bias` and `attention.clamp_kqv`
/// for MPT, rotary positions and parallel blocks for Falcon (two norms where `attn_norm_2`
/// exists).
fn gpt_spec(mut spec: DecoderSpec, c: &gguf_file::Content, path: &Path, arch: &str) -> Result<DecoderSpec, ModelError> {
    let key = |k: &str| format!("{arch}.{k}");
    let has = |t: &str| c.tensor_infos.contains_key(t);
    let mpt = arch == "mpt";
    spec.architecture = if mpt { "mpt" } else { "falcon" };
    spec.rms_norm_eps = meta_f(c, path, &key("attention.layer_norm_epsilon"), 1e-5)?;
    spec.activation = Activation::Gelu;
    spec.qkv_bias = false;
    spec.qk_norm = false;
    let max_bias = meta_f(c, path, &key("attention.max_alibi_bias"), 0.0)?;
    if mpt && max_bias <= 0.0 {
        return Err(ModelError::Config {
            file: path.to_path_buf(),
            key: key("attention.max_alibi_bias"),
            message: "is missing or not positive; an MPT file without ALiBi (learned positions) is not supported"
                .into(),
        });
    }
    if has("blk.0.attn_q_norm.weight") || has("pos_embd.weight") {
        return Err(ModelError::Config {
            file: path.to_path_buf(),
            key: "blk.0.attn_q_norm / pos_embd".into(),
            message: "MPT's q/k LayerNorm and learned positions are not supported (transformers' MPT has neither)"
                .into(),
        });
    }
    let parallel = match (mpt, has("blk.0.attn_norm_2.weight")) {
        (true, _) => Parallel::No,
        (false, true) => Parallel::TwoNorms,
        (false, false) => Parallel::SharedNorm,
    };
    spec.gpt = Some(GptParts {
        family: if mpt { GptFamily::Mpt } else { GptFamily::Falcon },
        norm_bias: has("blk.0.attn_norm.bias"),
        bias: has("blk.0.attn_qkv.bias"),
        qkv: if mpt { QkvLayout::Contiguous } else { QkvLayout::Grouped },
        clip_qkv: Some(meta_f(c, path, &key("attention.clamp_kqv"), 0.0)?).filter(|v| *v > 0.0),
        parallel,
        alibi: mpt.then_some(Alibi::Mpt { max_bias }),
        attention_scale: (spec.head_dim as f64).powf(-0.5),
    });
    Ok(spec)
}

/// Gemma 3's parts as llama.cpp reads them from a file: norms stored with the 1 added, the
/// local layers' rotary base 10,000 without scaling (unless `rope.freq_base_swa` says), every
/// sixth layer global (unless `attention.sliding_window_pattern` says), queries scaled by
/// `head_dim^-1/2` (by `(hidden / heads)^-1/2` for the 62-layer 27B; `attention.scale` where
/// the file has it), and the per-layer sliding flags.
fn gemma_parts(
    c: &gguf_file::Content,
    path: &Path,
    arch: &str,
    hidden: usize,
    heads: usize,
    head_dim: usize,
    num_layers: usize,
) -> Result<(GemmaParts, Vec<bool>), ModelError> {
    let key = |k: &str| format!("{arch}.{k}");
    let pattern_key = key("attention.sliding_window_pattern");
    let sliding = match c.metadata.get(&pattern_key) {
        None => (0..num_layers).map(|i| (i + 1) % 6 != 0).collect(),
        Some(Value::Array(items)) => {
            let flags: Option<Vec<bool>> = items.iter().map(|v| v.to_bool().ok()).collect();
            match flags {
                Some(f) if f.len() == num_layers => f,
                _ => {
                    return Err(ModelError::Config {
                        file: path.to_path_buf(),
                        key: pattern_key,
                        message: format!("must list true or false for each of the {num_layers} layers"),
                    })
                }
            }
        }
        Some(_) => {
            let n = meta_u(c, path, &pattern_key)?.max(1);
            (0..num_layers).map(|i| (i + 1) % n != 0).collect()
        }
    };
    let scale_dim = if num_layers == 62 { hidden / heads.max(1) } else { head_dim };
    let attention_scale = match c.metadata.get(&key("attention.scale")) {
        Some(_) => meta_f(c, path, &key("attention.scale"), 0.0)?,
        None => (scale_dim as f64).powf(-0.5),
    };
    let local_theta = meta_f(c, path, &key("rope.freq_base_swa"), 10_000.0)?;
    let cap = Some(meta_f(c, path, &key("final_logit_softcapping"), 0.0)?).filter(|v| *v > 0.0);
    Ok((
        GemmaParts {
            norm_plus_one: false,
            embed_scale: (hidden as f64).sqrt(),
            attention_scale,
            local_rope: Rope { theta: local_theta, scaling: RopeScaling::None },
            final_logit_softcapping: cap,
        },
        sliding,
    ))
}

/// MPT's and Falcon's tensors by their Hugging Face names, with shapes, in file order (the LM
/// head, when untied, is added after).
pub(super) fn gpt_tensor_names(s: &DecoderSpec) -> Vec<(String, Vec<usize>)> {
    let n = Names::of(s);
    let Some(g) = &s.gpt else { return Vec::new() };
    let (h, f, hd) = (s.hidden_size, s.intermediate_size, s.head_dim);
    let mut names = vec![(n.embed.to_string(), vec![s.vocab_size, h])];
    let norm = |names: &mut Vec<(String, Vec<usize>)>, prefix: String| {
        names.push((format!("{prefix}.weight"), vec![h]));
        if g.norm_bias {
            names.push((format!("{prefix}.bias"), vec![h]));
        }
    };
    for i in 0..s.num_layers {
        let p = format!("{}.{i}", n.layers);
        norm(&mut names, format!("{p}.{}", n.input_norm));
        if g.parallel != Parallel::SharedNorm {
            norm(&mut names, format!("{p}.{}", n.mlp_norm));
        }
        let qkv = (s.num_heads + 2 * s.num_kv_heads) * hd;
        for (name, out, inp) in [(n.q, qkv, h), (n.o, h, s.num_heads * hd), (n.up, f, h), (n.down, h, f)] {
            names.push((format!("{p}.{name}.weight"), vec![out, inp]));
            if g.bias {
                names.push((format!("{p}.{name}.bias"), vec![out]));
            }
        }
    }
    norm(&mut names, n.final_norm.to_string());
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Falcon's fused rows: with two groups of two query heads (head_dim 1), transformers' order
    /// q0 q1 k0 v0 q2 q3 k1 v1 is llama.cpp's rows 0 1 4 6 2 3 5 7.
    #[test]
    fn falcon_groups_map_to_llama_cpp_rows() {
        assert_eq!(falcon_grouped_rows(4, 2, 1), vec![0, 1, 4, 6, 2, 3, 5, 7]);
        assert_eq!(falcon_grouped_rows(2, 1, 2), vec![0, 1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(gguf_name("transformer.h.1.ln_attn.bias", false).as_deref(), Some("blk.1.attn_norm_2.bias"));
        assert_eq!(gguf_name("transformer.h.1.ln_mlp.weight", false).as_deref(), Some("blk.1.attn_norm.weight"));
        assert_eq!(gguf_name("transformer.blocks.0.attn.Wqkv.weight", false).as_deref(), Some("blk.0.attn_qkv.weight"));
        assert_eq!(gguf_name("transformer.ln_f.bias", false).as_deref(), Some("output_norm.bias"));
    }

    #[test]
    fn names_follow_llama_cpp() {
        assert_eq!(gguf_name("model.layers.3.self_attn.q_proj.bias", false).as_deref(), Some("blk.3.attn_q.bias"));
        assert_eq!(gguf_name("model.layers.0.mlp.down_proj.weight", false).as_deref(), Some("blk.0.ffn_down.weight"));
        assert_eq!(gguf_name("lm_head.weight", false).as_deref(), Some("output.weight"));
        assert_eq!(gguf_name("model.layers.0.unknown.weight", false), None);
    }
}
