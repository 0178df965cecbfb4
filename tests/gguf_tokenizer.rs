//! Tokenizers built from GGUF metadata against transformers' own GGUF conversion
//! (`AutoTokenizer.from_pretrained(dir, gguf_file=...)`): scripts/make_gguf_tokenizer_fixtures.py
//! wrote the files with the gguf package (a byte-level BPE with the smollm, llama-bpe and qwen2
//! pre-tokenizers; a SentencePiece BPE with scores and no merges; the same shaped as Gemma's file,
//! arch gemma3, for transformers' GemmaTokenizer rebuild) and recorded transformers' ids
//! for 1,505 strings each (code, digits, Unicode, whitespace runs, special tokens inside text),
//! its decoded text, and its `apply_chat_template` renderings. A lone .gguf (no tokenizer.json
//! beside it) must also load as a model and give transformers' greedy tokens.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use candle_core::Device;
use selfspec::decode::{self, Request};
use selfspec::model::gguf::{self, Mode};
use selfspec::model::text::chat::Message;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gguf-tokenizer")
}

fn expected() -> serde_json::Map<String, serde_json::Value> {
    let text = std::fs::read_to_string(dir().join("expected.json")).unwrap();
    serde_json::from_str::<serde_json::Value>(&text).unwrap().as_object().unwrap().clone()
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

#[test]
fn ids_equal_transformers_gguf_tokenizers() {
    let expected = expected();
    assert_eq!(expected.len(), 6);
    for (file, e) in &expected {
        let tok = selfspec::model::load_tokenizer(dir().join(file).to_str().unwrap()).unwrap();
        let cases = e["cases"].as_array().unwrap();
        assert!(cases.len() >= 200, "{file}");
        let mut wrong = Vec::new();
        for c in cases {
            let text = c["text"].as_str().unwrap();
            let got = tok.encode(text).unwrap();
            if got != ids(&c["ids"]) {
                wrong.push(format!("{text:?}: {got:?} vs {:?}", ids(&c["ids"])));
            }
        }
        assert!(wrong.is_empty(), "{file}: {} of {} differ, first: {}", wrong.len(), cases.len(), wrong[0]);
        for d in e["decode"].as_array().unwrap() {
            assert_eq!(tok.decode(&ids(&d["ids"])).unwrap(), d["text"].as_str().unwrap(), "{file} decode");
        }
    }
}

#[test]
fn chat_templates_render_as_transformers_renders_them() {
    let mut seen = 0;
    for (file, e) in &expected() {
        let tok = selfspec::model::load_tokenizer(dir().join(file).to_str().unwrap()).unwrap();
        for chat in e["chats"].as_array().unwrap() {
            let messages: Vec<Message> = serde_json::from_value(chat["messages"].clone()).unwrap();
            let add = chat["add_generation_prompt"].as_bool().unwrap();
            let got = tok.apply_chat_template(&messages, add);
            match chat["text"].as_str() {
                Some(text) => assert_eq!(got.unwrap(), text, "{file}: {messages:?}"),
                // raise_exception in the template: an error that carries its message.
                None => {
                    let message = chat["text"]["error"].as_str().unwrap();
                    let err = got.unwrap_err().to_string();
                    assert!(err.contains(message), "{file}: {err}");
                }
            }
            seen += 1;
        }
    }
    assert_eq!(seen, 30);
}

#[test]
fn a_lone_gguf_file_loads_and_matches_transformers() {
    // The tiny llama fixture's Q8_0 weights with the tokenizer in metadata, nothing beside it.
    let lone = dir().join("lone/model.gguf");
    assert!(!lone.with_file_name("tokenizer.json").exists());
    let record: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gguf/llama/expected.json"))
            .unwrap(),
    )
    .unwrap();
    let cases = record["q8_0-gguf-package.gguf"].as_array().unwrap();
    for mode in [Mode::Quantized, Mode::Dequantized] {
        let model = gguf::load(&lone, &Device::Cpu, mode).unwrap();
        for c in cases {
            let prompt_ids = model.tokenizer.encode(c["prompt"].as_str().unwrap()).unwrap();
            assert_eq!(prompt_ids, ids(&c["prompt_ids"]));
            let want = ids(&c["greedy_ids"]);
            let (out, _) = decode::generate(
                &model,
                &[Request::new(prompt_ids, want.len())],
                &Default::default(),
                &mut |_| {},
                &AtomicBool::new(false),
            )
            .unwrap();
            assert_eq!(out[0].ids, want, "{mode:?} {:?}", c["prompt"]);
        }
    }
}

#[test]
fn broken_tokenizer_metadata_names_the_key() {
    use candle_core::quantized::gguf_file::Value;
    let mut md = std::collections::HashMap::new();
    md.insert("tokenizer.ggml.model".to_string(), Value::String("gpt2".into()));
    let file = Path::new("x.gguf");
    let err = |md: &std::collections::HashMap<String, Value>| {
        selfspec::model::text::gguf_tokenizer::from_metadata(md, file).err().map(|e| e.to_string()).unwrap_or_default()
    };
    assert!(err(&md).contains("tokenizer.ggml.tokens is missing"), "{}", err(&md));
    md.insert("tokenizer.ggml.tokens".into(), Value::Array(vec![Value::String("a".into())]));
    assert!(err(&md).contains("tokenizer.ggml.merges is missing"), "{}", err(&md));
    md.insert("tokenizer.ggml.merges".into(), Value::Array(vec![]));
    md.insert("tokenizer.ggml.bos_token_id".into(), Value::U32(7));
    assert!(err(&md).contains("tokenizer.ggml.bos_token_id is 7, outside the 1 tokens"), "{}", err(&md));
    md.remove("tokenizer.ggml.bos_token_id");
    md.insert("tokenizer.ggml.model".into(), Value::String("rwkv".into()));
    assert!(err(&md).contains("tokenizer.json beside"), "{}", err(&md));
}
