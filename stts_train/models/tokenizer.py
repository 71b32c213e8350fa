"""The Qwen tokenizer, rebuilt offline from the byte-level BPE ranks shipped in the `dashscope`
wheel (`dashscope/resources/qwen.tiktoken`), plus Qwen's chat tokens and Molmo2's extra tokens.

tiktoken files hold only (token bytes, rank). A Hugging Face BPE also needs the merges; each
token's merge is recovered by running BPE on its own bytes with the ranks below its own, which
leaves exactly two parts. The built `tokenizer.json` is cached (default ~/.cache/stts-train).

A checkpoint directory that ships its own `tokenizer.json` (every released Molmo2 does) is used
as it is (`load_tokenizer` with `model.hf_checkpoint`); the offline rebuild is only the fallback
for directories without one, and says so in the log. `save_tokenizer` writes the tokenizer files
and chat template of a model's vocabulary next to an export, a vocabulary subset included.
"""

from __future__ import annotations

import base64
import functools
import importlib.util
import json
import logging
import os
import shutil
from pathlib import Path

from stts_train.errors import STTSError

log = logging.getLogger(__name__)

# Qwen2/2.5/3 split pattern (pre-tokenisation), applied before byte-level BPE.
QWEN_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN_SPECIAL = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
    "<tool_response>",
    "</tool_response>",
    "<think>",
    "</think>",
]
QWEN_SPECIAL_START = 151643
BASE_VOCAB = 151936
# Molmo2's additional vocabulary starts right after the base vocabulary (ids match the
# transformers Molmo2Config defaults: im_start 151936, im_end 151937, im_patch 151938, ...).
MOLMO2_EXTRA = [
    "<im_start>",
    "<im_end>",
    "<im_patch>",
    "<im_col>",
    "<low_res_im_start>",
    "<|image|>",
    "<im_low>",
    "<frame_start>",
    "<frame_end>",
    "<|video|>",
]


def _ranks_file() -> Path:
    spec = importlib.util.find_spec("dashscope")
    if spec is None or spec.origin is None:
        raise STTSError(
            "the Qwen tokenizer needs the `dashscope` wheel: pip install --no-deps dashscope==2.0.2"
        )
    path = Path(spec.origin).parent / "resources" / "qwen.tiktoken"
    if not path.is_file():
        raise STTSError(
            f"{path} is missing; reinstall dashscope (pip install --no-deps --force-reinstall "
            "dashscope)"
        )
    return path


def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map used by byte-level BPE."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars)))


def _recover_merge(token: bytes, ranks: dict[bytes, int], own_rank: int) -> tuple[bytes, bytes]:
    parts = [bytes([b]) for b in token]
    while len(parts) > 2:
        best, best_rank = -1, own_rank
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and r < best_rank:
                best, best_rank = i, r
        if best < 0:
            break
        parts[best : best + 2] = [parts[best] + parts[best + 1]]
    if len(parts) != 2:
        raise STTSError(f"cannot recover the BPE merge of token rank {own_rank}")
    return parts[0], parts[1]


def build_tokenizer_json(out: Path) -> Path:
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

    ranks: dict[bytes, int] = {}
    for line in _ranks_file().read_text().splitlines():
        if line.strip():
            token_b64, rank = line.split()
            ranks[base64.b64decode(token_b64)] = int(rank)
    to_unicode = _byte_to_unicode()

    def encode(b: bytes) -> str:
        return "".join(to_unicode[x] for x in b)

    vocab = {encode(tok): rank for tok, rank in ranks.items()}
    merges = []
    for tok, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(tok) > 1:
            left, right = _recover_merge(tok, ranks, rank)
            merges.append((encode(left), encode(right)))
    tokenizer = Tokenizer(
        models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False)
    )
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    from tokenizers import AddedToken

    specials = [AddedToken(t, special=True, normalized=False) for t in QWEN_SPECIAL]
    tokenizer.add_special_tokens(specials)
    # Fill the ids between the last Qwen special token and Molmo2's extra block so ids line up.
    filler = BASE_VOCAB - (QWEN_SPECIAL_START + len(QWEN_SPECIAL))
    tokenizer.add_special_tokens(
        [AddedToken(f"<|unused_{i}|>", special=True, normalized=False) for i in range(filler)]
    )
    tokenizer.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t in MOLMO2_EXTRA]
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tokenizer.save(str(tmp))
    os.replace(tmp, out)
    return out


def cache_dir() -> Path:
    return Path(os.environ.get("STTS_CACHE", Path.home() / ".cache" / "stts-train"))


@functools.cache
def qwen_tokenizer():
    """The Qwen tokenizer with Molmo2's special tokens (built once, then read from the cache)."""
    from tokenizers import Tokenizer

    path = cache_dir() / "qwen_molmo2_tokenizer.json"
    if not path.is_file():
        build_tokenizer_json(path)
    tokenizer = Tokenizer.from_file(str(path))
    for name, expected in (
        ("<|im_start|>", 151644),
        ("<im_patch>", 151938),
        ("<frame_start>", 151943),
    ):
        if tokenizer.token_to_id(name) != expected:
            raise STTSError(
                f"tokenizer cache {path} is stale ({name} != {expected}); delete it to rebuild"
            )
    return tokenizer


class _Encoding:
    def __init__(self, ids: list[int]) -> None:
        self.ids = ids


class SubsetTokenizer:
    """The Qwen tokenizer restricted to a fixed list of its token ids (small models, demos).

    Token `base_ids[i]` of the Qwen tokenizer becomes id `i`. The predictable vocabulary
    (`model.llm.vocab_size`) comes first, then Molmo2's extra tokens (`additional_vocab_size`).
    Text is tokenized exactly as by the full tokenizer; a Qwen token outside the subset is an error
    naming it (the subset must be built from the data it serves, see `build_subset`).
    """

    def __init__(self, base, base_ids: list[int]) -> None:
        self.base = base
        self.base_ids = list(base_ids)
        self.to_subset = {b: i for i, b in enumerate(self.base_ids)}

    def encode(self, text: str, add_special_tokens: bool = False) -> _Encoding:
        ids = []
        for b in self.base.encode(text, add_special_tokens=add_special_tokens).ids:
            if b not in self.to_subset:
                raise STTSError(
                    f"token {self.base.id_to_token(b)!r} (Qwen id {b}) of {text[:60]!r} is not in "
                    "the vocabulary subset; rebuild it from the data "
                    "(stts_train.models.tokenizer.build_subset) or use the full vocabulary"
                )
            ids.append(self.to_subset[b])
        return _Encoding(ids)

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return self.base.decode(
            [self.base_ids[i] for i in ids], skip_special_tokens=skip_special_tokens
        )

    def token_to_id(self, name: str) -> int | None:
        b = self.base.token_to_id(name)
        return None if b is None else self.to_subset.get(b)

    def get_vocab_size(self) -> int:
        return len(self.base_ids)


CHAT_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


def build_subset(texts, base=None) -> tuple[list[int], int]:
    """(Qwen ids of the subset, predictable vocabulary size) covering `texts`, the chat tokens,
    every digit and Molmo2's extra tokens (appended after the predictable part)."""
    base = base or qwen_tokenizer()
    ids: set[int] = {base.token_to_id(t) for t in CHAT_TOKENS}
    for text in (
        list(texts) + [str(d) for d in range(10)] + [" ", ".", "\n", "user\n", "assistant\n"]
    ):
        ids.update(base.encode(text, add_special_tokens=False).ids)
    predictable = sorted(ids)
    extra = [base.token_to_id(t) for t in MOLMO2_EXTRA]
    return predictable + extra, len(predictable)


def subset_overrides(path: str, base_ids: list[int], vocab_size: int, base=None) -> list[str]:
    """Config overrides that point a model at a subset vocabulary file."""
    base = base or qwen_tokenizer()
    sub = SubsetTokenizer(base, base_ids)
    names = {**_TOKEN_NAMES, "pad_id": "<|endoftext|>"}
    return [
        f"model.vocabulary={path}",
        f"model.llm.vocab_size={vocab_size}",
        f"model.llm.additional_vocab_size={len(base_ids) - vocab_size}",
    ] + [f"model.tokens.{k}={sub.token_to_id(v)}" for k, v in names.items()]


def load_tokenizer(model_cfg):
    """The tokenizer a model config asks for: the checkpoint's own `tokenizer.json` when
    `model.hf_checkpoint` has one, else full Qwen, or the subset in `model.vocabulary`."""
    path = getattr(model_cfg, "vocabulary", "")
    checkpoint = getattr(model_cfg, "hf_checkpoint", None)
    if checkpoint and not path:
        if (Path(checkpoint) / TOKENIZER_FILE).is_file():
            tok = checkpoint_tokenizer(checkpoint)
            check_token_ids(tok, model_cfg, f"{checkpoint}/{TOKENIZER_FILE}")
            return tok
        log.warning(
            "model.hf_checkpoint=%s has no %s: using the offline Qwen rebuild "
            "(stts_train/models/tokenizer.py); copy the checkpoint's tokenizer files there to "
            "use its own",
            checkpoint,
            TOKENIZER_FILE,
        )
    base = qwen_tokenizer()
    if not path:
        return base
    base_ids = json.loads(Path(path).read_text())["base_ids"]
    tok = SubsetTokenizer(base, base_ids)
    if len(base_ids) != model_cfg.llm.total_vocab_size:
        raise STTSError(
            f"vocabulary {path} has {len(base_ids)} tokens but model.llm.vocab_size + "
            f"additional_vocab_size = {model_cfg.llm.total_vocab_size}; use the overrides from "
            "subset_overrides()"
        )
    if tok.token_to_id("<im_patch>") != model_cfg.tokens.image_patch_id:
        raise STTSError(
            f"model.tokens.image_patch_id={model_cfg.tokens.image_patch_id} does not match "
            f"<im_patch> = {tok.token_to_id('<im_patch>')} in {path}"
        )
    return tok


# --------------------------------------------------------------------------------------------------
# tokenizer files of a checkpoint directory (read with model.hf_checkpoint, written by export)
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
# Files a Hugging Face tokenizer may consist of; an export copies those its source has.
TOKENIZER_FILES = (
    TOKENIZER_FILE,
    TOKENIZER_CONFIG,
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    CHAT_TEMPLATE_FILE,
)
# Our prompt layout (stts_train/data/template.py) as a chat template: visual placeholders first
# (`<|video|>` / `<|image|>`, which transformers' Molmo2Processor expands), then the text parts.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}"
    "{%- set visual = message['content'] | selectattr('type', 'in', ['video', 'image']) | list -%}"
    "{%- for item in visual -%}"
    "{{ '<|video|>' if item['type'] == 'video' else '<|image|>' }}"
    "{%- endfor -%}"
    "{%- for item in message['content'] | selectattr('type', 'equalto', 'text') -%}"
    "{{ '\n' if visual or not loop.first }}{{ item['text'] }}"
    "{%- endfor -%}{%- endif -%}"
    "{{ '<|im_end|>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}"
)


def checkpoint_tokenizer(path: str | Path):
    """The `tokenizers.Tokenizer` of a checkpoint directory's `tokenizer.json`."""
    from tokenizers import Tokenizer

    file = Path(path) / TOKENIZER_FILE
    if not file.is_file():
        raise STTSError(f"{path} has no {TOKENIZER_FILE}; pass a directory with tokenizer files")
    return Tokenizer.from_file(str(file))


def chat_template(path: str | Path) -> str | None:
    """A checkpoint directory's chat template (chat_template.jinja, else tokenizer_config.json's
    `chat_template`); None when it has neither."""
    path = Path(path)
    if (path / CHAT_TEMPLATE_FILE).is_file():
        return (path / CHAT_TEMPLATE_FILE).read_text()
    if (path / TOKENIZER_CONFIG).is_file():
        template = json.loads((path / TOKENIZER_CONFIG).read_text()).get("chat_template")
        if isinstance(template, list):  # named templates: [{"name": ..., "template": ...}]
            template = next((t["template"] for t in template if t.get("name") == "default"), None)
        return template
    return None


def check_token_ids(tok, model_cfg, where: str) -> None:
    """The model's special-token ids must be the tokenizer's ids of those tokens."""
    wrong = []
    for field, name in _TOKEN_NAMES.items():
        want = getattr(model_cfg.tokens, field, None)
        got = tok.token_to_id(name)
        if want is not None and got is not None and got != want:
            wrong.append(f"model.tokens.{field}={want} but {name} is {got}")
    if wrong:
        raise STTSError(
            f"{where} does not match the model's token ids: {'; '.join(wrong)}; drop these "
            "model.tokens keys or use the tokenizer the checkpoint was trained with"
        )


_TOKEN_NAMES = {
    "image_start_id": "<im_start>",
    "image_end_id": "<im_end>",
    "image_patch_id": "<im_patch>",
    "image_col_id": "<im_col>",
    "low_res_image_start_id": "<low_res_im_start>",
    "frame_start_id": "<frame_start>",
    "frame_end_id": "<frame_end>",
    "eos_id": "<|im_end|>",
}


def subset_tokenizer_json(base, base_ids: list[int]) -> str:
    """A `tokenizer.json` equal to `SubsetTokenizer(base, base_ids)` on every text the subset
    covers: token `base_ids[i]` gets id i; the BPE pieces its merges pass through (and the 256
    byte symbols) get ids from len(base_ids) on, so they never reach a model whose vocabulary is
    the subset. BPE picks the lowest-rank merge first, and every merge that builds a covered token
    is kept, so each merge step is the one the full tokenizer takes."""
    full = json.loads(base.to_str())
    model = full["model"]
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    rank = {pair: i for i, pair in enumerate(merges)}
    id_to_piece = {i: p for p, i in model["vocab"].items()}
    added = {t["id"]: t for t in full["added_tokens"]}
    vocab: dict[str, int] = {}
    for i, b in enumerate(base_ids):  # special tokens too: so they keep their subset ids
        vocab[id_to_piece[b] if b in id_to_piece else added[b]["content"]] = i
    pieces: set[str] = set(_byte_to_unicode().values())
    for b in base_ids:
        if b in id_to_piece:
            pieces.update(_bpe_pieces(id_to_piece[b], rank))
    for next_id, piece in enumerate(sorted(pieces - set(vocab)), start=len(base_ids)):
        vocab[piece] = next_id
    model["vocab"] = vocab
    model["merges"] = [[a, b] for a, b in merges if a in vocab and b in vocab and a + b in vocab]
    full["added_tokens"] = [{**added[b], "id": i} for i, b in enumerate(base_ids) if b in added]
    return json.dumps(full, ensure_ascii=False)


def _bpe_pieces(piece: str, rank: dict[tuple[str, str], int]) -> list[str]:
    """Every symbol byte-level BPE creates while encoding `piece` alone."""
    parts, seen = list(piece), []
    while len(parts) > 1:
        ranked = [(rank[pair], i) for i, pair in enumerate(zip(parts, parts[1:])) if pair in rank]
        if not ranked:
            break
        i = min(ranked)[1]
        parts[i : i + 2] = [parts[i] + parts[i + 1]]
        seen.append(parts[i])
    return seen


def save_tokenizer(model_cfg, out_dir: str | Path) -> list[str]:
    """Write the tokenizer files and chat template of `model_cfg`'s vocabulary into `out_dir`
    (copied from `model.hf_checkpoint` when it has them); returns the file names written."""
    out_dir = Path(out_dir)
    source = getattr(model_cfg, "hf_checkpoint", None)
    vocabulary = getattr(model_cfg, "vocabulary", "")
    if source and not vocabulary and (Path(source) / TOKENIZER_FILE).is_file():
        written = []
        for name in TOKENIZER_FILES:
            if (Path(source) / name).is_file():
                shutil.copyfile(Path(source) / name, out_dir / name)
                written.append(name)
        if chat_template(out_dir) is None:
            (out_dir / CHAT_TEMPLATE_FILE).write_text(CHAT_TEMPLATE)
            written.append(CHAT_TEMPLATE_FILE)
        return written
    tok = load_tokenizer(model_cfg)
    if isinstance(tok, SubsetTokenizer):
        (out_dir / TOKENIZER_FILE).write_text(subset_tokenizer_json(tok.base, tok.base_ids))
    else:
        tok.save(str(out_dir / TOKENIZER_FILE))
    config = {
        "tokenizer_class": "Qwen2Tokenizer",
        "model_max_length": 32768,
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "clean_up_tokenization_spaces": False,
        "split_special_tokens": False,
        "image_token": "<|image|>",
        "video_token": "<|video|>",
        "extra_special_tokens": {"image_token": "<|image|>", "video_token": "<|video|>"},
    }
    (out_dir / TOKENIZER_CONFIG).write_text(json.dumps(config, indent=2))
    (out_dir / CHAT_TEMPLATE_FILE).write_text(CHAT_TEMPLATE)
    return [TOKENIZER_FILE, TOKENIZER_CONFIG, CHAT_TEMPLATE_FILE]
