//! Writing GGUF files (`selfspec quantize`): a Hugging Face model's tensors under llama.cpp's
//! names and layouts, its configuration as llama.cpp's metadata keys.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};

use super::read::{falcon_grouped_rows, gguf_name, gpt_tensor_names};
use crate::model::config::{Alibi, DecoderSpec, GptFamily, Parallel, Rope, RopeScaling};
use crate::model::network::weights::Weights;

/// The quantized types `selfspec quantize` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantType {
    Q4_0,
    Q4k,
    Q8_0,
}

impl QuantType {
    pub fn ggml(self) -> GgmlDType {
        FileType::from(self).ggml()
    }
}

impl From<QuantType> for FileType {
    fn from(q: QuantType) -> FileType {
        match q {
            QuantType::Q4_0 => FileType::Q4_0,
            QuantType::Q4k => FileType::Q4k,
            QuantType::Q8_0 => FileType::Q8_0,
        }
    }
}

/// The types `selfspec quantize` writes a model's matrices in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileType {
    F32,
    F16,
    Q8_0,
    Q4k,
    Q4_0,
}

impl FileType {
    pub fn ggml(self) -> GgmlDType {
        match self {
            FileType::F32 => GgmlDType::F32,
            FileType::F16 => GgmlDType::F16,
            FileType::Q8_0 => GgmlDType::Q8_0,
            FileType::Q4k => GgmlDType::Q4K,
            FileType::Q4_0 => GgmlDType::Q4_0,
        }
    }

    /// llama.cpp's `general.file_type` (its `llama_ftype`).
    fn llama_cpp_id(self) -> u32 {
        match self {
            FileType::F32 => 0,
            FileType::F16 => 1,
            FileType::Q4_0 => 2,
            FileType::Q8_0 => 7,
            FileType::Q4k => 15,
        }
    }
}

/// llama.cpp's permutation of q/k rows for rotary embedding over adjacent pairs.
fn permute_for_pairs(w: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    let dims = w.dims().to_vec();
    let rows = dims[0];
    let mut shape = vec![heads, 2, rows / heads / 2];
    shape.extend_from_slice(&dims[1..]);
    w.reshape(shape)?.transpose(1, 2)?.contiguous()?.reshape(dims)
}

/// Writes the Hugging Face model in `dir` as a GGUF file of type `qtype` (projections and
/// embeddings quantized where their rows fit the type's blocks, everything else f32), and puts
/// its tokenizer.json beside the output unless one is there. Returns notes for the user.
///
/// Rope scaling goes where llama.cpp puts it: Llama 3's as the `rope_freqs` tensor (each
/// frequency's divisor), linear as `rope.scaling.type`/`rope.scaling.factor`. A sliding window
/// over every layer is written as `attention.sliding_window` (llama.cpp's key; its `llama`
/// architecture ignores it, selfspec applies it).
pub fn quantize(dir: &Path, out: &Path, qtype: FileType) -> anyhow::Result<Vec<String>> {
    let spec = crate::model::arch::read_spec(&dir.join("config.json"))?;
    refuse_unwritable(&spec, dir)?;
    let weights = Weights::open(dir, DType::F32, &Device::Cpu)?;
    let mut notes = Vec::new();
    let (tensors, kept_f32) = tensors(&spec, &weights, qtype)?;
    if kept_f32 > 0 {
        let block = qtype.ggml().block_size();
        notes.push(format!("{kept_f32} matrices have rows not a multiple of {block} and stay f32"));
    }
    let metadata = metadata(&spec, dir, qtype)?;
    write_file(out, &metadata, &tensors)?;
    let tokenizer_out = out.parent().map_or_else(|| PathBuf::from("tokenizer.json"), |p| p.join("tokenizer.json"));
    if !tokenizer_out.exists() {
        std::fs::copy(dir.join("tokenizer.json"), &tokenizer_out)?;
        notes.push(format!("copied tokenizer.json to {}", tokenizer_out.display()));
    }
    Ok(notes)
}

/// llama.cpp's name for the architecture: Mistral is filed as `llama`.
fn gguf_architecture(spec: &DecoderSpec) -> &'static str {
    match spec.architecture {
        "llama" | "mistral" => "llama",
        other => other,
    }
}

/// Refuses the models no GGUF file can describe so that llama.cpp runs them alike.
fn refuse_unwritable(spec: &DecoderSpec, dir: &Path) -> anyhow::Result<()> {
    if spec.gemma.is_none() && spec.sliding_window.is_some() && !spec.sliding_layers.iter().all(|&s| s) {
        anyhow::bail!(
            "{}: a sliding window on some layers only (max_window_layers) has no GGUF key; only a window over every layer is carried",
            dir.display()
        );
    }
    if let Some(g) = &spec.gpt {
        let why = match (g.alibi, g.parallel, g.family) {
            (Some(_), _, GptFamily::Falcon) => Some("Falcon with ALiBi (Falcon-RW)"),
            (_, Parallel::No, GptFamily::Falcon) => Some("Falcon with sequential blocks (parallel_attn false)"),
            (_, _, GptFamily::Mpt) if (g.attention_scale - (spec.head_dim as f64).powf(-0.5)).abs() > 1e-12 => {
                Some("MPT with its own softmax_scale")
            }
            _ => None,
        };
        if let Some(why) = why {
            anyhow::bail!("{}: {why} has no form llama.cpp reads, so no GGUF file is written", dir.display());
        }
    }
    Ok(())
}

/// The Hugging Face names and shapes of the tensors a GGUF file of `s` holds, in file order.
fn hf_tensor_names(s: &DecoderSpec) -> Vec<(String, Vec<usize>)> {
    let mut names: Vec<(String, Vec<usize>)> = match &s.gpt {
        Some(_) => gpt_tensor_names(s),
        None => vec![("model.embed_tokens.weight".into(), vec![s.vocab_size, s.hidden_size])],
    };
    for i in (0..s.num_layers).filter(|_| s.gpt.is_none()) {
        let p = format!("model.layers.{i}");
        let (q, kv, h, f) = (s.num_heads * s.head_dim, s.num_kv_heads * s.head_dim, s.hidden_size, s.intermediate_size);
        names.push((format!("{p}.input_layernorm.weight"), vec![h]));
        for (n, o, inp) in [("q_proj", q, h), ("k_proj", kv, h), ("v_proj", kv, h), ("o_proj", h, q)] {
            names.push((format!("{p}.self_attn.{n}.weight"), vec![o, inp]));
            if s.qkv_bias && n != "o_proj" || s.o_bias && n == "o_proj" {
                names.push((format!("{p}.self_attn.{n}.bias"), vec![o]));
            }
        }
        if s.qk_norm {
            names.push((format!("{p}.self_attn.q_norm.weight"), vec![s.head_dim]));
            names.push((format!("{p}.self_attn.k_norm.weight"), vec![s.head_dim]));
        }
        names.push((format!("{p}.post_attention_layernorm.weight"), vec![h]));
        if s.gemma.is_some() {
            names.push((format!("{p}.pre_feedforward_layernorm.weight"), vec![h]));
            names.push((format!("{p}.post_feedforward_layernorm.weight"), vec![h]));
        }
        for (n, o, inp) in [("gate_proj", f, h), ("up_proj", f, h), ("down_proj", h, f)] {
            names.push((format!("{p}.mlp.{n}.weight"), vec![o, inp]));
        }
    }
    if s.gpt.is_none() {
        names.push(("model.norm.weight".into(), vec![s.hidden_size]));
    }
    if !s.tie_word_embeddings {
        names.push(("lm_head.weight".into(), vec![s.vocab_size, s.hidden_size]));
    }
    names
}

/// The file's tensors under llama.cpp's names, in its layouts, matrices in `qtype` where their
/// rows fit its blocks; and how many matrices stay f32 because they do not.
fn tensors(s: &DecoderSpec, weights: &Weights, qtype: FileType) -> anyhow::Result<(Vec<(String, QTensor)>, usize)> {
    let llama = gguf_architecture(s) == "llama";
    let gemma = s.gemma.is_some();
    let block = qtype.ggml().block_size();
    let mut kept_f32 = 0;
    let mut tensors = Vec::new();
    for (hf, shape) in &hf_tensor_names(s) {
        let mut t = weights.get(hf, shape, "config.json")?;
        if llama && (hf.ends_with("q_proj.weight") || hf.ends_with("q_proj.bias")) {
            t = permute_for_pairs(&t, s.num_heads)?;
        } else if llama && (hf.ends_with("k_proj.weight") || hf.ends_with("k_proj.bias")) {
            t = permute_for_pairs(&t, s.num_kv_heads)?;
        }
        if s.gpt.is_some() && hf.contains("query_key_value.") {
            // Back to llama.cpp's order: all queries, all keys, all values.
            let grouped = falcon_grouped_rows(s.num_heads, s.num_kv_heads, s.head_dim);
            let mut contiguous = vec![0u32; grouped.len()];
            for (i, &r) in grouped.iter().enumerate() {
                contiguous[r] = i as u32;
            }
            t = t.index_select(&Tensor::new(contiguous, &Device::Cpu)?, 0)?;
        }
        if gemma && hf.ends_with("norm.weight") {
            // llama.cpp's convention: Gemma's norms stored with their 1 added.
            t = t.affine(1.0, 1.0)?;
        }
        let name = gguf_name(hf, gemma).ok_or_else(|| anyhow::anyhow!("no GGUF name for {hf}"))?;
        let q = if shape.len() == 2 && shape[1] % block == 0 {
            QTensor::quantize(&t, qtype.ggml())?
        } else {
            if shape.len() == 2 {
                kept_f32 += 1;
            }
            QTensor::quantize(&t, GgmlDType::F32)?
        };
        tensors.push((name, q));
    }
    if let RopeScaling::Llama3 { .. } = s.rope.scaling {
        use crate::model::network::decoder::inv_freq;
        let plain = inv_freq(&Rope { theta: s.rope.theta, scaling: RopeScaling::None }, s.head_dim);
        let scaled = inv_freq(&s.rope, s.head_dim);
        let divisors: Vec<f32> = plain.iter().zip(&scaled).map(|(p, q)| p / q).collect();
        let n = divisors.len();
        tensors.push((
            "rope_freqs.weight".into(),
            QTensor::quantize(&Tensor::from_vec(divisors, n, &Device::Cpu)?, GgmlDType::F32)?,
        ));
    }
    Ok((tensors, kept_f32))
}

/// The file's metadata: llama.cpp's keys for `s`, and the keys selfspec reads where llama.cpp
/// assumes what this model changes.
fn metadata(s: &DecoderSpec, dir: &Path, qtype: FileType) -> anyhow::Result<Vec<(String, Value)>> {
    let gguf_arch = gguf_architecture(s);
    let u32v = |n: usize| Value::U32(n as u32);
    let mut metadata: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(gguf_arch.into())),
        (
            "general.name".into(),
            Value::String(dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()),
        ),
        ("general.file_type".into(), Value::U32(qtype.llama_cpp_id())),
        (format!("{gguf_arch}.context_length"), u32v(s.max_position_embeddings)),
        (format!("{gguf_arch}.embedding_length"), u32v(s.hidden_size)),
        (format!("{gguf_arch}.feed_forward_length"), u32v(s.intermediate_size)),
        (format!("{gguf_arch}.block_count"), u32v(s.num_layers)),
        (format!("{gguf_arch}.attention.head_count"), u32v(s.num_heads)),
        (format!("{gguf_arch}.attention.head_count_kv"), u32v(s.num_kv_heads)),
        (format!("{gguf_arch}.attention.key_length"), u32v(s.head_dim)),
        (format!("{gguf_arch}.attention.value_length"), u32v(s.head_dim)),
        (
            match s.gpt {
                Some(_) => format!("{gguf_arch}.attention.layer_norm_epsilon"),
                None => format!("{gguf_arch}.attention.layer_norm_rms_epsilon"),
            },
            Value::F32(s.rms_norm_eps as f32),
        ),
        (format!("{gguf_arch}.rope.freq_base"), Value::F32(s.rope.theta as f32)),
        (format!("{gguf_arch}.rope.dimension_count"), u32v(s.head_dim)),
        (format!("{gguf_arch}.vocab_size"), u32v(s.vocab_size)),
    ];
    if let RopeScaling::Linear { factor } = s.rope.scaling {
        metadata.push((format!("{gguf_arch}.rope.scaling.type"), Value::String("linear".into())));
        metadata.push((format!("{gguf_arch}.rope.scaling.factor"), Value::F32(factor as f32)));
    }
    if let Some(window) = s.sliding_window {
        metadata.push((format!("{gguf_arch}.attention.sliding_window"), u32v(window)));
    }
    if let Some(g) = &s.gpt {
        if let Some(Alibi::Mpt { max_bias }) = g.alibi {
            metadata.push((format!("{gguf_arch}.attention.max_alibi_bias"), Value::F32(max_bias as f32)));
        }
        if let Some(clip) = g.clip_qkv {
            metadata.push((format!("{gguf_arch}.attention.clamp_kqv"), Value::F32(clip as f32)));
        }
    }
    if let Some(g) = &s.gemma {
        // What llama.cpp assumes for Gemma 3 is left out; what differs goes under its keys for
        // other architectures (`rope.freq_base_swa`, `attention.scale`), which selfspec reads.
        let every_sixth: Vec<bool> = (0..s.num_layers).map(|i| (i + 1) % 6 != 0).collect();
        if s.sliding_layers != every_sixth {
            let flags = s.sliding_layers.iter().map(|&b| Value::Bool(b)).collect();
            metadata.push((format!("{gguf_arch}.attention.sliding_window_pattern"), Value::Array(flags)));
        }
        if g.local_rope.scaling != RopeScaling::None {
            anyhow::bail!("{}: rope scaling on Gemma's sliding layers has no GGUF key", dir.display());
        }
        if g.local_rope.theta != 10_000.0 {
            metadata.push((format!("{gguf_arch}.rope.freq_base_swa"), Value::F32(g.local_rope.theta as f32)));
        }
        if (g.attention_scale - (s.head_dim as f64).powf(-0.5)).abs() > 1e-12 {
            metadata.push((format!("{gguf_arch}.attention.scale"), Value::F32(g.attention_scale as f32)));
        }
        if let Some(cap) = g.final_logit_softcapping {
            metadata.push((format!("{gguf_arch}.final_logit_softcapping"), Value::F32(cap as f32)));
        }
    }
    if let Some(&eos) = s.eos_token_ids.first() {
        metadata.push(("tokenizer.ggml.eos_token_id".into(), Value::U32(eos)));
    }
    if let Some(bos) = s.bos_token_id {
        metadata.push(("tokenizer.ggml.bos_token_id".into(), Value::U32(bos)));
    }
    Ok(metadata)
}

/// Writes the file beside `out` and renames it into place once it is whole and on disk.
fn write_file(out: &Path, metadata: &[(String, Value)], tensors: &[(String, QTensor)]) -> anyhow::Result<()> {
    let tmp = out.with_extension("gguf.tmp");
    {
        let mut w =
            BufWriter::new(File::create(&tmp).map_err(|e| anyhow::anyhow!("cannot write {}: {e}", tmp.display()))?);
        let meta_refs: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
        gguf_file::write(&mut w, &meta_refs, &tensor_refs)?;
        use std::io::Write;
        w.flush()?;
        w.get_ref().sync_all()?;
    }
    std::fs::rename(&tmp, out)?;
    Ok(())
}
