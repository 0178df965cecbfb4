//! The tokenizer a GGUF file describes in its metadata, built as transformers' GGUF conversion
//! builds it (`AutoTokenizer.from_pretrained(dir, gguf_file=...)`), so a .gguf alone tokenizes
//! exactly as it does in Python.
//!
//! llama.cpp's converter stores `tokenizer.ggml.model` (`gpt2`: byte-level BPE; `llama`:
//! SentencePiece BPE with byte fallback), the tokens, their types (1 normal, 2 unknown,
//! 3 control, 4 user-defined, 6 byte), merges or scores, the special ids, `add_bos_token` /
//! `add_eos_token`, `tokenizer.ggml.pre` (which split the merges were learned over) and the chat
//! template. This module turns them into a tokenizer.json for the `tokenizers` crate:
//! - `gpt2`: tokens respelled in GPT-2's byte alphabet where needed; the file's merges; the
//!   pre-tokenizer's split regex for the families that have one (llama-bpe, qwen2, …), else
//!   GPT-2's own; byte-level decoding.
//! - `llama`: the tokens as spelled; merges from the file or, as transformers does, recovered
//!   from the scores (every split of a token into two tokens, best score first); Metaspace with
//!   a prefix on the first word; byte fallback.
//! - `llama` in a Gemma file (`general.architecture` gemma, gemma2, gemma3): transformers'
//!   GemmaTokenizer instead — tokens of spaces only respelled with `▁` (the file stores real
//!   spaces), merges recovered with the tokens' order as their rank (Gemma's scores do not follow
//!   its merge order), spaces turned into `▁` by a normalizer, no prefix space; user-defined
//!   tokens whose spelling changed are not added (transformers looks them up by the old one).
//! - control tokens (and the bos/eos/unk/pad tokens) are special added tokens, user-defined
//!   ones plain added tokens; a template adds bos/eos as the flags say (`llama` adds bos unless
//!   the file says otherwise).

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use serde_json::{json, Value as Json};

use crate::model::error::ModelError;

/// GPT-2's split (the regex its ByteLevel pre-tokenizer uses) needs no entry: it is the default.
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_SPLIT: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN35_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const TEKKEN_SPLIT: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const GPT4O_SPLIT: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The split regex of a `tokenizer.ggml.pre` value, where it is not GPT-2's.
fn split_regex(pre: &str) -> Option<&'static str> {
    Some(match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0" | "lfm2"
        | "jina-v5-nano" | "dbrx" | "smaug-bpe" => LLAMA3_SPLIT,
        "tekken" => TEKKEN_SPLIT,
        "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "megrez" => QWEN2_SPLIT,
        "qwen35" => QWEN35_SPLIT,
        "gpt-4o" | "llama4" | "kanana2" | "talkie" | "minimax-m2" => GPT4O_SPLIT,
        _ => return None,
    })
}

/// GPT-2's map from bytes to printable characters (the byte-level alphabet).
pub fn bytes_to_unicode() -> [char; 256] {
    let mut map = ['\0'; 256];
    let mut extra = 0u32;
    for b in 0..256u32 {
        let printable = (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b);
        map[b as usize] = if printable {
            char::from_u32(b).unwrap_or('\0')
        } else {
            extra += 1;
            char::from_u32(255 + extra).unwrap_or('\0')
        };
    }
    map
}

/// What the file says about its tokenizer, read out of the metadata.
pub struct GgufTokenizer {
    pub json: Json,
    pub chat_template: Option<String>,
    /// bos, eos, unk and pad token text, for chat templates.
    pub special: Vec<(&'static str, String)>,
}

struct Meta<'a> {
    md: &'a HashMap<String, Value>,
    file: &'a Path,
}

impl Meta<'_> {
    fn err(&self, key: &str, message: impl Into<String>) -> ModelError {
        ModelError::Config { file: self.file.to_path_buf(), key: key.into(), message: message.into() }
    }

    fn string(&self, key: &str) -> Result<Option<String>, ModelError> {
        match self.md.get(key) {
            None => Ok(None),
            Some(v) => v.to_string().map(|s| Some(s.clone())).map_err(|_| self.err(key, "must be a string")),
        }
    }

    fn array(&self, key: &str) -> Result<Option<&Vec<Value>>, ModelError> {
        match self.md.get(key) {
            None => Ok(None),
            Some(v) => v.to_vec().map(Some).map_err(|_| self.err(key, "must be an array")),
        }
    }

    fn strings(&self, key: &str) -> Result<Option<Vec<String>>, ModelError> {
        let Some(items) = self.array(key)? else { return Ok(None) };
        items
            .iter()
            .enumerate()
            .map(|(i, v)| v.to_string().cloned().map_err(|_| self.err(key, format!("item {i} is not a string"))))
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    fn id(&self, key: &str, n: usize) -> Result<Option<usize>, ModelError> {
        let Some(v) = self.md.get(key) else { return Ok(None) };
        let id = v
            .to_u32()
            .map(|x| x as i64)
            .or_else(|_| v.to_i32().map(i64::from))
            .or_else(|_| v.to_u64().map(|x| x as i64))
            .map_err(|_| self.err(key, format!("must be a token id, found {v:?}")))?;
        if id < 0 || id as usize >= n {
            return Err(self.err(key, format!("is {id}, outside the {n} tokens")));
        }
        Ok(Some(id as usize))
    }

    fn flag(&self, key: &str) -> Result<Option<bool>, ModelError> {
        match self.md.get(key) {
            None => Ok(None),
            Some(v) => v.to_bool().map(Some).map_err(|_| self.err(key, "must be true or false")),
        }
    }
}

/// The tokenizer of a GGUF file's metadata, or `None` when it carries none
/// (`tokenizer.ggml.model` absent).
pub fn from_metadata(md: &HashMap<String, Value>, file: &Path) -> Result<Option<GgufTokenizer>, ModelError> {
    let m = Meta { md, file };
    let Some(model) = m.string("tokenizer.ggml.model")? else { return Ok(None) };
    let tokens = m
        .strings("tokenizer.ggml.tokens")?
        .ok_or_else(|| m.err("tokenizer.ggml.tokens", "is missing, but tokenizer.ggml.model is set"))?;
    let n = tokens.len();
    let types = token_types(&m, n)?;
    let merges = m.strings("tokenizer.ggml.merges")?;
    let ids = [
        ("bos_token", m.id("tokenizer.ggml.bos_token_id", n)?),
        ("eos_token", m.id("tokenizer.ggml.eos_token_id", n)?),
        ("unk_token", m.id("tokenizer.ggml.unknown_token_id", n)?),
        ("pad_token", m.id("tokenizer.ggml.padding_token_id", n)?),
    ];
    let special: Vec<(&'static str, String)> =
        ids.iter().filter_map(|(name, id)| id.map(|i| (*name, tokens[i].clone()))).collect();
    let special_ids: Vec<usize> = ids.iter().filter_map(|(_, id)| *id).collect();
    let add_bos = m.flag("tokenizer.ggml.add_bos_token")?.unwrap_or(model == "llama");
    let add_eos = m.flag("tokenizer.ggml.add_eos_token")?.unwrap_or(false);
    let chat_template = m.string("tokenizer.chat_template")?;
    let arch = m.string("general.architecture")?.unwrap_or_default();
    let gemma = model == "llama" && matches!(arch.as_str(), "gemma" | "gemma2" | "gemma3");
    let parts = match model.as_str() {
        "gpt2" => gpt2_parts(&m, &tokens, merges)?,
        "llama" if gemma => gemma_parts(&tokens, merges, ids[2].1),
        "llama" => llama_parts(&m, &tokens, merges)?,
        other => {
            return Err(m.err(
                "tokenizer.ggml.model",
                format!("is \"{other}\"; selfspec builds gpt2 (byte-level BPE) and llama (SentencePiece) tokenizers; put the model's tokenizer.json beside the file"),
            ))
        }
    };
    let added = added_tokens(&tokens, &types, &parts, &special_ids);
    let bos = ids[0].1.filter(|_| add_bos);
    let eos = ids[1].1.filter(|_| add_eos);
    let json = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": parts.normalizer,
        "pre_tokenizer": parts.pre_tokenizer,
        "post_processor": post_processor(&parts.vocab_tokens, bos, eos),
        "decoder": parts.decoder,
        "model": parts.model,
    });
    Ok(Some(GgufTokenizer { json, chat_template, special }))
}

/// Each token's type (`tokenizer.ggml.token_type`; normal where the file has none).
fn token_types(m: &Meta, n: usize) -> Result<Vec<i32>, ModelError> {
    let Some(items) = m.array("tokenizer.ggml.token_type")? else { return Ok(vec![1; n]) };
    let types: Vec<i32> =
        items.iter().map(|v| v.to_i32().or_else(|_| v.to_u32().map(|x| x as i32)).unwrap_or(1)).collect();
    if types.len() != n {
        return Err(m.err("tokenizer.ggml.token_type", format!("has {} entries for {n} tokens", types.len())));
    }
    Ok(types)
}

/// The parts of a tokenizer.json that differ between the kinds of tokenizer.
struct Parts {
    /// The tokens as the vocabulary spells them (respelled where the kind needs it).
    vocab_tokens: Vec<String>,
    model: Json,
    normalizer: Json,
    pre_tokenizer: Json,
    decoder: Json,
    /// Byte-level BPE: tokens are spelled in GPT-2's byte alphabet.
    byte_level: bool,
}

/// The file's merges as tokenizer.json pairs.
fn merge_pairs(merges: &[String]) -> Vec<Json> {
    merges.iter().map(|s| Json::from(s.split(' ').collect::<Vec<_>>())).collect()
}

/// `gpt2`: byte-level BPE with the file's merges and its family's split.
fn gpt2_parts(m: &Meta, tokens: &[String], merges: Option<Vec<String>>) -> Result<Parts, ModelError> {
    let alphabet = bytes_to_unicode();
    let in_alphabet = |t: &str| t.chars().all(|c| alphabet.contains(&c));
    let spelled: Vec<String> = tokens
        .iter()
        .map(|t| if in_alphabet(t) { t.clone() } else { t.bytes().map(|b| alphabet[b as usize]).collect() })
        .collect();
    let merges = merges.ok_or_else(|| {
        m.err("tokenizer.ggml.merges", "is missing; a gpt2 (byte-level BPE) tokenizer needs its merges")
    })?;
    let pre = m.string("tokenizer.ggml.pre")?.unwrap_or_default();
    let pre_tokenizer = match split_regex(&pre) {
        Some(regex) => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false},
        ]}),
        None => json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}),
    };
    let model = json!({"type": "BPE", "dropout": null, "unk_token": null,
        "continuing_subword_prefix": "", "end_of_word_suffix": "", "fuse_unk": false,
        "byte_fallback": false, "ignore_merges": false, "vocab": vocab_json(&spelled), "merges": merge_pairs(&merges)});
    let decoder = json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true});
    Ok(Parts { vocab_tokens: spelled, model, normalizer: Json::Null, pre_tokenizer, decoder, byte_level: true })
}

/// `llama` in a Gemma file: transformers' GemmaTokenizer (see the module's notes).
fn gemma_parts(tokens: &[String], merges: Option<Vec<String>>, unk: Option<usize>) -> Parts {
    let respelled: Vec<String> =
        tokens
            .iter()
            .map(|t| {
                if t.contains(' ') && t.chars().all(py_space) {
                    "\u{2581}".repeat(t.chars().count())
                } else {
                    t.clone()
                }
            })
            .collect();
    let pairs = match merges {
        Some(merges) => merge_pairs(&merges),
        None => {
            let ranks: Vec<f32> = (0..tokens.len()).map(|i| -(i as f32)).collect();
            merges_from_scores(&respelled, &ranks)
        }
    };
    let unk = unk.map(|i| Json::from(respelled[i].clone())).unwrap_or(Json::Null);
    let model = json!({"type": "BPE", "dropout": null, "unk_token": unk,
        "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": true,
        "byte_fallback": true, "ignore_merges": false, "vocab": vocab_json(&respelled), "merges": pairs});
    let normalizer = json!({"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"});
    let pre_tokenizer = json!({"type": "Split", "pattern": {"String": " "},
        "behavior": "MergedWithPrevious", "invert": false});
    let decoder = json!({"type": "Sequence", "decoders": [
        {"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "},
        {"type": "ByteFallback"}, {"type": "Fuse"},
    ]});
    Parts { vocab_tokens: respelled, model, normalizer, pre_tokenizer, decoder, byte_level: false }
}

/// `llama`: SentencePiece BPE, merges from the file or recovered from the scores.
fn llama_parts(m: &Meta, tokens: &[String], merges: Option<Vec<String>>) -> Result<Parts, ModelError> {
    let n = tokens.len();
    let pairs = match merges {
        Some(merges) => merge_pairs(&merges),
        None => {
            let scores = m.array("tokenizer.ggml.scores")?.ok_or_else(|| {
                m.err("tokenizer.ggml.scores", "is missing; a llama tokenizer needs merges or scores")
            })?;
            let scores: Vec<f32> = scores.iter().map(|v| v.to_f32().unwrap_or(0.0)).collect();
            if scores.len() != n {
                return Err(m.err("tokenizer.ggml.scores", format!("has {} entries for {n} tokens", scores.len())));
            }
            merges_from_scores(tokens, &scores)
        }
    };
    let model = json!({"type": "BPE", "dropout": null, "unk_token": null,
        "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": true,
        "byte_fallback": true, "ignore_merges": false, "vocab": vocab_json(tokens), "merges": pairs});
    let pre_tokenizer =
        json!({"type": "Metaspace", "replacement": "\u{2581}", "prepend_scheme": "first", "split": false});
    let decoder = json!({"type": "Sequence", "decoders": [
        {"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "},
        {"type": "ByteFallback"}, {"type": "Fuse"},
        {"type": "Strip", "content": " ", "start": 1, "stop": 0},
    ]});
    Ok(Parts {
        vocab_tokens: tokens.to_vec(),
        model,
        normalizer: Json::Null,
        pre_tokenizer,
        decoder,
        byte_level: false,
    })
}

/// The added tokens. Control tokens are special; in a byte-level vocabulary one spelled outside
/// the alphabet is a converter's mislabel and is left out (transformers does the same). The
/// bos/eos/unk/pad tokens are special whatever their type; user-defined tokens are matched
/// whole, not special.
fn added_tokens(tokens: &[String], types: &[i32], parts: &Parts, special_ids: &[usize]) -> Vec<Json> {
    let alphabet = bytes_to_unicode();
    let mut added = Vec::new();
    for (id, (token, &kind)) in tokens.iter().zip(types).enumerate() {
        let spelled_ok = !parts.byte_level || token.chars().all(|c| alphabet.contains(&c));
        let is_special = (kind == 3 && spelled_ok) || special_ids.contains(&id);
        // transformers adds a user-defined token only under its file spelling, which a respelled
        // Gemma token of spaces no longer has.
        let user_defined = kind == 4 && parts.vocab_tokens[id] == *token;
        if is_special || user_defined {
            added.push(json!({"id": id, "content": parts.vocab_tokens[id], "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": is_special}));
        }
    }
    added
}

/// The template that adds the bos and eos tokens (`bos`, `eos`: their ids where the file asks
/// for them) around one sequence or a pair.
fn post_processor(vocab_tokens: &[String], bos: Option<usize>, eos: Option<usize>) -> Json {
    let template_piece = |name: &str, type_id: u32| json!({"SpecialToken": {"id": name, "type_id": type_id}});
    let bos_text = bos.map(|i| vocab_tokens[i].clone());
    let eos_text = eos.map(|i| vocab_tokens[i].clone());
    let mut single = Vec::new();
    let mut pair = Vec::new();
    for (type_id, seq) in [(0u32, "A"), (1, "B")] {
        let mut part = Vec::new();
        if let Some(b) = &bos_text {
            part.push(template_piece(b, type_id));
        }
        part.push(json!({"Sequence": {"id": seq, "type_id": type_id}}));
        if let Some(e) = &eos_text {
            part.push(template_piece(e, type_id));
        }
        if type_id == 0 {
            single.extend(part.iter().cloned());
        }
        pair.extend(part);
    }
    let mut specials = serde_json::Map::new();
    for (token, id) in [(bos_text, bos), (eos_text, eos)] {
        if let (Some(t), Some(i)) = (token, id) {
            specials.insert(t.clone(), json!({"id": t, "ids": [i], "tokens": [t]}));
        }
    }
    json!({"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": specials})
}

/// Python's `str.isspace` for one character: Unicode white space and the four separators
/// U+001C–U+001F that Rust's `char::is_whitespace` leaves out.
fn py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// token → id, the last id winning for a token listed twice (as a Python dict does).
fn vocab_json(tokens: &[String]) -> Json {
    let mut map = serde_json::Map::new();
    for (i, t) in tokens.iter().enumerate() {
        map.insert(t.clone(), json!(i));
    }
    Json::Object(map)
}

/// A SentencePiece vocabulary's merges recovered from its scores, as transformers'
/// `generate_merges` recovers them: every split of a token into two tokens of the vocabulary
/// (for each token, its splits ordered by the two ids), then all of them ordered by the merged
/// token's score, the left part's length and the right part's length, highest first, ties in
/// vocabulary order.
fn merges_from_scores(tokens: &[String], scores: &[f32]) -> Vec<Json> {
    let mut vocab: HashMap<&str, usize> = HashMap::with_capacity(tokens.len());
    for (i, t) in tokens.iter().enumerate() {
        vocab.insert(t, i);
    }
    // dict(zip(tokens, scores)): first position, last score.
    let mut order: Vec<&str> = Vec::new();
    let mut score_of: HashMap<&str, f32> = HashMap::new();
    for (t, &s) in tokens.iter().zip(scores) {
        if score_of.insert(t, s).is_none() {
            order.push(t);
        }
    }
    let mut merges: Vec<(&str, &str, f32)> = Vec::new();
    for token in order {
        let score = score_of[token];
        let mut local: Vec<(&str, &str)> = Vec::new();
        for (at, _) in token.char_indices().skip(1) {
            let (l, r) = token.split_at(at);
            if vocab.contains_key(l) && vocab.contains_key(r) {
                local.push((l, r));
            }
        }
        local.sort_by_key(|(l, r)| (vocab[l], vocab[r]));
        merges.extend(local.into_iter().map(|(l, r)| (l, r, score)));
    }
    let key = |m: &(&str, &str, f32)| (m.2, m.0.chars().count(), m.1.chars().count());
    merges.sort_by(|a, b| {
        let (ka, kb) = (key(a), key(b));
        kb.0.partial_cmp(&ka.0).unwrap_or(std::cmp::Ordering::Equal).then(kb.1.cmp(&ka.1)).then(kb.2.cmp(&ka.2))
    });
    merges.into_iter().map(|(l, r, _)| json!([l, r])).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_byte_alphabet_is_gpt2s() {
        let a = bytes_to_unicode();
        assert_eq!(a[b' ' as usize], 'Ġ');
        assert_eq!(a[b'\n' as usize], 'Ċ');
        assert_eq!(a[b'A' as usize], 'A');
        assert_eq!(a[0xad], 'Ń');
    }

    #[test]
    fn merges_come_from_scores_best_first() {
        let tokens: Vec<String> = ["<unk>", "a", "b", "c", "ab", "abc", "bc"].iter().map(|s| s.to_string()).collect();
        let scores = [0.0, 0.0, 0.0, 0.0, -1.0, -2.0, -0.5];
        let merges = merges_from_scores(&tokens, &scores);
        // bc (-0.5), ab (-1), then abc's two splits ordered by ids: (a, bc) before (ab, c) —
        // but by length of the left part first: "ab"+"c" (2) before "a"+"bc" (1).
        assert_eq!(merges, vec![json!(["b", "c"]), json!(["a", "b"]), json!(["ab", "c"]), json!(["a", "bc"])]);
    }
}
