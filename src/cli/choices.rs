//! The clap enums that mirror the engine's, variant for variant (the engine does not know clap).

use clap::ValueEnum;

/// A clap enum mirroring an engine enum, variant for variant, with the conversion.
macro_rules! choice {
    ($(#[$meta:meta])* $cli:ident => $engine:ty { $($(#[$vmeta:meta])* $v:ident),* $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
        pub enum $cli { $($(#[$vmeta])* $v),* }

        impl From<$cli> for $engine {
            fn from(c: $cli) -> $engine {
                match c { $($cli::$v => <$engine>::$v),* }
            }
        }
    };
}

choice!(#[derive(Default)] Device => selfspec::model::DeviceChoice { #[default] Auto, Cpu, Cuda });
choice!(#[derive(Default)] DType => selfspec::model::DTypeChoice {
    /// bf16 on a GPU, f32 on the CPU.
    #[default]
    Auto,
    F32,
    Bf16,
    F16,
});
choice!(Combine => selfspec::model::adapters::combine::Method { Linear, Cat, Svd });
choice!(Mode => selfspec::generate::pipeline::Mode {
    /// No documents: the base model answers from what it knows.
    None,
    /// The best BM25 document in the prompt.
    Top1,
    /// The top-k documents, one prompt each, next-token distributions mixed by retriever weight.
    Marginal,
});
choice!(QuantType => selfspec::model::gguf::QuantType {
    #[value(name = "q4_0")]
    Q4_0,
    #[value(name = "q4k")]
    Q4k,
    #[value(name = "q8_0")]
    Q8_0,
});
choice!(FileType => selfspec::model::gguf::FileType {
    #[value(name = "f32")]
    F32,
    #[value(name = "f16")]
    F16,
    #[value(name = "q8_0")]
    Q8_0,
    #[value(name = "q4k")]
    Q4k,
    #[value(name = "q4_0")]
    Q4_0,
});
choice!(Format => selfspec::seeds::interchange::Format {
    /// One JSON object a line: {instruction, input?, output} (Alpaca, BoX); optional id, task, tags.
    AlpacaJsonl,
    /// self-instruct's seed_tasks.jsonl: {id, name, instruction, instances: [{input, output}], is_classification}.
    SelfInstruct,
    /// InstructLab qna.yaml: seed_examples of {context?, question, answer}, or (version 3)
    /// {context, questions_and_answers: [{question, answer}]}.
    Instructlab,
});
choice!(PromptFormat => selfspec::prompts::PromptFormat {
    /// Chat when the model has a chat template, else plain.
    Auto,
    /// The paper's text prompts (Alpaca for training and evaluation).
    Plain,
    /// The model's chat template.
    Chat,
});
choice!(Decision => selfspec::generate::command::Decision { Accept, Reject, Pending });
