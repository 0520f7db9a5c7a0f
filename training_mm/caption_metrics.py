"""Caption metrics: corpus BLEU (sacrebleu) and CIDEr-D, each candidate scored against one or more references, as an
`evaluate` metric (`CaptionMetrics`) that needs no download.

CIDEr-D (Vedantam, Zitnick & Parikh, "CIDEr: Consensus-based Image Description Evaluation", CVPR 2015) is written
here, following the COCO caption toolkit's scorer (`pycocoevalcap/cider/cider_scorer.py`) step for step, including
its 10x scale, so the numbers compare with published ones. pycocoevalcap itself is not a dependency: its wheel is
~100 MB of Java jars (METEOR, SPICE, the Stanford tokenizer) around this one pure-Python scorer, and it was last
released in 2020. Its `PTBTokenizer` needs Java; here the text is lower-cased and split into words without
punctuation, which is what that tokenizer does to plain English captions.

`evaluate.load("bleu")` and the Hub's CIDEr modules are downloaded when loaded; this file is a local metric module
instead: `evaluate.load("<path to>/caption_metrics.py")` loads it offline (it imports nothing from mm), and the
example scripts compute their scores through it.

Example:
```python
>>> from training_mm.caption_metrics import caption_metrics
>>> scores = caption_metrics(["a red circle"], [["a red circle", "there is a red circle"]])
>>> sorted(scores)
['bleu', 'cider']
```
"""

import math
import re
from collections import Counter

import datasets
import evaluate
import sacrebleu

# The protocol in a line, for the model card's `model-index` (each result's metric_config).
PROTOCOL = (
    "one greedy/beam caption per unique image/clip; corpus BLEU-4 (sacrebleu, 13a) and CIDEr-D (10x scale) against "
    "all of the item's reference captions"
)
CIDER_MAX_N = 4  # n-grams of 1..4 words
CIDER_SIGMA = 6.0  # width of CIDEr-D's Gaussian length penalty, in words
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


class CaptionMetrics(evaluate.Metric):
    """BLEU and CIDEr-D of captions as an `evaluate` metric: `compute(predictions=[str], references=[[str]])` or
    `add_batch` per batch, then `compute()`."""

    def _info(self):
        return evaluate.MetricInfo(
            description="Corpus BLEU (sacrebleu, 13a tokenization, 0-100) and CIDEr-D (COCO caption toolkit's scorer, "
            "0 to ~10) of captions against one or more reference captions each.",
            citation="Vedantam, Zitnick & Parikh, CIDEr: Consensus-based Image Description Evaluation, CVPR 2015.",
            inputs_description="predictions: one caption per item; references: a non-empty list of captions per item.",
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Sequence(datasets.Value("string"))}
            ),
        )

    def _compute(self, predictions, references):
        return {"bleu": bleu(predictions, references), "cider": cider_d(predictions, references)}


def caption_metrics(predictions, references):
    """Corpus BLEU (sacrebleu, 0-100) and CIDEr-D (COCO scale: 10x the mean cosine similarity, so 0 to ~10) of
    `predictions` (one string per item) against `references` (a list of reference strings per item), computed by
    `CaptionMetrics` (in memory: nothing is written to the metrics cache)."""
    _check(predictions, references)
    metric = CaptionMetrics(keep_in_memory=True)
    return metric.compute(predictions=list(predictions), references=[list(refs) for refs in references])


def bleu(predictions, references):
    """sacrebleu's corpus BLEU with its standard 13a tokenization; items may have different numbers of references."""
    _check(predictions, references)
    most = max(len(refs) for refs in references)
    # sacrebleu wants reference *streams* (the k-th reference of every item); None fills a missing one.
    streams = [[refs[k] if k < len(refs) else None for refs in references] for k in range(most)]
    return sacrebleu.corpus_bleu(list(predictions), streams).score


def cider_d(predictions, references, max_n=CIDER_MAX_N, sigma=CIDER_SIGMA):
    """CIDEr-D of a corpus: for each item, the n-gram tf-idf vectors of the candidate and of each reference (idf over
    the items' reference sets) are compared by a clipped cosine similarity, damped by a Gaussian of their length
    difference, averaged over n = 1..4 and over the references, and scaled by 10; the corpus score is the mean."""
    _check(predictions, references)
    candidates = [_ngram_counts(text, max_n) for text in predictions]
    reference_counts = [[_ngram_counts(text, max_n) for text in refs] for refs in references]
    document_frequency = Counter(gram for refs in reference_counts for gram in set().union(*refs))
    log_documents = math.log(len(reference_counts))

    def tfidf(counts):
        vectors = [{} for _ in range(max_n)]
        for gram, count in counts.items():
            vectors[len(gram) - 1][gram] = count * (log_documents - math.log(max(1.0, document_frequency[gram])))
        norms = [math.sqrt(sum(v * v for v in vector.values())) for vector in vectors]
        # The reference scorer measures length in bigrams; for captions of two words or more, differences agree.
        length = sum(count for gram, count in counts.items() if len(gram) == 2)
        return vectors, norms, length

    def similarity(candidate, reference):
        (cand_vecs, cand_norms, cand_len), (ref_vecs, ref_norms, ref_len) = candidate, reference
        penalty = math.exp(-((cand_len - ref_len) ** 2) / (2 * sigma**2))
        scores = []
        for cand, ref, cand_norm, ref_norm in zip(cand_vecs, ref_vecs, cand_norms, ref_norms):
            overlap = sum(min(value, ref.get(gram, 0.0)) * ref.get(gram, 0.0) for gram, value in cand.items())
            if cand_norm and ref_norm:
                overlap /= cand_norm * ref_norm
            scores.append(overlap * penalty)
        return scores

    total = 0.0
    for candidate, refs in zip(candidates, reference_counts):
        candidate = tfidf(candidate)
        per_n = [sum(values) for values in zip(*(similarity(candidate, tfidf(ref)) for ref in refs))]
        total += 10.0 * sum(per_n) / max_n / len(refs)
    return total / len(candidates)


def tokenize(text):
    """Lower-cased words, punctuation dropped: "A red circle, left." -> ["a", "red", "circle", "left"]."""
    return _WORD.findall(text.lower())


def _ngram_counts(text, max_n):
    words = tokenize(text)
    return Counter(tuple(words[i : i + n]) for n in range(1, max_n + 1) for i in range(len(words) - n + 1))


def _check(predictions, references):
    if len(predictions) != len(references) or not predictions:
        raise ValueError(
            f"Caption metrics need one prediction per item and at least one item; got {len(predictions)} "
            f"predictions for {len(references)} reference sets."
        )
    for index, refs in enumerate(references):
        if isinstance(refs, str) or not refs:
            raise ValueError(
                f"references[{index}] must be a non-empty list of strings (the item's reference captions), "
                f"got {refs!r:.80}."
            )
