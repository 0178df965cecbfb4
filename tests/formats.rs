//! Prompt formats: a model with a chat template trains and evaluates in it (auto), its examples
//! carry the loss on the assistant's turn only, and a run records the format it used.

mod common;

use std::path::{Path, PathBuf};

use selfspec::prompts::PromptFormat;
use selfspec::train::data::{encode, Example};

use common::root;

/// The writer fixture with a ChatML chat template beside it.
fn chat_model(dir: &Path) -> PathBuf {
    let model = dir.join("writer-chat");
    std::fs::create_dir_all(&model).unwrap();
    for entry in std::fs::read_dir(root().join("tests/fixtures/models/writer")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, model.join(path.file_name().unwrap())).unwrap();
    }
    std::fs::write(
        model.join("chat_template.jinja"),
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}\
         {% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
    )
    .unwrap();
    model
}

#[test]
fn chat_examples_carry_the_loss_on_the_assistant_turn_only() {
    let dir = tempfile::tempdir().unwrap();
    let tokenizer = selfspec::model::Tokenizer::load(&chat_model(dir.path())).unwrap();
    let e = Example {
        instruction: "Name the organ.".into(),
        input: "It makes bile.".into(),
        output: "The liver.".into(),
        task: None,
    };
    let enc = encode(&tokenizer, None, &e, 1024, PromptFormat::Chat).unwrap();
    let masked = enc.labels.iter().take_while(|&&l| l == -100).count();
    assert!(masked > 0 && masked < enc.ids.len());
    assert!(enc.labels[masked..].iter().all(|&l| l >= 0));
    let prompt = tokenizer.decode(&enc.ids[..masked]).unwrap();
    assert!(
        prompt.contains("user\nName the organ.\n\nIt makes bile.") && prompt.ends_with("assistant\n"),
        "{prompt:?}"
    );
    let answer = tokenizer.decode(&enc.ids[masked..]).unwrap();
    assert!(answer.starts_with("The liver.") && answer.contains("<|im_end|>"), "{answer:?}");
    // Plain keeps the Alpaca template.
    let plain = encode(&tokenizer, None, &e, 1024, PromptFormat::Plain).unwrap();
    assert!(tokenizer.decode(&plain.ids).unwrap().starts_with("Below is an instruction"));
}

#[test]
fn a_model_with_a_chat_template_trains_and_evaluates_in_it() {
    let dir = tempfile::tempdir().unwrap();
    let model = chat_model(dir.path());
    let data = dir.path().join("alpaca.jsonl");
    let lines: Vec<String> = (0..4)
        .map(|i| serde_json::json!({"instruction": format!("Classify headline {i}."), "input": "Shares jump", "output": "positive"}).to_string())
        .collect();
    std::fs::write(&data, lines.join("\n") + "\n").unwrap();
    let cfg = dir.path().join("t.yaml");
    std::fs::write(
        &cfg,
        "r: 4\nmax_steps: 2\nper_device_train_batch_size: 2\ngradient_accumulation_steps: 1\nwarmup_steps: 0\n",
    )
    .unwrap();
    let run = dir.path().join("train");
    let out = common::selfspec()
        .args(["train", "--model"])
        .arg(&model)
        .arg("--data")
        .arg(&data)
        .arg("--run")
        .arg(&run)
        .arg("--train-config")
        .arg(&cfg)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("examples written in the model's chat template"), "{stderr}");
    assert!(std::fs::read_to_string(run.join("config.yaml")).unwrap().contains("prompt_format: chat"));
    let eval = dir.path().join("eval");
    let out = common::selfspec()
        .args(["eval", "--model"])
        .arg(&model)
        .arg("--adapter")
        .arg(run.join("adapter"))
        .arg("--data")
        .arg(root().join("sample-seeds/eval/finance"))
        .args(["--datasets", "fin-sentiment", "--shots", "0,1", "--run"])
        .arg(&eval)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(std::fs::read_to_string(eval.join("config.yaml")).unwrap().contains("prompt_format: chat"));
    assert!(eval.join("report.json").exists());
    // Asked for plain, it is plain.
    let plain = dir.path().join("eval-plain");
    let out = common::selfspec()
        .args(["eval", "--model"])
        .arg(&model)
        .arg("--data")
        .arg(root().join("sample-seeds/eval/finance"))
        .args(["--datasets", "fin-sentiment", "--shots", "0", "--prompt-format", "plain", "--run"])
        .arg(&plain)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(std::fs::read_to_string(plain.join("config.yaml")).unwrap().contains("prompt_format: plain"));
}
