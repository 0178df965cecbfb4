#!/usr/bin/env python3
"""BM25 indexing and query speed of the Python package bm25s on the same corpus and queries
`selfspec index build` / `selfspec bench search` use.

    python scripts/bench_bm25.py make CORPUS.jsonl QUERIES.txt --docs 1000000 --queries 1000
    python scripts/bench_bm25.py run CORPUS.jsonl QUERIES.txt
"""
import argparse
import json
import random
import time


def make(corpus, queries, docs, n_queries):
    rng = random.Random(0)
    # A Zipf-like vocabulary of 50,000 made-up words.
    syllables = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "pa", "de", "fi", "gu", "ho", "ja", "we"]
    words = sorted({"".join(rng.choice(syllables) for _ in range(rng.randint(2, 4))) for _ in range(80000)})[:50000]
    weights = [1.0 / (i + 1) for i in range(len(words))]
    with open(corpus, "w") as f:
        for i in range(docs):
            text = " ".join(rng.choices(words, weights, k=rng.randint(12, 40)))
            f.write(json.dumps({"id": f"d{i}", "title": "", "text": text}) + "\n")
    with open(queries, "w") as f:
        for _ in range(n_queries):
            f.write(" ".join(rng.choices(words, weights, k=rng.randint(3, 8))) + "\n")


def run(corpus, queries, k):
    import bm25s
    texts = [json.loads(l)["text"] for l in open(corpus)]
    qs = [l.strip() for l in open(queries) if l.strip()]
    start = time.perf_counter()
    tokens = bm25s.tokenize(texts, stopwords=None, show_progress=False)
    retriever = bm25s.BM25(method="lucene", k1=1.2, b=0.75)
    retriever.index(tokens, show_progress=False)
    index_secs = time.perf_counter() - start
    start = time.perf_counter()
    for q in qs:
        retriever.retrieve(bm25s.tokenize([q], stopwords=None, show_progress=False), k=k, show_progress=False)
    one_by_one = len(qs) / (time.perf_counter() - start)
    # bm25s's own best case: every query in one vectorised call, on all cores.
    import os
    start = time.perf_counter()
    retriever.retrieve(bm25s.tokenize(qs, stopwords=None, show_progress=False), k=k, show_progress=False,
                       n_threads=os.cpu_count())
    batched = len(qs) / (time.perf_counter() - start)
    print(json.dumps({"impl": f"bm25s {bm25s.__version__}", "documents": len(texts), "queries": len(qs), "k": k,
                      "docs_per_s": len(texts) / index_secs, "queries_per_s_one_by_one": one_by_one,
                      "queries_per_s_batched": batched}))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["make", "run"])
    ap.add_argument("corpus")
    ap.add_argument("queries")
    ap.add_argument("--docs", type=int, default=1_000_000)
    ap.add_argument("--queries-n", type=int, default=1000)
    ap.add_argument("-k", type=int, default=10)
    a = ap.parse_args()
    if a.what == "make":
        make(a.corpus, a.queries, a.docs, a.queries_n)
    else:
        run(a.corpus, a.queries, a.k)


if __name__ == "__main__":
    main()
