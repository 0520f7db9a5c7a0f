"""Training a byte-level BPE tokenizer for mm.

mm ships no custom tokenizer class: `train_tokenizer` returns a stock `PreTrainedTokenizerFast`, which saves the
standard files (`tokenizer.json`, `tokenizer_config.json`) and loads back with `AutoTokenizer` on any machine, with
no remote code.
"""

from collections.abc import Iterable, Iterator

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

# Order fixes the ids, which must match MMTextConfig's defaults: pad_token_id=0, bos_token_id=1, eos_token_id=2.
SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")
PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN = SPECIAL_TOKENS


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 8192,
    min_frequency: int = 1,
    model_max_length: int = 64,
) -> PreTrainedTokenizerFast:
    r"""Trains a byte-level BPE tokenizer (GPT-2 style) on `texts`.

    Every sequence is wrapped as `<s> ... </s>`; the special ids are `<pad>`=0, `<s>`=1, `</s>`=2, `<unk>`=3, which
    are `MMTextConfig`'s defaults. Byte-level BPE can encode any string, so `<unk>` exists only for API completeness.

    Args:
        texts (`Iterable[str]`): the training corpus (a list, a generator, a `datasets` column, ...).
        vocab_size (`int`): the largest vocabulary to learn, special tokens and the 256 byte symbols included. A small
            corpus may yield fewer tokens: set `MMTextConfig.vocab_size = len(tokenizer)`, not this number.
        min_frequency (`int`): the fewest occurrences a pair needs to be merged.
        model_max_length (`int`): the longest encoding (in tokens, `<s>`/`</s>` included) that `truncation=True`
            keeps; use the model's `max_position_embeddings`.

    Returns:
        `PreTrainedTokenizerFast`: pads on the right with `<pad>`.

    Example:
    ```python
    >>> from processing_mm import train_tokenizer
    >>> tokenizer = train_tokenizer(["a photo of a cat", "a photo of a dog"] * 10, vocab_size=300)
    >>> ids = tokenizer("a photo of a cat")["input_ids"]
    >>> ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    True
    >>> tokenizer.decode(ids, skip_special_tokens=True)
    'a photo of a cat'
    ```
    """
    if isinstance(texts, str):
        raise TypeError("train_tokenizer expects an iterable of strings, got a single str; wrap it in a list.")
    min_vocab = len(SPECIAL_TOKENS) + len(pre_tokenizers.ByteLevel.alphabet())
    if vocab_size < min_vocab:
        raise ValueError(
            f"vocab_size={vocab_size} is too small: a byte-level BPE needs at least {min_vocab} entries "
            f"({len(SPECIAL_TOKENS)} special tokens + 256 bytes)."
        )

    seen = {"texts": 0}

    def checked(items: Iterable[str]) -> Iterator[str]:
        # The trainer consumes the iterable once, so texts are validated and counted as they stream by.
        for index, text in enumerate(items):
            if not isinstance(text, str):
                raise TypeError(f"train_tokenizer: text {index} is a {type(text).__name__}, expected str: {text!r:.80}")
            if text.strip():
                seen["texts"] += 1
                yield text

    tokenizer = Tokenizer(models.BPE(unk_token=UNK_TOKEN))
    # add_prefix_space=False keeps decode(encode(x)) == x; "cat" and " cat" are then different tokens, as in GPT-2.
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        # Seeding all 256 bytes means any string encodes without <unk>, even characters the corpus never had.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(checked(texts), trainer=trainer)
    if seen["texts"] == 0:
        raise ValueError("train_tokenizer got an empty corpus (no non-blank text); pass at least one caption.")

    bos_id, eos_id = tokenizer.token_to_id(BOS_TOKEN), tokenizer.token_to_id(EOS_TOKEN)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A {EOS_TOKEN}",
        pair=f"{BOS_TOKEN} $A {EOS_TOKEN} $B:1 {EOS_TOKEN}:1",
        special_tokens=[(BOS_TOKEN, bos_id), (EOS_TOKEN, eos_id)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token=PAD_TOKEN,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=UNK_TOKEN,
        model_max_length=model_max_length,
        padding_side="right",
    )
