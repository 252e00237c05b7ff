"""Special tokens of the streaming prompt, and a small byte-level BPE tokenizer built offline.

Real checkpoints bring their own tokenizer (which must define ``<|audio_pad|>`` for audio, reference
§1.2); the tiny presets used by tests and the synthetic benchmark use :func:`build_tiny_tokenizer`.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|image_pad|>", "<|video_pad|>", "<|audio_pad|>",
)

_CORPUS = (
    "the a an of to in and is was for on with as by at from it this that what which who when where why how "
    "video audio frame second seconds minute scene speaker said say says colour color red green blue yellow "
    "white black square circle object moving left right top bottom sound tone music speech question answer "
    "yes no first last before after during while count number one two three four five six seven eight nine "
    "ten zero A B C D option options choose select describe summary happen happened shows show appear appears "
)


@dataclass(frozen=True)
class PromptTokens:
    """Ids of the special tokens the streaming prompt uses."""

    im_start: int
    im_end: int
    vision_start: int
    vision_end: int
    video_pad: int
    audio_pad: int | None
    eos: tuple[int, ...]

    @classmethod
    def from_tokenizer(cls, tokenizer: PreTrainedTokenizerBase, need_audio: bool) -> "PromptTokens":
        """Look the ids up; raises ValueError naming a missing token."""
        ids = {}
        for tok in ("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|video_pad|>", "<|audio_pad|>"):
            tid = tokenizer.convert_tokens_to_ids(tok)
            if tid is None or tid == tokenizer.unk_token_id or (isinstance(tid, int) and tid < 0):
                if tok == "<|audio_pad|>" and not need_audio:
                    tid = None
                else:
                    raise ValueError(f"the tokenizer has no {tok} token")
            ids[tok] = tid
        eos = {ids["<|im_end|>"]}
        if tokenizer.eos_token_id is not None:
            eos.add(int(tokenizer.eos_token_id))
        end_of_text = tokenizer.convert_tokens_to_ids("<|endoftext|>")
        if isinstance(end_of_text, int) and end_of_text >= 0 and end_of_text != tokenizer.unk_token_id:
            eos.add(end_of_text)
        return cls(
            im_start=ids["<|im_start|>"], im_end=ids["<|im_end|>"], vision_start=ids["<|vision_start|>"],
            vision_end=ids["<|vision_end|>"], video_pad=ids["<|video_pad|>"], audio_pad=ids["<|audio_pad|>"],
            eos=tuple(sorted(eos)),
        )


def build_tiny_tokenizer(vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained in memory on a small English word list, with the special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    words = _CORPUS.split()
    tok.train_from_iterator([_CORPUS, " ".join(w.capitalize() for w in words), "0123456789 .,:;?!<>()-"] * 4,
                            trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        additional_special_tokens=[t for t in SPECIAL_TOKENS if t not in ("<|im_end|>", "<|endoftext|>")],
    )
