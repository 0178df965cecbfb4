#!/usr/bin/env python3
"""Small files in the published formats of the paper's benchmarks, for tests/import.rs.

Each file is written here from the formats' public descriptions (loader scripts and release
READMEs: the PubMedQA and ConvFinQA repositories, BLUE/BLURB preprocessing, bigbio and the Hub
datasets named in assets/benchmarks/); every record's text is made up for this project — no
dataset content is copied. Beside each input goes NAME.expected.jsonl: the evaluation lines
`selfspec eval import --preset NAME` must write, derived here from the preset's documented rules.
Parquet files are written by pyarrow with different codecs (snappy, the Hub's default; zstd;
gzip; lz4; none) so the reader's codecs are exercised.

    pip install pyarrow && python scripts/make_benchmark_fixtures.py
"""
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "benchmarks")


def line(name, task, instruction, inp, refs):
    o = {"dataset": name, "task": task, "instruction": instruction, "input": inp}
    if len(refs) == 1:
        o["output"] = refs[0]
    else:
        o["outputs"] = refs
    return o


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n")


def expected(name, rows):
    write_jsonl(os.path.join(OUT, f"{name}.expected.jsonl"), rows)


PUBMEDQA_INSTR = "Answer the research question about the abstract with yes, no or maybe."


def pubmedqa():
    data = {
        "900001": {"QUESTION": "Does drug A lower fasting glucose in adults?",
                   "CONTEXTS": ["Adults took drug A for twelve weeks.", "Fasting glucose fell by 12 percent."],
                   "LABELS": ["METHODS", "RESULTS"], "MESHES": ["Adult", "Glucose"], "YEAR": "2011",
                   "reasoning_required_pred": "yes", "reasoning_free_pred": "yes",
                   "final_decision": "yes", "LONG_ANSWER": "Drug A lowered fasting glucose."},
        "900002": {"QUESTION": "Is sleep length linked to recall in children?",
                   "CONTEXTS": ["Sleep was logged for a month."], "LABELS": ["METHODS"], "MESHES": ["Child"],
                   "YEAR": "2015", "reasoning_required_pred": "maybe", "reasoning_free_pred": "no",
                   "final_decision": "maybe", "LONG_ANSWER": "The link was unclear."},
    }
    with open(os.path.join(OUT, "pubmedqa.json"), "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1)
    rows = []
    for v in data.values():
        inp = "Context: " + " ".join(v["CONTEXTS"]) + "\nQuestion: " + v["QUESTION"]
        rows.append(line("pubmedqa", "qa", PUBMEDQA_INSTR, inp, [v["final_decision"]]))
    expected("pubmedqa", rows)


def pubmedqa_hf():
    recs = [
        {"pubid": 800001, "question": "Does a short walk after meals reduce glucose peaks?",
         "context": {"contexts": ["Twenty adults walked after lunch.", "Peaks were lower after the walk."],
                     "labels": ["METHODS", "RESULTS"], "meshes": ["Walking"]},
         "long_answer": "Walking lowered peaks.", "final_decision": "yes"},
        {"pubid": 800002, "question": "Does coffee intake change bone density in older women?",
         "context": {"contexts": ["Intake was recorded by diary."], "labels": ["METHODS"], "meshes": ["Coffee"]},
         "long_answer": "No change was seen.", "final_decision": "no"},
    ]
    schema = pa.schema([
        ("pubid", pa.int32()), ("question", pa.string()),
        ("context", pa.struct([("contexts", pa.list_(pa.string())), ("labels", pa.list_(pa.string())),
                               ("meshes", pa.list_(pa.string()))])),
        ("long_answer", pa.string()), ("final_decision", pa.string())])
    pq.write_table(pa.Table.from_pylist(recs, schema=schema), os.path.join(OUT, "pubmedqa-hf.parquet"),
                   compression="snappy")
    expected("pubmedqa-hf", [line("pubmedqa-hf", "qa", PUBMEDQA_INSTR,
                                  "Context: " + " ".join(r["context"]["contexts"]) + "\nQuestion: " + r["question"],
                                  [r["final_decision"]]) for r in recs])


def bioasq():
    qs = [
        {"id": "q1", "type": "yesno", "body": "Is enzyme X expressed in the liver?",
         "documents": ["http://www.ncbi.nlm.nih.gov/pubmed/1"],
         "snippets": [{"text": "Enzyme X was found in liver tissue.", "document": "d1", "offsetInBeginSection": 0,
                       "offsetInEndSection": 35, "beginSection": "abstract", "endSection": "abstract"}],
         "exact_answer": "yes", "ideal_answer": ["Yes, in the liver."]},
        {"id": "q2", "type": "factoid", "body": "Which gene is mutated in condition Y?",
         "snippets": [{"text": "Condition Y follows mutations in GENE1."}, {"text": "GENE1 is also called G-one."}],
         "exact_answer": [["GENE1", "G-one"]], "ideal_answer": ["GENE1."]},
        {"id": "q3", "type": "list", "body": "List the drugs used for Z.",
         "snippets": [{"text": "Drug P and drug Q treat Z."}], "exact_answer": [["drug P"], ["drug Q"]],
         "ideal_answer": ["P and Q."]},
        {"id": "q4", "type": "summary", "body": "What is W?", "snippets": [{"text": "W is a process."}],
         "ideal_answer": ["W is a process."]},
    ]
    with open(os.path.join(OUT, "bioasq.json"), "w", encoding="utf-8") as f:
        json.dump({"questions": qs}, f, indent=1)
    instr = "Answer the biomedical question using the snippets. Reply with yes or no, or with a short name."
    rows = []
    for q in qs[:2]:
        refs = [q["exact_answer"]] if isinstance(q["exact_answer"], str) else [s for g in q["exact_answer"] for s in g]
        rows.append(line("bioasq", "qa", instr,
                         "Snippets: " + " ".join(s["text"] for s in q["snippets"]) + "\nQuestion: " + q["body"], refs))
    expected("bioasq", rows)


def chemprot():
    recs = [("11.T1.T2", "@CHEMICAL$ strongly inhibited @GENE$ activity in cells .", "CPR:4"),
            ("11.T3.T4", "@CHEMICAL$ is a substrate of @GENE$ .", "CPR:9"),
            ("12.T1.T5", "@GENE$ levels were measured after @CHEMICAL$ was given .", "false")]
    with open(os.path.join(OUT, "chemprot.tsv"), "w", encoding="utf-8") as f:
        f.write("index\tsentence\tlabel\n")
        for r in recs:
            f.write("\t".join(r) + "\n")
    names = {"CPR:3": "upregulator", "CPR:4": "downregulator", "CPR:5": "agonist", "CPR:6": "antagonist",
             "CPR:9": "substrate", "false": "none"}
    instr = ("Classify the relation between @CHEMICAL$ and @GENE$ in the sentence as upregulator, downregulator, "
             "agonist, antagonist, substrate or none.")
    expected("chemprot", [line("chemprot", "re", instr, s, [names[l]]) for _, s, l in recs])


def ddi():
    recs = [("DDI-DrugBank.d1.s0.p0", "@DRUG$ raises the plasma level of @DRUG$ .", "DDI-mechanism"),
            ("DDI-DrugBank.d1.s1.p0", "Do not combine @DRUG$ with @DRUG$ .", "DDI-advise"),
            ("DDI-MedLine.d2.s0.p1", "@DRUG$ and @DRUG$ were both studied .", "DDI-false")]
    with open(os.path.join(OUT, "ddi.tsv"), "w", encoding="utf-8") as f:
        for r in recs:  # BLURB's files have no header line
            f.write("\t".join(r) + "\n")
    names = {"DDI-mechanism": "mechanism", "DDI-effect": "effect", "DDI-advise": "advice", "DDI-int": "int",
             "DDI-false": "none"}
    instr = ("Classify the interaction between the two drugs marked @DRUG$ in the sentence as mechanism, effect, "
             "advice, int or none.")
    expected("ddi", [line("ddi", "re", instr, s, [names[l]]) for _, s, l in recs])


HOC = ["evading growth suppressors", "tumor promoting inflammation", "enabling replicative immortality",
       "cellular energetics", "resisting cell death", "activating invasion and metastasis",
       "genomic instability and mutation", "none", "inducing angiogenesis", "sustaining proliferative signaling",
       "avoiding immune destruction"]


def hoc():
    recs = [{"document_id": "100_0", "text": "Tumour cells escaped apoptosis and invaded nearby tissue.", "label": [4, 5]},
            {"document_id": "100_1", "text": "Samples were stored at low temperature.", "label": [7]},
            {"document_id": "101_0", "text": "New vessels formed around the lesion.", "label": [8]}]
    schema = pa.schema([("document_id", pa.string()), ("text", pa.string()), ("label", pa.list_(pa.int64()))])
    pq.write_table(pa.Table.from_pylist(recs, schema=schema), os.path.join(OUT, "hoc.parquet"), compression="zstd")
    instr = ("Which hallmarks of cancer does the sentence discuss? Answer with one or more of: evading growth "
             "suppressors, tumor promoting inflammation, enabling replicative immortality, cellular energetics, "
             "resisting cell death, activating invasion and metastasis, genomic instability and mutation, inducing "
             "angiogenesis, sustaining proliferative signaling, avoiding immune destruction, separated by commas, "
             "or none.")
    expected("hoc", [line("hoc", "cls", instr, r["text"], [", ".join(HOC[i] for i in r["label"])]) for r in recs])


def fiqa_sa():
    recs = [{"_id": "1", "sentence": "Shares of NorthCo slid after the weak outlook", "target": "NorthCo",
             "aspect": "Stock/Price Action", "score": -0.62, "type": "headline"},
            {"_id": "2", "sentence": "Quiet day for SouthBank, volume light", "target": "SouthBank",
             "aspect": "Market/Volume", "score": 0.05, "type": "post"},
            {"_id": "3", "sentence": "EastGrid beats on revenue and lifts guidance", "target": "EastGrid",
             "aspect": "Corporate/Guidance", "score": 0.1, "type": "headline"}]
    pq.write_table(pa.Table.from_pylist(recs), os.path.join(OUT, "fiqa-sa.parquet"), compression="gzip")

    def label(x):
        return "negative" if x < -0.1 else "neutral" if x < 0.1 else "positive"
    instr = "What is the sentiment of the text toward the target: positive, negative or neutral?"
    expected("fiqa-sa", [line("fiqa-sa", "sa", instr, f"Text: {r['sentence']}\nTarget: {r['target']}",
                              [label(r["score"])]) for r in recs])


def financial_phrasebank():
    recs = [{"sentence": "Net sales rose to EUR 12 mn from EUR 9 mn .", "label": 2},
            {"sentence": "The board meets on Tuesday .", "label": 1},
            {"sentence": "Operating loss widened to EUR 3 mn .", "label": 0}]
    write_jsonl(os.path.join(OUT, "financial-phrasebank.jsonl"), recs)
    names = ["negative", "neutral", "positive"]
    instr = "What is the sentiment of the sentence for investors: positive, negative or neutral?"
    expected("financial-phrasebank",
             [line("financial-phrasebank", "sa", instr, r["sentence"], [names[r["label"]]]) for r in recs])


def headline():
    q_up = "Does the news headline talk about price going up? Please choose an answer from {Yes/No}."
    q_past = "Does the news headline talk about price in the past? Please choose an answer from {Yes/No}."
    recs = [{"input": "Gold climbs to a three-week high on softer dollar", "output": "Yes", "instruction": q_up},
            {"input": "Gold climbs to a three-week high on softer dollar", "output": "No", "instruction": q_past}]
    pq.write_table(pa.Table.from_pylist(recs), os.path.join(OUT, "headline.parquet"), compression="lz4")
    expected("headline", [line("headline", "cls", r["instruction"], r["input"], [r["output"].lower()]) for r in recs])


def convfinqa():
    recs = [{"id": "Single_XYZ/2019/page_12.pdf-1",
             "pre_text": ["revenue grew in 2019 .", "costs were flat ."],
             "post_text": ["no other items ."],
             "table": [["", "2019", "2018"], ["revenue", "120", "100"], ["costs", "50", "50"]],
             "annotation": {"dialogue_break": ["what was revenue in 2019?", "and in 2018?", "what was the change?"],
                            "turn_program": ["120", "100", "subtract(120, 100)"], "qa_split": [0, 0, 0],
                            "exe_ans_list": [120.0, 100.0, 20.0]},
             "qa": {"question": "what was the change in revenue?", "program": "subtract(120, 100)", "exe_ans": 20.0}}]
    with open(os.path.join(OUT, "convfinqa.json"), "w", encoding="utf-8") as f:
        json.dump(recs, f, indent=1)
    instr = "Answer the last question of the conversation from the report and its table. Reply with a number."
    rows = []
    for r in recs:
        table = "\n".join(" | ".join(c for c in row if c) for row in r["table"])
        inp = " ".join(r["pre_text"]) + "\n" + table + "\n" + " ".join(r["post_text"]) + \
            "\nConversation: " + "\n".join(r["annotation"]["dialogue_break"])
        rows.append(line("convfinqa", "qa", instr, inp, [json.dumps(r["annotation"]["exe_ans_list"][-1])]))
    expected("convfinqa", rows)


def convfinqa_flare():
    recs = [{"id": "convfinqa0", "query": "Context: revenue 120 in 2019, 100 in 2018.\nQuestion: what was the change?\nAnswer:",
             "answer": "20", "turn": 0, "dialogue_id": 0}]
    pq.write_table(pa.Table.from_pylist(recs), os.path.join(OUT, "convfinqa-flare.parquet"), compression="none")
    expected("convfinqa-flare", [line("convfinqa-flare", "qa", r["query"].strip(), "", [r["answer"]]) for r in recs])


def finner():
    recs = [{"id": "finner0", "query": "…", "answer": "Alder Trust Company, ORG\nMaria Olsen, PER",
             "text": "Alder Trust Company appointed Maria Olsen as trustee .",
             "label": ["B-ORG", "I-ORG", "I-ORG", "O", "B-PER", "I-PER", "O", "O", "O"]}]
    write_jsonl(os.path.join(OUT, "finner.jsonl"), recs)
    instr = ("List the named entities in the sentence, one a line, each as 'name, TYPE' where TYPE is PER (person), "
             "ORG (organization) or LOC (location).")
    expected("finner", [line("finner", "ner", instr, r["text"], [r["answer"]]) for r in recs])


def broken():
    """Malformed inputs: the tests check each error names its place."""
    with open(os.path.join(OUT, "broken-line.jsonl"), "w", encoding="utf-8") as f:
        f.write(json.dumps({"sentence": "A fine line .", "label": 1}) + "\n")
        f.write("{\"sentence\": \"cut off\n")
    write_jsonl(os.path.join(OUT, "broken-label.jsonl"),
                [{"sentence": "A fine line .", "label": 1}, {"sentence": "A new class .", "label": 7}])
    pq.write_table(pa.Table.from_pylist([{"sentence": "x", "target": "y"}]),
                   os.path.join(OUT, "broken-field.parquet"))


def main():
    os.makedirs(OUT, exist_ok=True)
    for f in (pubmedqa, pubmedqa_hf, bioasq, chemprot, ddi, hoc, fiqa_sa, financial_phrasebank, headline,
              convfinqa, convfinqa_flare, finner, broken):
        f()
    print("wrote", len(os.listdir(OUT)), "files in", OUT)


if __name__ == "__main__":
    main()
